"""Tracking figures against ground truth (cleanpose_tools/track_metrics.py): id switches, merges and
fragments follow the published labels, matching ignores the labels, and the jitter of a static object does
not include the camera's motion."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cleanpose_tools.track_metrics import TrackScore, format_tracking, tracking_figures


def _array(objs):
    """ObjectPoseArray from (class, id, R, t)."""
    from cleanpose_msgs.msg import ObjectPose, ObjectPoseArray

    arr = ObjectPoseArray()
    for cls, iid, R, t in objs:
        o = ObjectPose(class_name=cls, instance_id=str(iid))
        x, y, z, w = Rotation.from_matrix(R).as_quat()
        o.pose.orientation.x, o.pose.orientation.y, o.pose.orientation.z, o.pose.orientation.w = x, y, z, w
        o.pose.position.x, o.pose.position.y, o.pose.position.z = (float(v) for v in t)
        o.size.x = o.size.y = o.size.z = 0.1
        arr.objects.append(o)
    return arr


def _sequence(n=8, noise_deg=0.0, noise_mm=0.0, swap_at=None, seed=0):
    """Two mugs static in the world, the camera turning and moving: (frame, GT, published) triples."""
    rng = np.random.default_rng(seed)
    world = {1: (np.eye(3), np.array([0.1, 0.0, 0.0])), 2: (np.eye(3), np.array([-0.1, 0.0, 0.0]))}
    out = []
    for k in range(n):
        R_cw = Rotation.from_euler("y", 5 * k, degrees=True).as_matrix()
        t_cw = np.array([0.02 * k, 0.0, 0.8])
        gt, pred = [], []
        for gid, (Rw, tw) in world.items():
            R, t = R_cw @ Rw, R_cw @ tw + t_cw
            gt.append(("mug", gid, R, t))
            dR = Rotation.from_rotvec(rng.normal(size=3) * np.radians(noise_deg)).as_matrix()
            label = (3 - gid) if swap_at is not None and k >= swap_at else gid
            pred.append(("mug", f"t{label}", dR @ R, t + rng.normal(size=3) * noise_mm / 1e3))
        out.append((k, _array(gt), _array(pred[::-1])))  # published order differs from GT's
    return out


def test_camera_motion_is_not_jitter():
    t = tracking_figures(_sequence())
    assert (t["tracks"], t["id_switches"], t["merged"], t["fragments"], t["unmatched"]) == (2, 0, 0, 0, 0)
    assert t["jitter_rot_deg"] == pytest.approx(0.0, abs=1e-4)
    assert t["jitter_trans_mm"] == pytest.approx(0.0, abs=1e-6)


def test_noise_is_jitter():
    t = tracking_figures(_sequence(noise_deg=1.0, noise_mm=2.0))
    assert 0.5 < t["jitter_rot_deg"] < 5 and 1.0 < t["jitter_trans_mm"] < 10


def test_label_swap_counts_switches_and_fragments():
    t = tracking_figures(_sequence(swap_at=4))
    assert (t["tracks"], t["id_switches"], t["fragments"], t["merged"]) == (2, 2, 2, 0)
    assert "2 id switches" in format_tracking(t)


def test_one_label_on_two_objects_is_a_merge_and_far_objects_are_not_scored():
    frames = _sequence(n=2)
    # frame 1: both published objects carry label t1; a third object 1 m away from any GT mug
    _, _, pred = frames[1]
    pred.objects[0].instance_id = pred.objects[1].instance_id = "t1"
    extra = _array([("mug", "t9", np.eye(3), np.array([2.0, 0.0, 0.8]))]).objects[0]
    pred.objects.append(extra)
    t = tracking_figures(frames)
    assert t["merged"] == 1 and t["unmatched"] == 1


def test_score_over_sequences_counts_per_sequence():
    s = TrackScore()
    eye = np.eye(3)
    for _ in range(2):
        s.new_sequence()
        s.add(0, [("a", 1, False, eye, np.zeros(3))])
        s.add(1, [("b", 1, False, eye, np.zeros(3))])
    assert s.summary()["tracks"] == 4 and s.switches == 2 and s.fragments == 2
