"""The malformed-input suite (issue 17 point 4) against the running node over DDS, one node process for all
cases. Each case sends one bad input and asserts: the node survives, the cause's log line appears, its
diagnostics counter moves, and no pose comes from the bad input (a skipped frame gets no answer; a frame
with a bad detection is answered without that object). A cheap good frame (no detections) after each case
proves the node still answers. A checkpoint that fails to load fails configure with the reason."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import ros_harness as H

pytestmark = pytest.mark.ros
DOMAIN = 62
W, Hh = 160, 120
K = np.array([[150.0, 0, 80], [0, 150.0, 60], [0, 0, 1]])
BASE = 2_000_000_000


def _good(ns, classes=("mug",), mask=None, depth=None):
    """A valid frame: `classes` objects on one 40x40 patch of a 0.6 m plane (the default: one mug)."""
    rgb = np.full((Hh, W, 3), 120, np.uint8)
    depth = np.full((Hh, W), 600, np.uint16) if depth is None else depth
    enc = "32FC1" if depth.dtype == np.float32 else "16UC1"
    m = np.zeros((len(classes), Hh, W), bool)
    if mask is None:
        m[:, 40:80, 60:100] = True
    else:
        m[:] = mask
    return [
        H.image_msg(rgb, "rgb8", ns),
        H.image_msg(depth, enc, ns),
        H.detections_msg(m, list(classes), ns),
    ]


@dataclass
class Case:
    name: str
    counter: str  # the diagnostics key that must grow
    needle: str  # text of the log line that must appear (once more than before)
    make: object  # ns -> (image, depth, detections[, camera_info]) messages, or a callable sending them
    answered: bool = False  # per-object problem: the frame is answered, without the bad object


def _with(ns, index, value, **good):
    msgs = _good(ns, **good)
    msgs[index] = value
    return msgs


def _set(msgs, index, **fields):
    for k, v in fields.items():
        setattr(msgs[index], k, v)
    return msgs


def _det_edit(ns, edit, **good):
    msgs = _good(ns, **good)
    edit(msgs[2])
    return msgs


def _label_msg(ns, label, n=1):
    msgs = _good(ns, classes=("mug",) * n, mask=None)
    det = H.detections_msg(np.zeros((n, Hh, W), bool), ["mug"] * n, ns, label_image=True)
    det.label_image = label if not isinstance(label, np.ndarray) else H.image_msg(label, "mono8", ns)
    msgs[2] = det
    return msgs


def _depth32(value):
    return lambda ns: _good(ns, depth=np.full((Hh, W), value, np.float32))


def _mask_img(arr, ns, enc="mono8"):
    return H.image_msg(arr, enc, ns)


def _cases() -> list[Case]:
    lab_out = np.zeros((Hh, W), np.uint8)
    lab_out[40:80, 60:100] = 1
    lab_out[0:5, 0:5] = 5  # label 5, one detection
    one_px = np.zeros((Hh, W), bool)
    one_px[60, 80] = True
    two_px = np.zeros((Hh, W), bool)
    two_px[60, 80:82] = True
    return [
        # camera info
        Case(
            "CameraInfo K all zero",
            "skipped_bad_camera_info",
            "K is not a valid intrinsic",
            lambda ns: [*_good(ns), H.info_msg(np.zeros((3, 3)), W, Hh)],
        ),
        Case(
            "CameraInfo K NaN",
            "skipped_bad_camera_info",
            "fx=nan",
            lambda ns: [*_good(ns), H.info_msg(np.full((3, 3), np.nan), W, Hh)],
        ),
        Case(
            "CameraInfo negative focal length",
            "skipped_bad_camera_info",
            "fx=-150.0",
            lambda ns: [*_good(ns), H.info_msg(K * [[-1], [1], [1]], W, Hh)],
        ),
        Case(
            "CameraInfo of another resolution",
            "skipped_info_mismatch",
            "is 640x480 but the colour image",
            lambda ns: [*_good(ns), H.info_msg(K, 640, 480)],
        ),
        # colour image
        Case(
            "colour encoding yuv422",
            "skipped_bad_image",
            "'yuv422' not supported",
            lambda ns: _set(_good(ns), 0, encoding="yuv422"),
        ),
        Case(
            "colour image as mono8",
            "skipped_bad_image",
            "colour image encoding 'mono8'",
            lambda ns: _with(ns, 0, H.image_msg(np.zeros((Hh, W), np.uint8), "mono8", ns)),
        ),
        Case(
            "colour data truncated",
            "skipped_bad_image",
            "expected step*height",
            lambda ns: _set(_good(ns), 0, data=bytes(100)),
        ),
        Case(
            "colour step below the row size",
            "skipped_bad_image",
            "step 10 < width",
            lambda ns: _set(_good(ns), 0, step=10),
        ),
        Case(
            "colour image 0x0",
            "skipped_bad_image",
            "empty image (0x0)",
            lambda ns: _set(_good(ns), 0, width=0, height=0, step=0, data=b""),
        ),
        Case(
            "huge frame (header 100000x100000)",
            "skipped_too_large",
            "more than max_image_pixels",
            lambda ns: _set(_good(ns), 0, width=100_000, height=100_000),
        ),
        # depth image
        Case(
            "depth with a colour encoding",
            "skipped_bad_depth",
            "depth encoding 'rgb8'",
            lambda ns: _with(ns, 1, H.image_msg(np.zeros((Hh, W, 3), np.uint8), "rgb8", ns)),
        ),
        Case(
            "depth data truncated",
            "skipped_bad_depth",
            "data has 50 bytes",
            lambda ns: _set(_good(ns), 1, data=bytes(50)),
        ),
        Case(
            "depth 80x60 for a 160x120 image",
            "skipped_size_mismatch",
            "is 80x60 but the colour image",
            lambda ns: _with(ns, 1, H.image_msg(np.full((60, 80), 600, np.uint16), "16UC1", ns)),
        ),
        # detection message as a whole
        Case(
            "detections without masks (mismatched arrays)",
            "skipped_bad_detections",
            "1 detections but 0 masks",
            lambda ns: _det_edit(ns, lambda d: setattr(d, "masks", [])),
        ),
        Case(
            "mask offsets of the wrong length",
            "skipped_bad_detections",
            "mask offsets must be empty",
            lambda ns: _det_edit(ns, lambda d: setattr(d, "mask_offset_x", [0, 0])),
        ),
        Case(
            "unknown format",
            "skipped_bad_detections",
            "unknown format 7",
            lambda ns: _det_edit(ns, lambda d: setattr(d, "format", 7)),
        ),
        Case(
            "label image of the wrong size",
            "skipped_bad_detections",
            "label image is 80x60",
            lambda ns: _label_msg(ns, np.zeros((60, 80), np.uint8)),
        ),
        Case(
            "label image with an out-of-range label",
            "skipped_bad_detections",
            "label 5 but the message has 1",
            lambda ns: _label_msg(ns, lab_out),
        ),
        Case(
            "label image in rgb8",
            "skipped_bad_detections",
            "label image: mask encoding 'rgb8'",
            lambda ns: _label_msg(ns, H.image_msg(np.zeros((Hh, W, 3), np.uint8), "rgb8", ns)),
        ),
        # one detection (the frame is answered without it)
        Case(
            "box-sized mask without offsets",
            "objects_skipped_mask_no_offsets",
            "80x60 is not the 160x120",
            lambda ns: _det_edit(
                ns, lambda d: d.masks.__setitem__(0, _mask_img(np.full((60, 80), 255, np.uint8), ns))
            ),
            answered=True,
        ),
        Case(
            "mask overflowing the image at its offset",
            "objects_skipped_mask_outside",
            "does not fit the 160x120",
            lambda ns: _det_edit(
                ns,
                lambda d: (
                    d.masks.__setitem__(0, _mask_img(np.full((60, 80), 255, np.uint8), ns)),
                    setattr(d, "mask_offset_x", [100]),
                    setattr(d, "mask_offset_y", [10]),
                ),
            ),
            answered=True,
        ),
        Case(
            "mask in rgb8",
            "objects_skipped_bad_mask",
            "mask encoding 'rgb8' not supported",
            lambda ns: _det_edit(
                ns, lambda d: d.masks.__setitem__(0, _mask_img(np.zeros((Hh, W, 3), np.uint8), ns, "rgb8"))
            ),
            answered=True,
        ),
        Case(
            "empty mask",
            "objects_skipped_empty_mask",
            "empty mask",
            lambda ns: _good(ns, mask=np.zeros((Hh, W), bool)),
            answered=True,
        ),
        # too few valid depth points: the object is left out, with the count it had
        *[
            Case(name, "objects_skipped_few_points", needle, make, answered=True)
            for name, needle, make in (
                ("one-pixel mask", "1 valid depth pixels", lambda ns: _good(ns, mask=one_px)),
                ("two-pixel mask", "2 valid depth pixels", lambda ns: _good(ns, mask=two_px)),
                ("all-NaN depth", "0 valid depth pixels", _depth32(np.nan)),
                ("all-inf depth", "0 valid depth pixels", _depth32(np.inf)),
                (
                    "all-zero depth",
                    "0 valid depth pixels",
                    lambda ns: _good(ns, depth=np.zeros((Hh, W), np.uint16)),
                ),
                ("negative depth", "0 valid depth pixels", _depth32(-0.6)),
            )
        ],
        Case(
            "unknown class",
            "objects_skipped_unknown_class",
            "unknown classes ['giraffe']",
            lambda ns: _good(ns, classes=("giraffe",)),
            answered=True,
        ),
    ]


@pytest.fixture(scope="module")
def graph(checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "node.log"
    with H.running_graph({"checkpoint": str(checkpoint), "log_throttle": 0.0}, DOMAIN, log) as g:
        yield g


def _counter(client, key) -> int:
    return int(client.diagnostics().get(key, 0))


def _send(client, msgs):
    """Publish a frame; a CameraInfo other than the last one goes first and is given time to land: it is
    cached, not synchronized, and DDS does not order messages across topics."""
    if len(msgs) > 3 and getattr(client, "last_info", None) is not msgs[3]:
        client.pub_info.publish(msgs[3])
        client.last_info = msgs[3]
        time.sleep(0.3)
    client.send(*msgs[:3])


def _answered(client, node, msgs, timeout=60.0):
    ns = H.stamp_ns(msgs[0].header)
    _send(client, msgs)
    return client.wait(lambda: client.output_for(ns), timeout, f"answer to frame {ns}", node)


def _run(client, node, name, counter, needle, send, bad_stamps, answered, next_ns, info):
    """One case: returns (survived, logged, counted, poses from the bad input)."""
    before, seen = _counter(client, counter), node.log().count(needle)
    send()
    client.wait(lambda: node.log().count(needle) > seen, 20, f"{name}: log line {needle!r}", node)
    client.wait(lambda: _counter(client, counter) > before, 20, f"{name}: counter {counter}", node)
    # the node answers the next good frame; answers come in order, so the bad input is settled by then
    assert _answered(client, node, [*_good(next_ns, classes=()), info]).objects == []
    bad_poses = 0
    for ns in bad_stamps:
        poses = [m for m in client.get("poses") if H.stamp_ns(m.header) == ns]
        bad_poses += sum(len(m.objects) for m in poses) if answered else len(poses)
        if answered:
            assert len(poses) == 1, f"{name}: frame not answered"
    return node.alive(), True, True, bad_poses


def test_malformed_inputs(graph, capsys):
    client, node = graph
    stamps = iter(BASE + k * 1_000_000_000 for k in range(1000))
    info = H.info_msg(K, W, Hh)
    rows = []

    def run(name, counter, needle, send, bad_stamps, answered=False):
        row = _run(client, node, name, counter, needle, send, bad_stamps, answered, next(stamps), info)
        rows.append((name, *row))

    # no CameraInfo yet (the first case: the node has never had one)
    ns = next(stamps)
    run(
        "no CameraInfo yet",
        "skipped_no_camera_info",
        "no CameraInfo received yet",
        lambda: _send(client, _good(ns)),
        [ns],
    )
    for c in _cases():
        ns = next(stamps)
        msgs = c.make(ns)
        if len(msgs) == 3:
            msgs.append(info)
        run(c.name, c.counter, c.needle, lambda msgs=msgs: _send(client, msgs), [ns], c.answered)

    # input sets that never synchronize: depth stamped 0.3 s from colour and detections
    ns = next(stamps)
    late = _good(ns)
    late[1] = _good(ns + 300_000_000)[1]
    run(
        "depth stamped 0.3 s from colour",
        "inputs_sync_miss",
        "'depth' 300.0 ms away",
        lambda: _send(client, late),
        [ns, ns + 300_000_000],
    )
    # a whole frame sent again with the stamp of one already answered (other content)
    ns = next(stamps)
    assert len(_answered(client, node, [*_good(ns), info]).objects) == 1
    run(
        "duplicated stamp",
        "inputs_duplicate_stamp",
        "repeated (every message needs a stamp",
        lambda: _send(client, _good(ns, classes=("bowl",))),
        [],
    )
    dup = [m for m in client.get("poses") if H.stamp_ns(m.header) == ns]
    assert [[o.class_name for o in m.objects] for m in dup] == [["mug"]], "a second pose for a repeated stamp"
    # a frame older than the newest (out of order, 0.2 s back: less than time_jump_threshold)
    last = next(stamps)
    assert _answered(client, node, [*_good(last, classes=()), info]).objects == []
    run(
        "stale stamp (0.2 s older than the newest)",
        "inputs_stale_stamp",
        "older than the newest one",
        lambda: _send(client, _good(last - 200_000_000)),
        [last - 200_000_000],
    )

    # finally a good frame with a real object is estimated
    ns = next(stamps)
    out = _answered(client, node, [*_good(ns), info], timeout=120)
    assert len(out.objects) == 1 and out.objects[0].class_name == "mug" and out.objects[0].num_points == 1600

    with capsys.disabled():
        print(f"\nmalformed-input suite: {len(rows)} cases")
        print("| case | survived | log line | counter | poses from bad input |")
        for name, alive, logged, counted, poses in rows:
            print(f"| {name} | {alive} | {logged} | {counted} | {poses} |")
    assert len(rows) >= 30
    assert all(r[1] and r[2] and r[3] for r in rows)
    assert sum(r[4] for r in rows) == 0


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
