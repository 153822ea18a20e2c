"""Stable identities for per-frame pose estimates: a multi-object tracker per category (pure python: numpy +
scipy, no ROS types, so the node, the benchmarks and the tests run the same code).

One `Tracker.update(measurements)` per frame:

1. a measurement carrying the detector's own id goes to the live track of its category holding that id
   (the segmenter's tracking is honoured as it is; a new id starts a new track);
2. the rest are associated per category with the remaining live tracks by one Hungarian assignment
   (`scipy.optimize.linear_sum_assignment`) on cost = (1 - IoU of the axis-aligned 3D boxes around the
   oriented boxes) + centre distance / `max_distance`; a pair is allowed only when the centre distance is
   <= `max_distance` and the IoU >= `min_iou` (IoU 0 is allowed when `min_iou` is 0: small objects seen from
   far may not overlap their previous box after a fast camera move);
3. unmatched measurements start `tentative` tracks; a track with `confirm_hits` hits is `confirmed`; a
   confirmed track without a measurement is `coasting` for up to `max_coast` frames, then `ended`; a
   tentative track that misses one frame ends (it was most likely a false detection).

Track ids are integers counted per tracker; `Track.label` is the published id: the detector's id when the
track was made from one, else the track number. The association compares poses in whatever frame they are
given in; the node passes them in `target_frame` when TF gives the camera's motion, which keeps static
objects still while the camera moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

TENTATIVE, CONFIRMED, COASTING, ENDED = "tentative", "confirmed", "coasting", "ended"

# Cost of a forbidden pair: larger than any allowed cost (at most 1 + 1 + epsilon), finite so that the
# assignment always has a solution; such pairs are dropped after the assignment.
_FORBIDDEN = 1e6


@dataclass
class TrackerConfig:
    max_distance: float = 0.10  # m, largest centre distance of a pair
    min_iou: float = 0.0  # smallest 3D box IoU of a pair (0: distance alone gates)
    # hits (frames with a measurement) that confirm a track; 1: published from its first frame, as the node
    # did before tracking (2 or more hide one-frame false detections at the cost of a frame's delay)
    confirm_hits: int = 1
    max_coast: int = 10  # frames a confirmed track survives without a measurement

    def __post_init__(self) -> None:
        if self.max_distance <= 0:
            raise ValueError(f"max_distance must be > 0, got {self.max_distance}")
        if not 0.0 <= self.min_iou <= 1.0:
            raise ValueError(f"min_iou must be in [0, 1], got {self.min_iou}")
        if self.confirm_hits < 1 or self.max_coast < 0:
            raise ValueError(
                f"confirm_hits >= 1 and max_coast >= 0, got {self.confirm_hits}, {self.max_coast}"
            )


@dataclass
class Measurement:
    """One object of one frame as the tracker sees it."""

    category: int
    translation: np.ndarray  # (3,) m
    rotation: np.ndarray  # (3, 3)
    size: np.ndarray  # (3,) m full extents
    detector_id: str | None = None  # the segmenter's own track id, None when it gives none


@dataclass
class Track:
    id: int
    category: int
    detector_id: str | None
    translation: np.ndarray
    rotation: np.ndarray
    size: np.ndarray
    state: str = TENTATIVE
    hits: int = 1
    misses: int = 0  # consecutive frames without a measurement
    age: int = 1  # frames since the track started

    @property
    def label(self) -> str:
        """The published id (instance_id, Detection3D.id, TF frame suffix)."""
        return self.detector_id if self.detector_id is not None else str(self.id)


def aabb(translation: np.ndarray, rotation: np.ndarray, size: np.ndarray) -> np.ndarray:
    """(2, 3) min / max corners of the axis-aligned box around an oriented box."""
    half = 0.5 * np.abs(np.asarray(rotation, np.float64)) @ np.asarray(size, np.float64)
    t = np.asarray(translation, np.float64)
    return np.stack([t - half, t + half])


def iou_3d(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two axis-aligned boxes given as (2, 3) min / max corners."""
    inter = np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]), 0.0, None).prod()
    union = (a[1] - a[0]).prod() + (b[1] - b[0]).prod() - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Tracker:
    config: TrackerConfig = field(default_factory=TrackerConfig)
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1
    ended: int = 0  # tracks ended so far (fragmentation figures)

    def reset(self) -> None:
        self.tracks, self.next_id, self.ended = [], 1, 0

    def live(self) -> list[Track]:
        return [t for t in self.tracks if t.state != ENDED]

    def update(self, measurements: list[Measurement]) -> list[Track]:
        """Associates one frame's measurements; returns, index-aligned with `measurements`, the track each
        one now belongs to (tentative ones included: the caller decides what to publish)."""
        out: list[Track | None] = [None] * len(measurements)
        free = set(range(len(self.tracks)))
        # 1. the detector's own ids
        by_detector = {
            (t.category, t.detector_id): k for k, t in enumerate(self.tracks) if t.detector_id is not None
        }
        rest = []
        for i, m in enumerate(measurements):
            k = by_detector.get((int(m.category), m.detector_id)) if m.detector_id is not None else None
            if k is not None and k in free:
                free.discard(k)
                out[i] = self._hit(self.tracks[k], m)
            elif m.detector_id is not None:
                out[i] = self._start(m)
            else:
                rest.append(i)
        # 2. Hungarian assignment per category, on the rows / columns of its category in one cost table of
        # every remaining measurement against every free track without a detector id (one numpy pass)
        free_cols = [k for k in sorted(free) if self.tracks[k].detector_id is None]
        table = None
        if rest and free_cols:
            table = self._cost([measurements[i] for i in rest], [self.tracks[k] for k in free_cols])
        for cat in sorted({int(measurements[i].category) for i in rest}):
            ri = [r for r, i in enumerate(rest) if int(measurements[i].category) == cat]
            rows = [rest[r] for r in ri]
            ci = [c for c, k in enumerate(free_cols) if self.tracks[k].category == cat]
            cols = [free_cols[c] for c in ci]
            if cols:
                cost = table[np.ix_(ri, ci)]
                for r, c in zip(*linear_sum_assignment(cost)):
                    if cost[r, c] < _FORBIDDEN:
                        free.discard(cols[c])
                        out[rows[r]] = self._hit(self.tracks[cols[c]], measurements[rows[r]])
            for i in rows:
                if out[i] is None:
                    out[i] = self._start(measurements[i])
        # 3. lifetimes of the tracks without a measurement this frame
        for k in free:
            self._miss(self.tracks[k])
        ended = [t for t in self.tracks if t.state == ENDED]
        self.ended += len(ended)
        self.tracks = [t for t in self.tracks if t.state != ENDED]
        return out  # type: ignore[return-value]

    def _cost(self, ms: list[Measurement], ts: list[Track]) -> np.ndarray:
        """(len(ms), len(ts)) costs, all pairs at once (numpy over pairs, the boxes once per object)."""
        cfg = self.config
        box_m = np.stack([aabb(m.translation, m.rotation, m.size) for m in ms])  # (r, 2, 3)
        box_t = np.stack([aabb(t.translation, t.rotation, t.size) for t in ts])  # (c, 2, 3)
        tm = np.stack([np.asarray(m.translation, np.float64) for m in ms])
        tt = np.stack([t.translation for t in ts])
        d = np.linalg.norm(tm[:, None, :] - tt[None, :, :], axis=-1)
        # iou_3d over every pair
        lo = np.maximum(box_m[:, None, 0], box_t[None, :, 0])
        hi = np.minimum(box_m[:, None, 1], box_t[None, :, 1])
        inter = np.clip(hi - lo, 0.0, None).prod(-1)
        vol_m = (box_m[:, 1] - box_m[:, 0]).prod(-1)
        vol_t = (box_t[:, 1] - box_t[:, 0]).prod(-1)
        union = vol_m[:, None] + vol_t[None, :] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / union, 0.0)
        allowed = (d <= cfg.max_distance) & (iou >= cfg.min_iou)
        return np.where(allowed, (1.0 - iou) + d / cfg.max_distance, _FORBIDDEN)

    def _start(self, m: Measurement) -> Track:
        t = Track(
            id=self.next_id,
            category=int(m.category),
            detector_id=m.detector_id,
            translation=np.asarray(m.translation, np.float64).copy(),
            rotation=np.asarray(m.rotation, np.float64).copy(),
            size=np.asarray(m.size, np.float64).copy(),
        )
        if self.config.confirm_hits <= 1:
            t.state = CONFIRMED
        self.next_id += 1
        self.tracks.append(t)
        return t

    def _hit(self, t: Track, m: Measurement) -> Track:
        t.translation = np.asarray(m.translation, np.float64).copy()
        t.rotation = np.asarray(m.rotation, np.float64).copy()
        t.size = np.asarray(m.size, np.float64).copy()
        t.hits += 1
        t.age += 1
        t.misses = 0
        if t.state == COASTING or t.hits >= self.config.confirm_hits:
            t.state = CONFIRMED
        return t

    def _miss(self, t: Track) -> None:
        t.age += 1
        t.misses += 1
        if t.state == TENTATIVE or t.misses > self.config.max_coast:
            t.state = ENDED
        else:
            t.state = COASTING
