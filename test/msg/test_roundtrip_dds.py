"""A publisher node and a subscriber node, in two separate processes, exchange every cleanpose_msgs message
(and the test-only vision_msgs / tf2_msgs types the node publishes) over Fast DDS; every field must arrive
exactly as sent, including full-size 640x480 masks and a 16UC1 label image."""

from __future__ import annotations

import array
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ros

HERE = Path(__file__).resolve().parent
PEER = HERE / "dds_peer.py"
TIMEOUT_S = 90.0


def assert_msg_equal(got, want, path: str = "msg") -> None:
    """Field-by-field comparison that names the first differing field (msg == msg only says False)."""
    fields = getattr(want, "get_fields_and_field_types", None)
    if fields is None:
        if isinstance(want, list | tuple | array.array | np.ndarray):
            got_list, want_list = list(got), list(want)
            assert len(got_list) == len(want_list), f"{path}: length {len(got_list)} != {len(want_list)}"
            for i, (g, w) in enumerate(zip(got_list, want_list)):
                assert_msg_equal(g, w, f"{path}[{i}]")
        else:
            assert got == want, f"{path}: {got!r} != {want!r}"
        return
    assert type(got) is type(want), f"{path}: type {type(got).__name__} != {type(want).__name__}"
    for name in fields():
        assert_msg_equal(getattr(got, name), getattr(want, name), f"{path}.{name}")


@pytest.fixture(scope="module")
def exchange(ros_overlay, tmp_path_factory) -> Path:
    """Run the two peers once for all payload topics; returns the directory with what the subscriber got."""
    out = tmp_path_factory.mktemp("dds_roundtrip")
    # A fresh namespace per run on top of the per-session ROS_DOMAIN_ID (test/conftest.py).
    ns = f"/cleanpose_test_{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    done = out / "done"
    sub = subprocess.Popen(
        [sys.executable, str(PEER), "sub", "--ns", ns, "--out", str(out), "--timeout", str(TIMEOUT_S)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    pub = subprocess.Popen(
        [sys.executable, str(PEER), "pub", "--ns", ns, "--timeout", str(TIMEOUT_S), "--done", str(done)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, sub_err = sub.communicate(timeout=TIMEOUT_S + 30)
        _, pub_err = pub.communicate(timeout=30)
    finally:
        for proc in (sub, pub):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sub.returncode == 0, f"subscriber exit {sub.returncode}:\n{sub_err[-3000:]}"
    assert pub.returncode == 0, f"publisher exit {pub.returncode}:\n{pub_err[-3000:]}"
    return out


def _payloads():
    sys.path.insert(0, str(HERE))
    import dds_payloads

    return dds_payloads


@pytest.mark.parametrize(
    "topic",
    [
        "segmentation_masks",
        "segmentation_cropped",
        "segmentation_label",
        "object_pose",
        "object_pose_array",
        "detections_3d",
        "tf",
    ],
)
def test_message_round_trips_exactly(exchange: Path, topic: str) -> None:
    from rclpy.serialization import deserialize_message, serialize_message

    payloads = _payloads()
    assert set(payloads.PAYLOADS) >= {topic}
    type_path, build = payloads.PAYLOADS[topic]
    cls = payloads.message_type(type_path)
    want = build()
    got = deserialize_message((exchange / f"{topic}.cdr").read_bytes(), cls)
    assert_msg_equal(got, want)
    assert got == want
    # No comparison of serialized bytes: CDR alignment padding is not guaranteed to be zeroed, so equal
    # messages can serialize differently (seen in a fresh-clone run). The field walk above is exhaustive.
    assert len(serialize_message(got)) == len(serialize_message(want))


def test_full_size_masks_arrive_bit_exact(exchange: Path) -> None:
    from cleanpose_msgs.msg import InstanceSegmentation
    from rclpy.serialization import deserialize_message

    payloads = _payloads()
    want = payloads.segmentation_masks()
    got = deserialize_message((exchange / "segmentation_masks.cdr").read_bytes(), InstanceSegmentation)
    assert got.format == InstanceSegmentation.FORMAT_MASKS
    assert len(got.masks) == len(got.detections) == 3
    for k, (g, w) in enumerate(zip(got.masks, want.masks)):
        assert (g.width, g.height, g.encoding, g.step) == (640, 480, "mono8", 640)
        g_px = np.frombuffer(bytes(g.data), np.uint8).reshape(480, 640)
        w_px = np.frombuffer(bytes(w.data), np.uint8).reshape(480, 640)
        np.testing.assert_array_equal(g_px, w_px, err_msg=f"mask {k}")
    assert got.detections[0].results[0].hypothesis.class_id == "mug"
    assert got.header.stamp.nanosec == 123_456_789


def test_label_image_arrives_bit_exact(exchange: Path) -> None:
    from cleanpose_msgs.msg import InstanceSegmentation
    from rclpy.serialization import deserialize_message

    payloads = _payloads()
    want = payloads.segmentation_label_image()
    got = deserialize_message((exchange / "segmentation_label.cdr").read_bytes(), InstanceSegmentation)
    assert got.format == InstanceSegmentation.FORMAT_LABEL_IMAGE
    assert len(got.masks) == 0
    assert got.label_image.encoding == "16UC1"
    labels = np.frombuffer(bytes(got.label_image.data), np.uint16).reshape(480, 640)
    want_labels = np.frombuffer(bytes(want.label_image.data), np.uint16).reshape(480, 640)
    np.testing.assert_array_equal(labels, want_labels)
    assert labels.max() == len(got.detections)


def test_comparison_detects_a_changed_field() -> None:
    """The equality helper must name a one-ulp difference deep inside a message, else the tests above prove
    nothing."""
    pytest.importorskip("cleanpose_msgs.msg", reason="colcon overlay not sourced")
    payloads = _payloads()
    want = payloads.object_pose_array()
    got = payloads.object_pose_array()
    got.objects[3].pose.orientation.z = np.nextafter(got.objects[3].pose.orientation.z, 2.0)
    with pytest.raises(AssertionError, match=r"objects\[3\]\.pose\.orientation\.z"):
        assert_msg_equal(got, want)
