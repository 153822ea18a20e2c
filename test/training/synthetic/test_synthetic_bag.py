"""rosbag2 writer: read back through rosbags (MCAP and sqlite3), message contents, determinism, rclpy CDR."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from scipy.spatial.transform import Rotation

from cleanpose_training.synthetic import bag_writer as bw
from cleanpose_training.synthetic.__main__ import generate_bag, main
from cleanpose_training.synthetic.nocs_writer import MaskNoise
from cleanpose_training.synthetic.render import project_box_corners
from cleanpose_training.synthetic.types import typestore

W, H, FRAMES = 160, 120, 5


def _write(path, storage="mcap", seed=3, **kw):
    return generate_bag(
        path, frames=FRAMES, objects=(2, 3), seed=seed, width=W, height=H, storage=storage, **kw
    )


def _read(path):
    """{topic: [(bag timestamp, raw bytes)]} and {topic: msgtype}."""
    out, types = {}, {}
    with Reader(path) as reader:
        for c in reader.connections:
            types[c.topic] = c.msgtype
        for conn, stamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((stamp, bytes(raw)))
    return out, types


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def bag(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"bag_{request.param}") / "bag"
    assert _write(path, request.param) == FRAMES
    return path, request.param


def test_topics_types_counts_and_stamps(bag):
    path, storage = bag
    suffix = ".mcap" if storage == "mcap" else ".db3"
    assert any(p.suffix == suffix for p in path.iterdir())
    msgs, types = _read(path)
    assert types == bw.TOPICS
    ts = typestore()
    period = round(1e9 / 30.0)
    for topic, items in msgs.items():
        assert len(items) == FRAMES, topic
        stamps = [s for s, _ in items]
        assert stamps[0] == bw.DEFAULT_START_NS
        assert np.all(np.abs(np.diff(stamps) - period) <= 1), topic
        for stamp, raw in items:
            msg = ts.deserialize_cdr(raw, types[topic])
            header = msg.transforms[0].header if topic == bw.TOPIC_TF else msg.header
            assert header.stamp.sec * 10**9 + header.stamp.nanosec == stamp
            expected_frame = bw.WORLD_FRAME if topic == bw.TOPIC_TF else bw.CAMERA_FRAME
            assert header.frame_id == expected_frame


def test_message_contents(bag):
    path, _ = bag
    msgs, types = _read(path)
    ts = typestore()

    def get(topic, i):
        return ts.deserialize_cdr(msgs[topic][i][1], types[topic])

    for i in range(FRAMES):
        rgb, depth, info = get(bw.TOPIC_COLOR, i), get(bw.TOPIC_DEPTH, i), get(bw.TOPIC_INFO, i)
        assert (rgb.encoding, rgb.height, rgb.width, rgb.step) == ("rgb8", H, W, 3 * W)
        assert len(rgb.data) == H * W * 3
        assert (depth.encoding, depth.step, depth.is_bigendian) == ("16UC1", 2 * W, 0)
        d = np.frombuffer(depth.data.tobytes(), "<u2").reshape(H, W)
        assert 0.2 < np.median(d[d > 0]) / 1000.0 < 2.0 and np.any(d == 0)
        K = info.k.reshape(3, 3)
        assert info.distortion_model == "plumb_bob" and np.all(info.d == 0) and len(info.d) == 5
        np.testing.assert_allclose(K[0, 0], 591.0125 * W / 640)
        np.testing.assert_allclose(info.p.reshape(3, 4)[:, :3], K)
        np.testing.assert_allclose(info.r.reshape(3, 3), np.eye(3))

        seg, gt = get(bw.TOPIC_DETECTIONS, i), get(bw.TOPIC_GT, i)
        assert seg.format == seg.FORMAT_MASKS and len(seg.detections) == len(seg.masks) >= 1
        assert len(seg.mask_offset_x) == 0 and seg.label_image.height == 0
        assert [o.instance_id for o in gt.objects] == [det.id for det in seg.detections]
        for det, m, obj in zip(seg.detections, seg.masks, gt.objects):
            assert (m.encoding, m.height, m.width) == ("mono8", H, W)
            mask = np.frombuffer(m.data.tobytes(), np.uint8).reshape(H, W) > 0
            hyp = det.results[0].hypothesis
            assert hyp.class_id == obj.class_name and hyp.score == 1.0
            rr, cc = np.nonzero(mask)
            assert det.bbox.size_x == cc.max() + 1 - cc.min() and det.bbox.size_y == rr.max() + 1 - rr.min()
            assert det.bbox.center.position.x == pytest.approx(0.5 * (cc.min() + cc.max()))
            # GT pose + size project to a box around the mask.
            q = obj.pose.orientation
            R = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
            t = np.array([obj.pose.position.x, obj.pose.position.y, obj.pose.position.z])
            uv = project_box_corners(np.array([obj.size.x, obj.size.y, obj.size.z]), R, t, K)
            assert uv[:, 0].min() <= cc.min() + 1 and uv[:, 0].max() >= cc.max() - 1
            assert uv[:, 1].min() <= rr.min() + 1 and uv[:, 1].max() >= rr.max() - 1
            assert q.w >= 0 and obj.num_points > 0


def test_camera_trajectory_is_smooth(bag):
    path, _ = bag
    msgs, types = _read(path)
    ts = typestore()
    pos = []
    for _, raw in msgs[bw.TOPIC_TF]:
        tf = ts.deserialize_cdr(raw, types[bw.TOPIC_TF]).transforms[0]
        assert tf.child_frame_id == bw.CAMERA_FRAME
        pos.append([tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z])
    step = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    # A slow arc: a few millimetres per frame at 30 Hz, nearly constant speed.
    assert np.all((step > 1e-4) & (step < 0.02)) and np.ptp(step) < 0.2 * step.mean() + 1e-4


def test_same_seed_same_bytes(tmp_path):
    runs = {"a": ("mcap", 3), "b": ("mcap", 3), "c": ("sqlite3", 3), "d": ("mcap", 4), "e": ("sqlite3", 3)}
    for name, (storage, seed) in runs.items():
        # Same bag name in different folders: rosbag2 metadata names the storage file after the bag folder.
        _write(tmp_path / name / "bag", storage, seed)
    _write(tmp_path / "f" / "bag", "mcap", 3, compress=False)
    msgs = {n: _read(tmp_path / n / "bag")[0] for n in [*runs, "f"]}
    # MCAP with zstd chunks (default), plain MCAP and sqlite3 carry the same messages.
    assert msgs["a"] == msgs["b"] == msgs["c"] == msgs["f"] and msgs["a"] != msgs["d"]
    assert (tmp_path / "a/bag/bag.mcap").stat().st_size < (tmp_path / "f/bag/bag.mcap").stat().st_size
    # rosbags embeds no wall-clock time: the storage files and the metadata are identical too.
    for x, y, f in (("a", "b", "bag.mcap"), ("c", "e", "bag.db3"), ("a", "b", "metadata.yaml")):
        fa, fb = tmp_path / x / "bag" / f, tmp_path / y / "bag" / f
        assert hashlib.sha256(fa.read_bytes()).digest() == hashlib.sha256(fb.read_bytes()).digest(), f


def test_mask_noise_changes_detections_only(tmp_path):
    _write(tmp_path / "clean", seed=3)
    _write(tmp_path / "noisy", seed=3, mask_noise=MaskNoise(max_radius_px=2, score_jitter=0.2))
    clean, noisy = _read(tmp_path / "clean")[0], _read(tmp_path / "noisy")[0]
    for topic in clean:
        if topic == bw.TOPIC_DETECTIONS:
            assert clean[topic] != noisy[topic]
        else:
            assert clean[topic] == noisy[topic], topic


def test_cli_writes_a_folder_of_bags(tmp_path):
    assert (
        main(
            [
                "bag",
                "--out",
                str(tmp_path / "bags"),
                "--frames",
                "2",
                "--scenes",
                "2",
                "--width",
                "80",
                "--height",
                "60",
                "--objects-per-frame",
                "1-2",
                "--storage",
                "sqlite3",
            ]
        )
        == 0
    )
    for k in range(2):
        msgs, _ = _read(tmp_path / "bags" / f"scene_{k}")
        assert len(msgs[bw.TOPIC_COLOR]) == 2


def test_rclpy_deserializes_the_image_bytes(bag):
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    path, _ = bag
    msgs, _ = _read(path)
    raw = msgs[bw.TOPIC_COLOR][0][1]
    img = serialization.deserialize_message(raw, sensor_msgs.Image)
    assert (img.height, img.width, img.encoding) == (H, W, "rgb8")
    # rclpy leaves CDR alignment padding uninitialised, so its re-serialisation is compared field by field.
    again = serialization.deserialize_message(serialization.serialize_message(img), sensor_msgs.Image)
    assert bytes(again.data) == bytes(img.data) and again.step == img.step == 3 * W
    assert np.frombuffer(bytes(img.data), np.uint8).size == H * W * 3
    depth = serialization.deserialize_message(msgs[bw.TOPIC_DEPTH][0][1], sensor_msgs.Image)
    assert depth.encoding == "16UC1"
    info = serialization.deserialize_message(msgs[bw.TOPIC_INFO][0][1], sensor_msgs.CameraInfo)
    assert info.distortion_model == "plumb_bob"


@pytest.mark.ros
def test_rclpy_deserializes_the_project_types_built_by_colcon(bag, ros_overlay):
    """The wire types registered from .msg text equal the colcon-built interfaces a robot has."""
    from cleanpose_msgs.msg import InstanceSegmentation, ObjectPoseArray
    from rclpy.serialization import deserialize_message
    from tf2_msgs.msg import TFMessage

    path, _ = bag
    msgs, types = _read(path)
    ts = typestore()
    raw_seg, raw_gt, raw_tf = (msgs[t][1][1] for t in (bw.TOPIC_DETECTIONS, bw.TOPIC_GT, bw.TOPIC_TF))
    seg = deserialize_message(raw_seg, InstanceSegmentation)
    ours = ts.deserialize_cdr(raw_seg, types[bw.TOPIC_DETECTIONS])
    assert seg.format == InstanceSegmentation.FORMAT_MASKS and len(seg.masks) == len(ours.masks)
    for a, b in zip(seg.detections, ours.detections):
        assert a.id == b.id and a.results[0].hypothesis.class_id == b.results[0].hypothesis.class_id
        assert a.bbox.size_x == b.bbox.size_x and a.bbox.center.position.y == b.bbox.center.position.y
    assert bytes(seg.masks[0].data) == ours.masks[0].data.tobytes()
    gt = deserialize_message(raw_gt, ObjectPoseArray)
    ours_gt = ts.deserialize_cdr(raw_gt, types[bw.TOPIC_GT])
    assert [o.instance_id for o in gt.objects] == [o.instance_id for o in ours_gt.objects]
    assert [o.size.x for o in gt.objects] == [o.size.x for o in ours_gt.objects]
    tf = deserialize_message(raw_tf, TFMessage)
    assert tf.transforms[0].child_frame_id == bw.CAMERA_FRAME


def test_cli_no_compress_and_distractor_options(tmp_path):
    args = ["bag", "--frames", "1", "--width", "80", "--height", "60", "--objects-per-frame", "1-2"]
    assert main([*args, "--out", str(tmp_path / "z" / "bag")]) == 0
    assert main([*args, "--out", str(tmp_path / "p" / "bag"), "--no-compress"]) == 0
    assert main([*args, "--out", str(tmp_path / "d" / "bag"), "--distractors", "0"]) == 0
    z, p = (tmp_path / n / "bag" / "bag.mcap" for n in "zp")
    assert z.stat().st_size < p.stat().st_size
    assert _read(tmp_path / "z" / "bag")[0] == _read(tmp_path / "p" / "bag")[0]
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "bad"), "--distractors", "3-1"])
