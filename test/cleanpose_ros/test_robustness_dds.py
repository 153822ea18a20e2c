"""Every bad input of issue 5 part 6 against the running node over DDS: each gets logged and skipped, and
the node answers the next good frame. A checkpoint that fails to load fails configure with the reason."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ros_harness as H

pytestmark = pytest.mark.ros
DOMAIN = 62
W, Hh = 160, 120
K = np.array([[150.0, 0, 80], [0, 150.0, 60], [0, 0, 1]])


def _good(ns, classes=("mug",), mask=None, depth=None):
    """A valid frame; the default object is an unknown-free, in-range mug (0.6 m)."""
    rgb = np.full((Hh, W, 3), 120, np.uint8)
    depth = np.full((Hh, W), 600, np.uint16) if depth is None else depth
    m = np.zeros((len(classes), Hh, W), bool)
    if mask is None:
        m[:, 40:80, 60:100] = True
    else:
        m[:] = mask
    return [
        H.image_msg(rgb, "rgb8", ns),
        H.image_msg(depth, "16UC1", ns),
        H.detections_msg(m, list(classes), ns),
    ]


@pytest.fixture(scope="module")
def graph(checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "node.log"
    with H.running_graph({"checkpoint": str(checkpoint), "log_throttle": 0.0}, DOMAIN, log) as g:
        yield g


def _answered(client, node, msgs, info=None, timeout=60.0):
    ns = H.stamp_ns(msgs[0].header)
    client.send(*msgs, info=info)
    return client.wait(lambda: client.output_for(ns), timeout, f"answer to frame {ns}", node)


def _no_answer(client, node, msgs, info=None, settle=0.6):
    ns = H.stamp_ns(msgs[0].header)
    client.send(*msgs, info=info)
    time.sleep(settle)
    assert client.output_for(ns) is None
    assert node.alive()


def test_each_bad_input_is_skipped_and_the_next_good_frame_answered(graph):
    client, node = graph
    ns = [2_000_000_000 + k * 10_000_000 for k in range(100)]
    it = iter(ns)
    # 1. no CameraInfo yet
    _no_answer(client, node, _good(next(it)))
    info = H.info_msg(K, W, Hh)
    empty = ("person",)  # unknown class -> no forward; a cheap good frame
    assert _answered(client, node, _good(next(it), empty), info=info).objects == []

    def bad_then_good(make_bad, answered_empty=False):
        msgs = _good(next(it))
        make_bad(msgs)
        if answered_empty:  # per-detection problems: frame answered, the detection left out
            assert _answered(client, node, msgs).objects == []
        else:
            _no_answer(client, node, msgs)
        assert _answered(client, node, _good(next(it), empty)).objects == []

    # 2. wrong colour encoding
    bad_then_good(lambda m: setattr(m[0], "encoding", "yuv422"))
    # 3. depth with a colour encoding
    bad_then_good(
        lambda m: m.__setitem__(
            1, H.image_msg(np.zeros((Hh, W, 3), np.uint8), "rgb8", H.stamp_ns(m[0].header))
        )
    )
    # 4. truncated image data
    bad_then_good(lambda m: setattr(m[0], "data", bytes(100)))
    # 5. depth size differs from the colour image
    bad_then_good(
        lambda m: m.__setitem__(
            1, H.image_msg(np.full((60, 80), 600, np.uint16), "16UC1", H.stamp_ns(m[0].header))
        )
    )
    # 6. mismatched array lengths in the detection message
    bad_then_good(lambda m: setattr(m[2], "masks", []))
    # 7. mask of the wrong size
    bad_then_good(
        lambda m: m[2].masks.__setitem__(0, H.image_msg(np.ones((200, 200), np.uint8), "mono8", 0)),
        answered_empty=True,
    )
    # 8. all-zero mask
    bad_then_good(
        lambda m: m[2].masks.__setitem__(0, H.image_msg(np.zeros((Hh, W), np.uint8), "mono8", 0)),
        answered_empty=True,
    )

    # 9. NaN / inf depth everywhere (32FC1): the object has no valid points
    def nan_depth(m):
        d = np.full((Hh, W), np.nan, np.float32)
        d[::2] = np.inf
        m[1] = H.image_msg(d, "32FC1", H.stamp_ns(m[0].header))

    bad_then_good(nan_depth, answered_empty=True)
    # 10. unknown class only
    assert _answered(client, node, _good(next(it), ("giraffe",))).objects == []
    # 11. CameraInfo of another resolution
    _no_answer(client, node, _good(next(it)), info=H.info_msg(K, 640, 480))
    assert _answered(client, node, _good(next(it), empty), info=info).objects == []
    # finally a good frame with a real object is estimated
    out = _answered(client, node, _good(next(it)), timeout=120)
    assert len(out.objects) == 1 and out.objects[0].class_name == "mug"
    assert out.objects[0].num_points == 40 * 40

    log = node.log()
    for needle in (
        "no CameraInfo",
        "yuv422",
        "depth encoding 'rgb8'",
        "expected step*height",
        "depth is 80x60",
        "1 detections but 0 masks",
        "does not fit",
        "empty mask",
        "unknown classes ['giraffe']",
        "CameraInfo is 640x480",
    ):
        assert needle in log, needle
    diag = client.wait(
        lambda: (d := client.diagnostics()) and int(d.get("skipped_bad_input", 0)) >= 7 and d,
        10,
        "diagnostics",
        node,
    )
    assert int(diag["skipped_bad_image"]) == 3 and int(diag["skipped_size_mismatch"]) == 1
    assert int(diag["skipped_no_camera_info"]) == 1 and int(diag["skipped_bad_detections"]) == 1
    assert int(diag["skipped_few_points"]) >= 1 and int(diag["skipped_unknown_class"]) >= 1


def test_bad_checkpoint_fails_configure_with_reason(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    node = H.NodeProcess({"checkpoint": str(bad), "device": "cpu"}, DOMAIN + 1, tmp_path / "node.log")
    client = H.Client(DOMAIN + 1)
    try:
        client.wait(lambda: "configure failed" in node.log(), 90, "configure failure", node)
        assert node.alive()  # stays up, unconfigured, for a lifecycle manager to retry
        assert client.get_state() == "unconfigured"
        assert "broken.safetensors" in node.log()
    finally:
        client.close()
        node.stop()
