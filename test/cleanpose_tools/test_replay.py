"""Bag reading (both storage formats, missing topics, no ground truth) and the DDS replay loop of
cleanpose_tools.replay, against a tiny hand-written bag and an echo node standing in for the node."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cleanpose_tools.replay import (
    BagTopicError,
    TopicConfig,
    cdr_restamp,
    cdr_stamp_ns,
    load_frames,
    make_typestore,
)

T = TopicConfig()


def _header(ts, stamp_ns: int):
    H = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    return H(Time(stamp_ns // 10**9, stamp_ns % 10**9), "camera_color_optical_frame")


def _image(ts, stamp_ns, h, w, enc, arr):
    Img = ts.types["sensor_msgs/msg/Image"]
    data = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
    return Img(
        _header(ts, stamp_ns), h, w, enc, 0, w * arr.itemsize * (arr.shape[2] if arr.ndim == 3 else 1), data
    )


def write_tiny_bag(
    path: Path,
    *,
    storage: str = "mcap",
    frames: int = 4,
    with_gt: bool = True,
    skip_topics: tuple[str, ...] = (),
    h: int = 24,
    w: int = 32,
) -> Path:
    """A minimal but well-formed bag in the synthetic layout: frame k has 1 + k % 3 objects."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = make_typestore()
    ty = ts.types
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    topics = {
        T.image: "sensor_msgs/msg/Image",
        T.depth: "sensor_msgs/msg/Image",
        T.info: "sensor_msgs/msg/CameraInfo",
        T.detections: "cleanpose_msgs/msg/InstanceSegmentation",
    }
    if with_gt:
        topics[T.gt] = "cleanpose_msgs/msg/ObjectPoseArray"
    topics = {t: m for t, m in topics.items() if t not in skip_topics}
    rng = np.random.default_rng(0)
    with Writer(path, version=9, storage_plugin=plugin) as wr:
        conns = {t: wr.add_connection(t, m, typestore=ts) for t, m in topics.items()}
        for k in range(frames):
            stamp = 1_700_000_000_000_000_000 + k * 100_000_000
            n = 1 + k % 3
            msgs = {}
            msgs[T.image] = _image(ts, stamp, h, w, "rgb8", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            msgs[T.depth] = _image(ts, stamp, h, w, "16UC1", np.full((h, w), 800, np.uint16))
            info = ty["sensor_msgs/msg/CameraInfo"](
                _header(ts, stamp),
                h,
                w,
                "plumb_bob",
                np.zeros(5),
                np.array([30.0, 0, w / 2, 0, 30.0, h / 2, 0, 0, 1]),
                np.eye(3).reshape(-1),
                np.array([30.0, 0, w / 2, 0, 0, 30.0, h / 2, 0, 0, 0, 1, 0]),
                0,
                0,
                ty["sensor_msgs/msg/RegionOfInterest"](0, 0, 0, 0, False),
            )
            msgs[T.info] = info
            dets, masks, objs = [], [], []
            for i in range(n):
                m = np.zeros((h, w), np.uint8)
                m[2 + i * 6 : 6 + i * 6, 4:12] = 255
                masks.append(_image(ts, stamp, h, w, "mono8", m))
                hyp = ty["vision_msgs/msg/ObjectHypothesis"]("mug", 0.9)
                pose = ty["geometry_msgs/msg/PoseWithCovariance"](
                    ty["geometry_msgs/msg/Pose"](
                        ty["geometry_msgs/msg/Point"](0.0, 0.0, 0.0),
                        ty["geometry_msgs/msg/Quaternion"](0.0, 0.0, 0.0, 1.0),
                    ),
                    np.zeros(36),
                )
                res = ty["vision_msgs/msg/ObjectHypothesisWithPose"](hyp, pose)
                bbox = ty["vision_msgs/msg/BoundingBox2D"](
                    ty["vision_msgs/msg/Pose2D"](ty["vision_msgs/msg/Point2D"](8.0, 4.0 + i * 6), 0.0),
                    8.0,
                    4.0,
                )
                dets.append(ty["vision_msgs/msg/Detection2D"](_header(ts, stamp), [res], bbox, str(i)))
                objs.append(
                    ty["cleanpose_msgs/msg/ObjectPose"](
                        "mug",
                        5,
                        1.0,
                        str(i),
                        ty["geometry_msgs/msg/Pose"](
                            ty["geometry_msgs/msg/Point"](0.01 * i, 0.0, 0.8),
                            ty["geometry_msgs/msg/Quaternion"](0.0, 0.0, 0.0, 1.0),
                        ),
                        ty["geometry_msgs/msg/Vector3"](0.1, 0.1, 0.1),
                        100,
                    )
                )
            empty = _image(ts, 0, 0, 0, "", np.zeros(0, np.uint8))
            msgs[T.detections] = ty["cleanpose_msgs/msg/InstanceSegmentation"](
                _header(ts, stamp), 0, dets, masks, np.zeros(0, np.uint32), np.zeros(0, np.uint32), empty
            )
            msgs[T.gt] = ty["cleanpose_msgs/msg/ObjectPoseArray"](_header(ts, stamp), objs)
            for t, c in conns.items():
                wr.write(c, stamp, ts.serialize_cdr(msgs[t], topics[t]))
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_reads_both_storage_formats(tmp_path, storage):
    bag = load_frames(write_tiny_bag(tmp_path / "bag", storage=storage, frames=5))
    assert bag.storage == storage
    assert len(bag.frames) == 5 and bag.skipped == 0
    assert [f.n_objects for f in bag.frames] == [1, 2, 3, 1, 2]
    assert bag.has_gt and all(len(f.gt.objects) == f.n_objects for f in bag.frames)
    assert set(bag.frames[0].raw) == {"image", "depth", "info", "detections"}
    assert bag.msgtypes["detections"] == "cleanpose_msgs/msg/InstanceSegmentation"
    # frames ordered by stamp, stamps taken from the CDR header
    stamps = [f.stamp_ns for f in bag.frames]
    assert stamps == sorted(stamps) and stamps[1] - stamps[0] == 100_000_000


def test_bag_without_gt_has_no_gt(tmp_path):
    bag = load_frames(write_tiny_bag(tmp_path / "bag", with_gt=False, frames=2))
    assert not bag.has_gt and all(f.gt is None for f in bag.frames)


def test_missing_topic_error_names_topics_found(tmp_path):
    path = write_tiny_bag(tmp_path / "bag", frames=1, skip_topics=(T.depth,))
    with pytest.raises(BagTopicError) as e:
        load_frames(path)
    msg = str(e.value)
    assert T.depth in msg and "--depth-topic" in msg
    assert T.image in msg and T.detections in msg  # the listing of what the bag holds


def test_custom_topic_names(tmp_path):
    path = write_tiny_bag(tmp_path / "bag", frames=1)
    with pytest.raises(BagTopicError, match="/robot/rgb"):
        load_frames(path, TopicConfig(image="/robot/rgb"))


def test_restamp_roundtrip(tmp_path):
    bag = load_frames(write_tiny_bag(tmp_path / "bag", frames=1))
    raw = bag.frames[0].raw["detections"]
    new = cdr_restamp(raw, 1_234_567_890_123_456_789)
    assert cdr_stamp_ns(new) == 1_234_567_890_123_456_789 and len(new) == len(raw)
    assert new[12:] == raw[12:]


@pytest.mark.ros
def test_dds_replay_echo_node(tmp_path, ros_overlay, rclpy_context):
    """Replay over real DDS into an echo node that answers each detections message with an ObjectPoseArray
    of the same stamp, except every third frame, which it drops like a busy node would."""
    import rclpy
    from cleanpose_msgs.msg import InstanceSegmentation, ObjectPose, ObjectPoseArray
    from rclpy.executors import SingleThreadedExecutor

    from cleanpose_tools.replay import Replayer

    bag = load_frames(write_tiny_bag(tmp_path / "bag", frames=6))
    echo = rclpy.create_node("cleanpose_node", context=rclpy_context)
    pub = echo.create_publisher(ObjectPoseArray, "~/poses", 10)
    seen = []

    def on_det(msg):
        seen.append(msg)
        if len(seen) % 3 == 0:
            return
        out = ObjectPoseArray(header=msg.header)
        out.objects = [ObjectPose(class_name="mug", instance_id=d.id) for d in msg.detections]
        pub.publish(out)

    echo.create_subscription(InstanceSegmentation, T.detections, on_det, 10)
    for t in (T.image, T.depth, T.info):  # the replayer waits until every input has a subscriber
        echo.create_subscription(
            __import__("sensor_msgs.msg", fromlist=["x"]).Image
            if t != T.info
            else __import__("sensor_msgs.msg", fromlist=["x"]).CameraInfo,
            t,
            lambda m: None,
            10,
        )
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(echo)
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    rep = Replayer(bag, T, "/cleanpose_node", context=rclpy_context)
    try:
        rep.wait_for_node(20)
        closed = rep.run(bag.frames, rate_hz=None, answer_timeout_s=1.0)
        fixed = rep.run(bag.frames, rate_hz=20.0, answer_timeout_s=1.0, drain_quiet_s=0.5)
    finally:
        rep.close()
        ex.shutdown(timeout_sec=1.0)
        echo.destroy_node()
    for run in (closed, fixed):
        assert run.sent == 6 and run.received == 4 and run.dropped == 2
        got = [r for r in run.records if r.t_recv is not None]
        assert all(r.t_recv > r.t_send for r in got)
        assert [len(r.output.objects) for r in got] == [r.n_objects for r in got]
    assert time.time_ns() - seen[-1].header.stamp.sec * 10**9 < 60 * 10**9  # restamped to send time


def test_max_objects_truncates_detections_and_gt(tmp_path):
    from cleanpose_tools.replay import deserialize_rclpy

    bag = load_frames(write_tiny_bag(tmp_path / "bag", frames=3), max_objects=2)
    assert [f.n_objects for f in bag.frames] == [1, 2, 2]
    assert [len(f.gt.objects) for f in bag.frames] == [1, 2, 2]
    raw = bag.frames[2].raw["detections"]
    assert cdr_stamp_ns(raw) == bag.frames[2].stamp_ns
    try:
        msg = deserialize_rclpy(raw, "cleanpose_msgs/msg/InstanceSegmentation")
    except ImportError:
        return  # no overlay in this environment: the rosbags side was checked above
    assert len(msg.detections) == len(msg.masks) == 2
