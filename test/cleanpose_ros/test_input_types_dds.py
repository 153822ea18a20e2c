"""The node's other input types over DDS with the real wire types (node in its own process): compressed colour
(png, jpeg) + compressedDepth png as image_transport publishes them, vision_msgs Detection2DArray + a label
image, and yolo_ros' DetectionArray with polygon masks. Poses equal those of the same inputs through the
model API in this process; a set that does not decode is skipped and counted, and the node goes on."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
import ros_harness as H
import segmenter_msgs as S
from scipy.spatial.transform import Rotation

from cleanpose_ros import codecs, conversions

pytestmark = pytest.mark.ros
# ROS domains of their own (61-66: the other DDS test modules, which may run at the same time)
NAMES = ["bottle", "bowl", "camera", "can", "laptop", "mug"]
# COCO names of the NOCS categories that have one (what a yolo model trained on COCO says)
COCO = {"bottle": "bottle", "bowl": "bowl", "laptop": "laptop", "mug": "cup"}


@pytest.fixture(scope="module")
def frames():
    return H.synthetic_frames(3, seed=4)


@pytest.fixture(scope="module")
def pipe(checkpoint):
    from cleanpose_ros.pipeline import FramePipeline

    return FramePipeline.from_checkpoint(str(checkpoint), device="cpu")


@contextlib.contextmanager
def _graph(params: dict, domain: int, log, inputs: dict, remaps: dict | None = None):
    """Node with `params` (tracking off: the published poses are the measurements) and `remaps`, and a client
    with one publisher per (topic -> type) of `inputs` plus camera_info. The client's node already publishes
    `detections` as InstanceSegmentation (one type per topic in a participant): other detection types are
    published on another topic the node's `detections` is remapped to, as with yolo_ros' /yolo/detections."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo

    base = {"device": "cpu", "warmup": False, "input_reliability": "reliable", "diagnostics_period": 0.5}
    node = H.NodeProcess({**base, "tracking": False, **params}, domain, log, remaps=remaps)
    client = H.Client(domain, outputs=["poses", "diagnostics"])
    try:
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {
            t: client.node.create_publisher(typ, t, qos)
            for t, typ in {**inputs, "camera_info": CameraInfo}.items()
        }
        client.wait(
            lambda: (
                all(p.get_subscription_count() > 0 for p in pubs.values())
                and client.node.count_publishers("/cleanpose_node/poses") > 0
            ),
            90,
            f"the node's subscriptions to {sorted(pubs)}",
            node,
        )
        # Matched is not yet delivering: CameraInfo (cached, not synchronized) until the node counts one
        # proves the data path before any frame is sent.
        info = H.info_msg(np.eye(3), 1, 1)

        def info_arrived():
            pubs["camera_info"].publish(info)
            time.sleep(0.2)
            return client.diagnostics().get("input_camera_info_messages", "0") != "0"

        client.wait(info_arrived, 60, "the node's first CameraInfo from this participant", node)
        yield client, node, pubs
    finally:
        client.close()
        node.stop()  # a node left running would answer the next run's test on this domain


def _wait_poses(client, node, ns, what="~/poses", timeout=120):
    """The node's poses for stamp `ns`; on a time-out the node's diagnostics say which inputs it got."""
    try:
        return client.wait(lambda: client.output_for(ns), timeout, what, node)
    except AssertionError as e:
        raise AssertionError(f"{e}\ndiagnostics: {client.diagnostics()}") from None


def _send(pubs, fr, ns, msgs: dict):
    pubs["camera_info"].publish(H.info_msg(fr.K, fr.rgb.shape[1], fr.rgb.shape[0], ns))
    for topic in sorted(msgs, key=lambda t: t.startswith("image")):  # colour last, as a camera does
        pubs[topic].publish(msgs[topic])


def _assert_same_poses(out, ref, names=None):
    assert len(out.objects) == len(ref.objects) > 0
    for o, r in zip(out.objects, ref.objects):
        q = o.pose.orientation
        R = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
        np.testing.assert_allclose(R, r.rotation, atol=1e-5)
        np.testing.assert_allclose(
            [o.pose.position.x, o.pose.position.y, o.pose.position.z], r.translation, atol=1e-6
        )
        assert o.num_points == r.num_points and o.class_id == r.class_id
    if names is not None:
        assert [o.class_name for o in out.objects] == names


def _compressed(data_fmt, ns):
    from sensor_msgs.msg import CompressedImage

    m = CompressedImage(format=data_fmt[1])
    m.header.stamp, m.header.frame_id = H.stamp_of(ns), H.FRAME_ID
    m.data = data_fmt[0]
    return m


def test_compressed_colour_and_depth(checkpoint, frames, pipe, tmp_path):
    from cleanpose_msgs.msg import InstanceSegmentation
    from sensor_msgs.msg import CompressedImage

    params = {
        "checkpoint": str(checkpoint),
        "color_transport": "compressed",
        "depth_transport": "compressedDepth",
    }
    inputs = {
        "image/compressed": CompressedImage,
        "depth/compressedDepth": CompressedImage,
        "detections": InstanceSegmentation,
    }
    with _graph(params, 71, tmp_path / "node.log", inputs) as (client, node, pubs):
        for k, codec in enumerate(("png", "jpeg")):
            fr, ns = frames[k], 1_700_000_000_000_000_000 + k * 10**8
            _, _, det = H.frame_messages(fr, ns)
            color = codecs.encode_color(fr.rgb, codec, quality=95)
            depth = codecs.encode_depth(fr.depth_mm.astype(np.uint16))
            _send(
                pubs,
                fr,
                ns,
                {
                    "image/compressed": _compressed(color, ns),
                    "depth/compressedDepth": _compressed(depth, ns),
                    "detections": det,
                },
            )
            out = _wait_poses(client, node, ns, f"~/poses from {codec}", 120)
            # the reference decodes the same bytes here: the node's decode adds nothing
            rgb = codecs.decode_color(*color)
            if codec == "png":
                np.testing.assert_array_equal(rgb, fr.rgb)
            d_mm, _ = codecs.decode_depth(*depth)
            ref = pipe.process(rgb, d_mm.astype(np.float32) / 1000.0, np.asarray(fr.K), det)
            _assert_same_poses(out, ref, [NAMES[c] for c in fr.category_ids])
        # a colour message that does not decode: skipped and counted as bad_image, the next one is served
        fr = frames[2]
        ns_bad, ns_ok = 1_700_000_001_000_000_000, 1_700_000_001_100_000_000
        _, _, det = H.frame_messages(fr, ns_bad)
        depth = codecs.encode_depth(fr.depth_mm.astype(np.uint16))
        _send(
            pubs,
            fr,
            ns_bad,
            {
                "image/compressed": _compressed((b"\xff\xd8 broken", "rgb8; jpeg compressed bgr8"), ns_bad),
                "depth/compressedDepth": _compressed(depth, ns_bad),
                "detections": det,
            },
        )
        client.wait(
            lambda: int(client.diagnostics().get("skipped_bad_image", 0)) >= 1, 30, "skipped_bad_image", node
        )
        _, _, det = H.frame_messages(fr, ns_ok)
        _send(
            pubs,
            fr,
            ns_ok,
            {
                "image/compressed": _compressed(codecs.encode_color(fr.rgb, "png"), ns_ok),
                "depth/compressedDepth": _compressed(depth, ns_ok),
                "detections": det,
            },
        )
        _wait_poses(client, node, ns_ok, "~/poses after the bad set", 60)
        assert client.output_for(ns_bad) is None
        # the node's log line (its stderr reaches the file a little after the counter reaches diagnostics)
        client.wait(
            lambda: "bad_image" in node.log() and "not a decodable" in node.log(), 30, "the log line", node
        )


def test_detection2d_array_with_label_image(checkpoint, frames, pipe, tmp_path):
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    params = {"checkpoint": str(checkpoint), "segmenter_input": "detection2d_labels"}
    inputs = {"image": Image, "depth": Image, "label_image": Image, "/segmenter/detections": Detection2DArray}
    remaps = {"detections": "/segmenter/detections"}
    with _graph(params, 72, tmp_path / "node.log", inputs, remaps) as (client, node, pubs):
        fr, ns = frames[0], 1_700_000_002_000_000_000
        img, dep, det_is = H.frame_messages(fr, ns)
        ids = [int(i) + 1 for i in fr.instance_ids]  # label 0 is background
        det = S.detection2d_array([NAMES[c] for c in fr.category_ids], ns, ids=ids)
        lab = S.label_image(fr.masks, ids, ns, "16UC1")
        _send(pubs, fr, ns, {"image": img, "depth": dep, "label_image": lab, "/segmenter/detections": det})
        out = _wait_poses(client, node, ns, "~/poses", 120)
        # the same masks as the InstanceSegmentation path: the same poses
        ref = pipe.process(
            conversions.rgb_from_image(img), conversions.depth_from_image(dep), np.asarray(fr.K), det_is
        )
        _assert_same_poses(out, ref, [NAMES[c] for c in fr.category_ids])
        assert [o.instance_id for o in out.objects] == [str(i) for i in ids]


def test_yolo_detection_array(checkpoint, frames, pipe, tmp_path):
    from sensor_msgs.msg import Image
    from yolo_msgs.msg import DetectionArray

    from cleanpose_ros.segmenters import YoloDetections

    params = {"checkpoint": str(checkpoint), "segmenter_input": "yolo"}
    inputs = {"image": Image, "depth": Image, "/yolo/detections": DetectionArray}
    remaps = {"detections": "/yolo/detections"}  # yolo_ros' topic
    with _graph(params, 73, tmp_path / "node.log", inputs, remaps) as (client, node, pubs):
        fr, ns = frames[1], 1_700_000_003_000_000_000
        img, dep, _ = H.frame_messages(fr, ns)
        cats = [NAMES[c] for c in fr.category_ids]
        # COCO names where there is one (mug -> "cup", mapped by the default class map), else the NOCS name
        det = S.yolo_array(
            [S.polygon(m) for m in fr.masks],
            [COCO.get(c, c) for c in cats],
            ns,
            (fr.rgb.shape[1], fr.rgb.shape[0]),
        )
        _send(pubs, fr, ns, {"image": img, "depth": dep, "/yolo/detections": det})
        out = _wait_poses(client, node, ns, "~/poses", 120)
        ref = pipe.process(
            conversions.rgb_from_image(img),
            conversions.depth_from_image(dep),
            np.asarray(fr.K),
            YoloDetections(det).to_detections(*fr.rgb.shape[:2]),
        )
        _assert_same_poses(out, ref, cats)
