"""Several cameras through one worker (cleanpose_ros/cameras.py, worker.py): the latest set of every camera
goes through ONE estimator.predict per cycle, each camera gets back exactly its own objects (the poses it gets
alone), the mailbox is latest-only per camera, waits for live cameras only, and one camera's bad set does not
cost the others their frame."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import ros_harness as H

from cleanpose_ros import params
from cleanpose_ros.cameras import Camera, CameraSlots, input_topic, output_topic, tag
from cleanpose_ros.diagnostics import NodeStats
from cleanpose_ros.markers import Trails, build_markers


class _Log:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda msg: self.lines.append((level, msg))


class _Outputs:
    """Records what the worker publishes for one camera."""

    def __init__(self):
        self.frames = []

    def publish(self, p, header, objects, camera, clk, tf_prefix=None):
        self.frames.append((header, objects, tf_prefix))


def _node(pipeline, namespaces, **over):
    p = params.NodeParams(cameras=list(namespaces), device="cpu", tracking=False, **over)
    cams = [Camera(i, ns, NodeStats()) for i, ns in enumerate(namespaces)]
    for c in cams:
        c.outputs = _Outputs()
    log = _Log()
    node = SimpleNamespace(
        p=p, pipeline=pipeline, cameras=cams, stats=cams[0].stats, target=None, get_logger=lambda: log
    )
    node.get_clock = lambda: SimpleNamespace(now=lambda: SimpleNamespace(nanoseconds=0))
    return node, log


@pytest.fixture(scope="module")
def pipeline(checkpoint):
    from cleanpose_ros.pipeline import FramePipeline

    return FramePipeline.from_checkpoint(str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def frames():
    return H.synthetic_frames(2, seed=4, objects=(1, 2))


def _set(fr, ns):
    img, dep, det = H.frame_messages(fr, ns)
    return img, dep, det, time.monotonic(), None


def _count_forwards(node, pipeline, frames):
    """Each camera's CameraInfo set from its frame, and the estimator's predict wrapped to record each
    forward's object count: (the list it appends to, the original predict to restore)."""
    for cam, fr in zip(node.cameras, frames):
        cam.camera_info = H.info_msg(fr.K, fr.rgb.shape[1], fr.rgb.shape[0])
    calls = []
    predict = pipeline.estimator.predict

    def counting(batch):
        calls.append(len(batch))
        return predict(batch)

    pipeline.estimator.predict = counting
    return calls, predict


def test_names_of_a_camera():
    assert (input_topic("", "image"), output_topic("", "poses"), tag("")) == ("image", "~/poses", "")
    assert input_topic("/robot/cam_left/", "depth") == "/robot/cam_left/depth"
    assert output_topic("/robot/cam_left", "poses") == "~/robot_cam_left/poses"
    assert Camera(1, "cam_b", NodeStats()).tf_prefix("cleanpose_") == "cleanpose_cam_b_"
    assert Camera(0, "", NodeStats()).tf_prefix("cleanpose_") == "cleanpose_"
    with pytest.raises(ValueError, match="distinct"):
        params.NodeParams(cameras=["a", "a"]).validate()
    with pytest.raises(ValueError, match="non-empty"):
        params.NodeParams(cameras=[]).validate()


def test_two_cameras_share_one_forward_and_get_their_own_poses(pipeline, frames):
    from cleanpose_ros.worker import FrameWorker

    node, _ = _node(pipeline, ["cam_a", "cam_b"])
    w = FrameWorker(node)
    try:
        calls, predict = _count_forwards(node, pipeline, frames)
        try:
            w.process_cycle({0: _set(frames[0], 10**18), 1: _set(frames[1], 10**18 + 1)})
            batched_calls = list(calls)
            alone = []
            for fr in frames:  # each frame alone, for the reference poses
                img, dep, det, *_ = _set(fr, 10**18)
                alone.append(pipeline.process(_rgb(img), _depth(dep), fr.K, _det(det, fr)).objects)
        finally:
            pipeline.estimator.predict = predict
        n = [len(fr.category_ids) for fr in frames]
        assert batched_calls == [sum(n)], batched_calls  # ONE forward with both cameras' objects
        assert (w.forwards, w.forward_sets) == (1, 2)
        for cam, fr, ref in zip(node.cameras, frames, alone):
            ((_, objects, prefix),) = cam.outputs.frames
            assert len(objects) == len(fr.category_ids) == len(ref)
            assert prefix == f"cleanpose_{cam.tag}_"
            assert cam.stats.processed == 1
            for o, r in zip(objects, ref):  # the camera's own objects, in its own order
                assert (o.class_name, o.instance_id) == (r.class_name, r.instance_id)
                np.testing.assert_allclose(o.translation, r.translation, atol=1e-4)
                np.testing.assert_allclose(o.rotation, r.rotation, atol=1e-3)
    finally:
        w.stop()


def _rgb(img):
    from cleanpose_ros import conversions

    return conversions.rgb_from_image(img)


def _depth(dep):
    from cleanpose_ros import conversions

    return conversions.depth_from_image(dep)


def _det(det_msg, fr):
    from cleanpose_ros.detections import parse_instance_segmentation

    return parse_instance_segmentation(det_msg, fr.rgb.shape[0], fr.rgb.shape[1])


def test_a_bad_set_of_one_camera_skips_only_that_camera(pipeline, frames):
    from cleanpose_ros.worker import FrameWorker

    node, log = _node(pipeline, ["cam_a", "cam_b"])
    w = FrameWorker(node)
    try:
        fr = frames[0]
        node.cameras[0].camera_info = H.info_msg(fr.K, fr.rgb.shape[1], fr.rgb.shape[0])
        # cam_b has no CameraInfo yet: its set is skipped (counted on cam_b, logged naming its topic)
        w.process_cycle({0: _set(fr, 10**18), 1: _set(fr, 10**18)})
        a, b = node.cameras
        assert a.stats.processed == 1 and len(a.outputs.frames) == 1
        assert b.stats.processed == 0 and b.stats.skipped == {"no_camera_info": 1} and not b.outputs.frames
        assert any("cam_b/camera_info" in m for _, m in log.lines), log.lines
        assert w.forwards == 1 and w.forward_sets == 1
    finally:
        w.stop()


def _slots(n, wait, stale=2.0):
    stats = [NodeStats() for _ in range(n)]
    return CameraSlots(n, lambda i: stats[i], wait=lambda: wait, stale=lambda: stale), stats


def test_slots_latest_only_per_camera():
    slots, stats = _slots(2, 0.0)
    slots.accepting = True
    for item in ("a1", "a2", "a3"):
        slots.put(0, (item,))
    slots.put(1, ("b1",))
    assert slots.take(threading.Event()) == {0: ("a3",), 1: ("b1",)}
    assert (stats[0].inputs, stats[0].dropped, stats[1].dropped) == (3, 2, 0)


def test_slots_wait_for_a_live_camera_but_not_for_a_stale_one():
    slots, _ = _slots(2, 1.0, stale=0.3)
    slots.accepting = True
    slots.put(0, ("a0",))
    slots.put(1, ("b0",))
    slots.take(threading.Event())  # both cameras are live now
    slots.put(0, ("a1",))
    threading.Timer(0.1, lambda: slots.put(1, ("b1",))).start()
    t0 = time.monotonic()
    got = slots.take(threading.Event())
    assert got == {0: ("a1",), 1: ("b1",)}  # waited for cam 1's set: one cycle for both
    assert 0.05 < time.monotonic() - t0 < 0.9
    time.sleep(0.35)  # camera 1 stops: stale after 0.3 s
    slots.put(0, ("a2",))
    t0 = time.monotonic()
    assert slots.take(threading.Event()) == {0: ("a2",)}
    assert time.monotonic() - t0 < 0.2  # not waited for (camera_wait is 1 s)


def test_slots_take_more_gathers_the_other_live_cameras_one_by_one():
    """take(gather=False) hands over what waits now; take_more gives each other live camera's set as soon as
    it arrives, keeps a taken camera's newer set for the next cycle, stops waiting at the deadline or when
    every live camera is in the cycle, and abandons the cycle (None) when inputs stop."""
    slots, _ = _slots(3, 1.0, stale=0.3)
    slots.accepting = True
    stop = threading.Event()
    for i in range(3):
        slots.put(i, (f"c{i}_0",))
    slots.take(stop)  # all three cameras are live now
    slots.put(0, ("c0_1",))
    t0 = time.monotonic()
    assert slots.take(stop, gather=False) == {0: ("c0_1",)}  # not waited for cameras 1 and 2
    assert time.monotonic() - t0 < 0.2
    deadline = time.monotonic() + 1.0
    threading.Timer(0.1, lambda: (slots.put(0, ("c0_2",)), slots.put(2, ("c2_1",)))).start()
    assert slots.take_more({0}, deadline, stop) == {2: ("c2_1",)}  # camera 0's newer set stays
    threading.Timer(0.1, lambda: slots.put(1, ("c1_1",))).start()
    assert slots.take_more({0, 2}, deadline, stop) == {1: ("c1_1",)}
    t0 = time.monotonic()
    assert slots.take_more({0, 1, 2}, deadline, stop) == {}  # every live camera is in: no wait
    assert time.monotonic() - t0 < 0.2
    assert slots.take(stop, gather=False) == {0: ("c0_2",)}  # the next cycle
    assert slots.take_more({0}, time.monotonic() + 0.1, stop) == {}  # the deadline: cameras 1, 2 missed it
    time.sleep(0.35)  # cameras 1 and 2 are stale now
    slots.put(0, ("c0_3",))
    slots.take(stop, gather=False)
    t0 = time.monotonic()
    assert slots.take_more({0}, time.monotonic() + 1.0, stop) == {}  # stale cameras are not waited for
    assert time.monotonic() - t0 < 0.2
    slots.put(1, ("c1_2",))
    slots.take(stop, gather=False)
    threading.Timer(0.1, lambda: setattr(slots, "accepting", False)).start()
    threading.Timer(0.12, lambda: slots.put(1, ("late",))).start()  # wakes the waiting take_more
    assert slots.take_more({1}, time.monotonic() + 1.0, stop) is None  # inputs stopped: cycle dropped


def test_worker_prepares_a_camera_set_while_it_waits_for_the_other(pipeline, frames):
    """The worker's own loop: camera a's set is prepared at once, camera b's (40 ms later) joins the same
    cycle: ONE forward for both, and camera a's set did not wait in the mailbox for camera b's."""
    from cleanpose_ros.worker import FrameWorker

    # stale_timeout: the CPU forwards of the first round must not make camera b stale for the second
    node, _ = _node(pipeline, ["cam_a", "cam_b"], camera_wait=2.0, stale_timeout=60.0)
    w = FrameWorker(node)
    try:
        calls, predict = _count_forwards(node, pipeline, frames)
        stages = []
        a, b = node.cameras
        a.stats.on_stages = stages.append  # camera a's stage times per frame
        try:
            w.accept(True)

            def wait_processed(k):
                deadline = time.monotonic() + 60
                while not (a.stats.processed == b.stats.processed == k):
                    assert time.monotonic() < deadline, (a.stats.processed, b.stats.processed)
                    time.sleep(0.01)
                w.wait_idle()

            # both cameras' first sets (one cycle or two): both cameras are live from then on
            w.put(*_set(frames[0], 10**18)[:3], camera=0)
            w.put(*_set(frames[1], 10**18)[:3], camera=1)
            wait_processed(1)
            calls.clear()
            stages.clear()
            w.put(*_set(frames[0], 10**18 + 33_000_000)[:3], camera=0)
            time.sleep(0.04)
            w.put(*_set(frames[1], 10**18 + 33_000_000)[:3], camera=1)
            wait_processed(2)
        finally:
            pipeline.estimator.predict = predict
        assert calls == [sum(len(fr.category_ids) for fr in frames)], calls  # ONE forward for both cameras
        assert (a.stats.dropped, b.stats.dropped) == (0, 0)
        # camera a's set went to the worker at once (its queue stage), not after camera b's arrival (40 ms)
        assert len(stages) == 1 and stages[0]["queue"] < 30.0, stages
    finally:
        w.stop()


def test_marker_text_carries_the_track_and_trails_follow_it():
    from std_msgs.msg import Header
    from visualization_msgs.msg import Marker

    from cleanpose_ros.pipeline import ObjectResult

    def obj(tid, x):
        return ObjectResult("mug", 5, 0.9, tid, 0, np.eye(3), np.array([x, 0, 1.0]), np.full(3, 0.1), 100)

    trails = Trails(3)
    for k in range(5):
        objs = [obj("7", 0.01 * k), obj("8", -0.01 * k)]
        got = trails.update("cam", objs)
    assert [len(t) for t in got] == [3, 3]
    np.testing.assert_allclose([p[0] for p in got[0]], [0.02, 0.03, 0.04])  # the last 3, oldest first
    arr = build_markers(Header(frame_id="cam"), objs, axes=False, trails=got)
    texts = [m.text for m in arr.markers if m.type == Marker.TEXT_VIEW_FACING]
    assert [t.split("\n")[0] for t in texts] == ["mug #7", "mug #8"]
    strips = [m for m in arr.markers if m.type == Marker.LINE_STRIP]
    assert [len(m.points) for m in strips] == [3, 3] and {m.ns for m in strips} == {"trails"}
    assert len({(m.ns, m.id) for m in arr.markers[1:]}) == len(arr.markers) - 1
    # a new output frame starts every trail again; a track gone for `forget` updates is dropped
    assert [len(t) for t in trails.update("world", objs)] == [1, 1]
    short = Trails(5, forget=2)
    short.update("cam", [obj("1", 0.0)])
    for _ in range(3):
        short.update("cam", [obj("2", 0.0)])
    assert [len(t) for t in short.update("cam", [obj("1", 0.0)])] == [1]
