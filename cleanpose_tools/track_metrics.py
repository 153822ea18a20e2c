"""Identity and smoothness figures of a published pose stream against ground truth (issue 18): shared by the
tracking benchmark (benchmarks/tracking.py), the demo and the replay benchmark (cleanpose-bench).

    TrackScore        frame by frame: each published object's label (its track id), the ground-truth object
                      it shows, its pose in a fixed frame -> tracks, id switches, merges, fragments, jitter
    tracking_figures  the same from (frame, ground-truth ObjectPoseArray, published ObjectPoseArray) triples
                      as the demo and the replay benchmark hold them

Definitions (as the tracking benchmark's table):
- id_switches: a ground-truth object's published label changes between two of its published frames;
- merged: frames where one label covers two ground-truth objects; fragments: labels per object beyond the
  first; tracks: distinct labels published;
- jitter_rot_deg / jitter_trans_mm: mean change of the published pose between consecutive frames in a fixed
  frame (static objects: any change is jitter); rotation as the observable angle (y axis only for bottle,
  bowl, can).

Without the camera's pose, `tracking_figures` takes the fixed frame from the ground truth itself: for a static
object the pose relative to its ground-truth pose, (R_gt^T R, R_gt^T (t - t_gt)), is the world-frame pose up
to one constant rigid transform, so its frame-to-frame change is the world-frame jitter. The published objects
are matched to ground truth by class and position only (never by the label: that is what is being scored).
"""

from __future__ import annotations

import math

import numpy as np

SYMMETRIC_NAMES = frozenset({"bottle", "bowl", "can"})


def observable_angle_deg(Ra: np.ndarray, Rb: np.ndarray, symmetric: bool) -> float:
    # symmetric: the angle between the y axes (the spin about y is unobservable)
    c = float(np.dot(Ra[:, 1], Rb[:, 1])) if symmetric else (float(np.trace(Ra.T @ Rb)) - 1.0) / 2.0
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def to_world(T: np.ndarray, R: np.ndarray, t: np.ndarray):
    return T[:3, :3] @ R, T[:3, :3] @ t + T[:3, 3]


def to_camera(T: np.ndarray, R: np.ndarray, t: np.ndarray):
    Rt = T[:3, :3].T
    return Rt @ R, Rt @ (t - T[:3, 3])


class TrackScore:
    """Accumulates one or more sequences (new_sequence() between them); summary() gives the figures."""

    def __init__(self):
        self.switches = self.merged = self._fragments = 0
        self.tracks = 0
        self.jit_r: list[float] = []
        self.jit_t: list[float] = []
        self.published = 0
        self.new_sequence()

    def new_sequence(self) -> None:
        if hasattr(self, "_labels"):
            self._fragments += sum(len(v) - 1 for v in self._labels.values())
            self.tracks += len(self._seen)
        self._labels: dict = {}  # gt -> labels in the order first published
        self._last: dict = {}  # gt -> (frame index, R, t) of its last published frame
        self._seen: set = set()

    def add(self, k: int, items) -> None:
        """Frame `k`: items (label, gt, symmetric, R, t), the pose in the fixed frame."""
        owners: dict = {}
        for label, gt, sym, R, t in items:
            self.published += 1
            self._seen.add(label)
            owners.setdefault(label, set()).add(gt)
            seen = self._labels.setdefault(gt, [])
            if seen and seen[-1] != label:
                self.switches += 1
            if label not in seen:
                seen.append(label)
            prev = self._last.get(gt)
            if prev is not None and prev[0] == k - 1:
                self.jit_r.append(observable_angle_deg(prev[1], R, sym))
                self.jit_t.append(1e3 * float(np.linalg.norm(t - prev[2])))
            self._last[gt] = (k, R, t)
        self.merged += sum(1 for gts in owners.values() if len(gts) > 1)

    @property
    def fragments(self) -> int:
        return self._fragments + sum(len(v) - 1 for v in self._labels.values())

    def summary(self) -> dict:
        return {
            "tracks": self.tracks + len(self._seen),
            "id_switches": self.switches,
            "merged": self.merged,
            "fragments": self.fragments,
            "jitter_rot_deg": float(np.mean(self.jit_r)) if self.jit_r else None,
            "jitter_trans_mm": float(np.mean(self.jit_t)) if self.jit_t else None,
        }


def match_by_position(preds, gts) -> list[tuple]:
    """(pred, gt) pairs: per class, the globally nearest pairs first (greedy over all distances), each object
    used once. `preds` / `gts`: items with cls and t."""
    cand = sorted(
        (float(np.linalg.norm(p.t - g.t)), i, j)
        for i, p in enumerate(preds)
        for j, g in enumerate(gts)
        if p.cls == g.cls
    )
    used_p, used_g, pairs = set(), set(), []
    for _, i, j in cand:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            pairs.append((preds[i], gts[j]))
    return pairs


class _Obj:
    __slots__ = ("R", "cls", "instance_id", "t")

    def __init__(self, o):
        q = o.pose.orientation
        x, y, z, w = q.x, q.y, q.z, q.w
        n = math.sqrt(x * x + y * y + z * z + w * w) or 1.0
        x, y, z, w = x / n, y / n, z / n, w / n
        self.R = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
        p = o.pose.position
        self.t = np.array([p.x, p.y, p.z])
        self.cls, self.instance_id = o.class_name, o.instance_id


def objects_of(msg) -> list[_Obj]:
    """An ObjectPoseArray's objects: class, instance id, rotation matrix, translation."""
    return [_Obj(o) for o in msg.objects]


def tracking_figures(frame_pairs, max_distance: float = 0.1) -> dict:
    """frame_pairs: (frame index, ground-truth ObjectPoseArray, published ObjectPoseArray or None), frames in
    order. A published object further than `max_distance` m from every ground-truth object of its class is
    not scored (a false detection has no identity to keep). Jitter needs consecutive frame indices."""
    score = TrackScore()
    unmatched = 0
    for k, gt_msg, pred_msg in frame_pairs:
        if pred_msg is None:
            continue
        preds, gts = objects_of(pred_msg), objects_of(gt_msg)
        items = []
        for p, g in match_by_position(preds, gts):
            if float(np.linalg.norm(p.t - g.t)) > max_distance:
                continue
            # the pose relative to the object's ground truth: a fixed frame for a static object
            R = g.R.T @ p.R
            t = g.R.T @ (p.t - g.t)
            items.append((p.instance_id, (g.cls, g.instance_id), g.cls in SYMMETRIC_NAMES, R, t))
        unmatched += len(preds) - len(items)
        score.add(k, items)
    out = score.summary()
    out["unmatched"] = unmatched
    return out


def format_tracking(t: dict | None) -> str:
    """One line for the printed reports."""
    if not t:
        return "Tracking: no ground truth"

    def f(v, nd=2):
        return "–" if v is None else f"{v:.{nd}f}"

    return (
        f"Tracking: {t['tracks']} tracks, {t['id_switches']} id switches, {t['merged']} merged, "
        f"{t['fragments']} fragments vs ground truth; jitter {f(t['jitter_rot_deg'])}° / "
        f"{f(t['jitter_trans_mm'], 1)} mm per frame (pose relative to ground truth, consecutive frames)"
    )
