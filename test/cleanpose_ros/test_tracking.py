"""cleanpose_ros/tracking.py: identities across frames per category, Hungarian association on 3D box IoU and
centre distance, the tentative -> confirmed -> coasting -> ended lifecycle, detector ids honoured."""

from __future__ import annotations

import numpy as np
import pytest

from cleanpose_ros.tracking import (
    COASTING,
    CONFIRMED,
    TENTATIVE,
    Measurement,
    Tracker,
    TrackerConfig,
    aabb,
    iou_3d,
)

EYE = np.eye(3)
SIZE = np.array([0.08, 0.1, 0.08])


def m(cat, x, y=0.0, z=0.8, det_id=None):
    return Measurement(cat, np.array([x, y, z]), EYE, SIZE, det_id)


def test_iou_of_axis_aligned_boxes_and_rotated_box_extent():
    a = aabb(np.zeros(3), EYE, np.ones(3))
    assert iou_3d(a, a) == pytest.approx(1.0)
    b = aabb(np.array([0.5, 0, 0]), EYE, np.ones(3))
    assert iou_3d(a, b) == pytest.approx(0.5 / 1.5)
    assert iou_3d(a, aabb(np.array([2.0, 0, 0]), EYE, np.ones(3))) == 0.0
    # a box turned 45 degrees about z covers sqrt(2) times its width in x and y
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    np.testing.assert_allclose(aabb(np.zeros(3), rz, np.ones(3))[1], [np.sqrt(0.5), np.sqrt(0.5), 0.5])


def test_shuffled_objects_of_one_category_keep_their_ids_and_states_advance():
    """Three mugs 6 cm apart moving 1 cm per frame, given in a new random order every frame."""
    tr = Tracker(TrackerConfig(max_distance=0.05, confirm_hits=2))
    g = np.random.default_rng(0)
    ids = None
    for k in range(20):
        xs = np.array([0.0, 0.06, 0.12]) + 0.01 * k
        order = g.permutation(3)
        tracks = tr.update([m(5, xs[i]) for i in order])
        by_object = {int(i): t.id for i, t in zip(order, tracks)}
        if k == 0:
            assert all(t.state == TENTATIVE for t in tracks)
            ids = by_object
        else:
            assert by_object == ids
            assert all(t.state == CONFIRMED for t in tracks)
    assert tr.next_id == 4 and tr.ended == 0


def test_categories_are_tracked_apart_and_a_far_jump_starts_a_new_track():
    tr = Tracker(TrackerConfig(max_distance=0.05, confirm_hits=2))
    a, b = tr.update([m(5, 0.0), m(1, 0.0)])
    assert a.id != b.id
    # same place, categories swapped in the message: each stays with its own category
    b2, a2 = tr.update([m(1, 0.002), m(5, 0.001)])
    assert (a2.id, b2.id) == (a.id, b.id)
    # a mug 20 cm away is not the same mug; the old (confirmed) mug track coasts
    (c,) = tr.update([m(5, 0.2)])
    assert c.id not in (a.id, b.id) and c.state == TENTATIVE
    assert {t.id: t.state for t in tr.live()}[a.id] == COASTING


def test_coasting_track_is_resumed_and_ends_after_max_coast_tentative_after_one_miss():
    tr = Tracker(TrackerConfig(max_distance=0.05, confirm_hits=2, max_coast=3))
    (t,) = tr.update([m(3, 0.0)])
    tr.update([m(3, 0.0)])
    for _ in range(3):
        tr.update([])
    assert tr.live()[0].state == COASTING and tr.live()[0].misses == 3
    (back,) = tr.update([m(3, 0.01)])
    assert back.id == t.id and back.state == CONFIRMED
    for _ in range(4):
        tr.update([])
    assert tr.live() == [] and tr.ended == 1
    (u,) = tr.update([m(3, 0.5)])  # tentative (confirm_hits 2)
    tr.update([])
    assert tr.live() == [] and tr.ended == 2 and u.state != CONFIRMED


def test_hungarian_prefers_the_global_assignment_over_greedy_nearest():
    """Greedy nearest-first would give the measurement at 0.035 to the track at 0.04, leaving the one at 0.075
    with no track in range (a new id); the assignment keeps both ids: 0.035 -> track 0.0, 0.075 -> 0.04."""
    tr = Tracker(TrackerConfig(max_distance=0.05, min_iou=0.0))
    t0, t1 = tr.update([m(5, 0.0), m(5, 0.04)])
    # the track at 0.04 can reach 0.035 and 0.075; the one at 0.0 only 0.035
    a, b = tr.update([m(5, 0.035), m(5, 0.075)])
    assert (a.id, b.id) == (t0.id, t1.id)


def test_detector_ids_are_honoured_and_published_as_labels():
    tr = Tracker(TrackerConfig(max_distance=0.05))
    a, b = tr.update([m(5, 0.0, det_id="17"), m(5, 0.3, det_id="4")])
    assert (a.label, b.label) == ("17", "4")
    # the detector swaps places of its ids far beyond the gate: its ids win over geometry
    a2, b2 = tr.update([m(5, 0.3, det_id="17"), m(5, 0.0, det_id="4")])
    assert (a2.id, b2.id) == (a.id, b.id) and a2.label == "17"
    # without an id the label is the track number
    (c,) = tr.update([m(1, 0.0)])
    assert c.label == str(c.id) and c.detector_id is None
    assert c.state == CONFIRMED  # the default confirm_hits 1: published from its first frame


def test_min_iou_gate_and_bad_config():
    tr = Tracker(TrackerConfig(max_distance=0.2, min_iou=0.5))
    (a,) = tr.update([m(5, 0.0)])
    (b,) = tr.update([m(5, 0.07)])  # within 20 cm but the 8 cm boxes barely overlap
    assert b.id != a.id
    for bad in (dict(max_distance=0.0), dict(min_iou=1.5), dict(confirm_hits=0), dict(max_coast=-1)):
        with pytest.raises(ValueError):
            TrackerConfig(**bad)


def test_worker_publishes_track_ids_and_honours_detector_ids():
    """FrameWorker._track (the node's step after the forward): objects without a detector id get track ids
    that follow them through reordered frames; `tracking` off leaves the objects as the pipeline gave them."""
    from types import SimpleNamespace

    from cleanpose_ros.params import NodeParams
    from cleanpose_ros.pipeline import ObjectResult
    from cleanpose_ros.worker import FrameWorker

    log = SimpleNamespace(**{k: lambda *a, **kw: None for k in ("info", "warning", "error", "debug")})
    node = SimpleNamespace(
        p=NodeParams(),
        pipeline=SimpleNamespace(
            estimator=SimpleNamespace(categories=["bottle", "bowl", "camera", "can", "laptop", "mug"])
        ),
        get_logger=lambda: log,
    )
    worker = FrameWorker(node)
    try:
        header = SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=0), frame_id="camera")
        cam = SimpleNamespace(stream=None, stream_frame=None)  # the per-camera state cameras.py keeps
        seen = {}
        for k in range(6):
            xs = [0.0, 0.2, 0.4] if k % 2 == 0 else [0.4, 0.0, 0.2]
            det_ids = ["", "", ""] if k < 5 else ["", "", "77"]
            msg = SimpleNamespace(detections=[SimpleNamespace(id=i) for i in det_ids])
            det = SimpleNamespace(index=None)
            objs = [
                ObjectResult("mug", 5, 0.9, str(j), j, np.eye(3), np.array([x, 0, 1.0]), SIZE, 50)
                for j, x in enumerate(xs)
            ]
            header.stamp.sec = k
            out = worker._track(cam, msg, det, objs, header)
            assert len(out) == 3
            for o in out:
                x = round(float(o.translation[0]), 1)
                if k < 5:
                    assert seen.setdefault(x, o.instance_id) == o.instance_id
        assert sorted(seen.values()) == ["1", "2", "3"]
        assert out[2].instance_id == "77"  # the detector's id wins (a new track)
        # another output frame (target_frame changed): a new tracker, numbering from 1 again (the detector-id
        # object is taken first and holds number 1 under its label "77")
        header.frame_id = "world"
        assert sorted(o.instance_id for o in worker._track(cam, msg, det, objs, header)) == ["2", "3", "77"]
        node.p.tracking = False
        assert worker._track(cam, msg, det, objs, header) is objs
    finally:
        worker.stop()
