"""Per-track temporal filtering of poses (pure python: numpy, no ROS types).

Modes (`FilterConfig.mode`):

- ``none``: the measurement as it is (no covariance);
- ``light``: exponential smoothing with fixed gains (`light_gain`) of translation, size and rotation;
- ``full``: constant-velocity Kalman filters: translation (per axis, state position + velocity, white
  acceleration noise), rotation (the same model on the rotation's error vector: orientation + angular
  velocity), size a random walk. The velocity terms keep the lag of a smoothly moving pose (camera on an arc)
  near zero where plain smoothing lags behind.

Rotation is filtered as a left error in the frame the poses are given in: innovation
e = log(R_meas R_pred^T), update R = exp(k e) R_pred. For the categories symmetric about their y axis (bottle,
bowl, can) only the y axis is observable: the innovation is the smallest rotation taking the predicted y axis
to the measured one (no component about y), so the published spin is never taken from a measurement; it is
carried from the first measurement, which keeps the object's frame still where the raw estimate spins at
random. (The mug's spin is filtered like any other rotation: the node does not know whether its handle is
visible.)

Outliers: an innovation beyond `outlier_translation` or `outlier_rotation_deg` is held (the prediction is
published) until `outlier_frames` consecutive outliers agree with one another; then the filter restarts on
the newest of them (the object was really moved, or the track's start was wrong).

Covariance: 6 x 6 over (x, y, z, rotation about x, y, z) in the poses' frame, from the filters' position
variances; for a symmetric object the variance about its y axis is `UNOBSERVED_VARIANCE` (rad^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

MODES = ("none", "light", "full")
UNOBSERVED_VARIANCE = math.pi**2  # rad^2: a spin the camera cannot see


@dataclass
class FilterConfig:
    mode: str = "full"
    light_gain: float = 0.35  # light: weight of a new measurement
    accel_noise: float = 0.5  # full: m/s^2, translation process noise (white acceleration)
    translation_sigma: float = 0.01  # full: m, measurement noise
    angular_accel_noise: float = 3.0  # full: rad/s^2, rotation process noise
    rotation_sigma_deg: float = 6.0  # full: measurement noise
    size_rate: float = 0.01  # full: m/sqrt(s), size random walk
    size_sigma: float = 0.01  # full: m
    outlier_translation: float = 0.08  # m
    outlier_rotation_deg: float = 45.0
    outlier_frames: int = 3  # consecutive agreeing outliers accepted as the new pose
    default_dt: float = 1.0 / 30.0  # s, when stamps are missing or not increasing

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"filter mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 < self.light_gain <= 1.0:
            raise ValueError(f"light_gain must be in (0, 1], got {self.light_gain}")
        if self.outlier_frames < 1:
            raise ValueError(f"outlier_frames must be >= 1, got {self.outlier_frames}")


@dataclass
class FilteredPose:
    translation: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3)
    size: np.ndarray  # (3,)
    covariance: np.ndarray | None  # (6, 6) or None (mode none)
    held: bool = False  # this frame's measurement was held as an outlier


def y_alignment(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation vector of the smallest rotation taking unit vector a to unit vector b (none about a or b)."""
    # the common case in Python floats (numpy's per-call overhead dominates on 3-vectors)
    a0, a1, a2 = (float(v) for v in a)
    b0, b1, b2 = (float(v) for v in b)
    c0, c1, c2 = a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0
    s = math.sqrt(c0 * c0 + c1 * c1 + c2 * c2)
    angle = math.atan2(s, a0 * b0 + a1 * b1 + a2 * b2)
    if s < 1e-12:
        if angle < 1e-6:
            return np.zeros(3)
        # opposite vectors: any axis perpendicular to a
        perp = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(perp) < 1e-6:
            perp = np.cross(a, [0.0, 1.0, 0.0])
        return perp / np.linalg.norm(perp) * math.pi
    k = angle / s
    return np.array([c0 * k, c1 * k, c2 * k])


def rotation_error(r_pred: np.ndarray, r_meas: np.ndarray, symmetric: bool) -> np.ndarray:
    """Left error vector e with R_meas ~ exp(e) R_pred (observable part only for symmetric objects)."""
    if np.array_equal(r_pred, r_meas):
        # exactly zero, not log(R R^T)'s rounding: the same frame again gives the same pose, bit for bit
        return np.zeros(3)
    if symmetric:
        return y_alignment(r_pred[:, 1], r_meas[:, 1])
    return Rotation.from_matrix(r_meas @ r_pred.T).as_rotvec()


def rotate(rotvec: np.ndarray, r: np.ndarray) -> np.ndarray:
    return Rotation.from_rotvec(rotvec).as_matrix() @ r


# The filters' rotation maps as requests a filter's update yields (`PoseFilter._steps`), so that one frame's
# updates of every track are served by ONE scipy call per map and round (`run_updates`): scipy's per-call
# overhead (~20 us from_rotvec, ~150 us from_matrix with its orthogonality check and SVD) is paid per frame,
# not per track. A stack gives the same numbers as its matrices one by one (test_filtering checks it).
_EXP = "exp"  # (rotvec, R) -> rotate(rotvec, R)
_LOG = "log"  # M -> Rotation.from_matrix(M).as_rotvec()


def _rotation_error_steps(r_pred: np.ndarray, r_meas: np.ndarray, symmetric: bool):
    """rotation_error as a step generator (the log map of a general rotation is yielded as a request)."""
    if np.array_equal(r_pred, r_meas):
        return np.zeros(3)
    if symmetric:
        return y_alignment(r_pred[:, 1], r_meas[:, 1])
    return (yield (_LOG, r_meas @ r_pred.T))


def _serve(kind: str, args: list) -> list:
    """One batched scipy call for the requests `args` of one kind."""
    if kind == _EXP:
        mats = Rotation.from_rotvec(np.stack([a[0] for a in args])).as_matrix()
        return [m @ a[1] for m, a in zip(mats, args)]
    return list(Rotation.from_matrix(np.stack(args)).as_rotvec())


def run_updates(steps: list) -> list:
    """Runs step generators (`PoseFilter._steps`) side by side, each request kind of a round served by one
    batched call; returns their results in order."""
    out: list = [None] * len(steps)
    pending: dict[int, tuple] = {}

    def advance(i: int, value) -> None:
        try:
            pending[i] = steps[i].send(value)
        except StopIteration as done:
            out[i] = done.value

    for i in range(len(steps)):
        advance(i, None)
    while pending:
        requests, pending = pending, {}
        for kind in (_EXP, _LOG):
            ids = [i for i, (k, _) in requests.items() if k == kind]
            if ids:
                for i, value in zip(ids, _serve(kind, [requests[i][1] for i in ids])):
                    advance(i, value)
    return out


class _ConstantVelocity:
    """Kalman filter of d independent axes with one model: state (value, rate), white-acceleration process
    noise `q` (units/s^2), measurement noise `r` (units); the axes share one 2 x 2 covariance, kept as four
    Python floats (numpy's per-call overhead on 2 x 2 matrices was most of the filter's time)."""

    def __init__(self, x0: np.ndarray, q: float, r: float) -> None:
        self.x = np.asarray(x0, np.float64).copy()
        self.v = np.zeros_like(self.x)
        self.q, self.r2 = q, r * r
        # covariance [[p00, p01], [p10, p11]]; velocity unknown at the start
        self.p00, self.p01, self.p10, self.p11 = self.r2, 0.0, 0.0, (10.0 * r) ** 2

    @property
    def P(self) -> np.ndarray:
        return np.array([[self.p00, self.p01], [self.p10, self.p11]])

    def propagate(self, dt: float) -> tuple[float, float, float, float]:
        """F P F^T + Q over dt (F = [[1, dt], [0, 1]], Q the white-acceleration noise), not stored."""
        q2 = self.q**2
        a00, a01 = self.p00 + dt * self.p10, self.p01 + dt * self.p11  # F P
        return (
            a00 + a01 * dt + q2 * (dt**4 / 4),
            a01 + q2 * (dt**3 / 2),
            self.p10 + self.p11 * dt + q2 * (dt**3 / 2),
            self.p11 + q2 * dt**2,
        )

    def predict(self, dt: float) -> np.ndarray:
        """The predicted value after dt (the state is not changed until `correct`)."""
        return self.x + self.v * dt

    def correct(self, dt: float, innovation: np.ndarray) -> np.ndarray:
        """Predict over dt and correct with `innovation` = measurement - prediction; returns the correction
        added to the predicted value (the caller applies it, e.g. on a rotation)."""
        b00, b01, b10, b11 = self.propagate(dt)
        s = b00 + self.r2
        k0, k1 = b00 / s, b10 / s
        self.x = self.x + self.v * dt + k0 * innovation
        self.v = self.v + k1 * innovation
        # (I - k [1, 0]) P
        self.p00, self.p01 = (1.0 - k0) * b00, (1.0 - k0) * b01
        self.p10, self.p11 = b10 - k1 * b00, b11 - k1 * b01
        return k0 * innovation

    def restart(self, x0: np.ndarray) -> None:
        self.__init__(x0, self.q, math.sqrt(self.r2))

    @property
    def variance(self) -> float:
        return self.p00


@dataclass
class PoseFilter:
    """The filter of one track; `update` once per frame the track has a measurement."""

    config: FilterConfig
    symmetric: bool
    translation: np.ndarray | None = None
    rotation: np.ndarray | None = None
    size: np.ndarray | None = None
    stamp: float | None = None
    pending: list = field(default_factory=list)  # held outliers (t, R, size)
    _t: _ConstantVelocity | None = None
    _r: _ConstantVelocity | None = None  # on the rotation error vector; x = accumulated correction
    _s: _ConstantVelocity | None = None

    def _start(self, t, R, size) -> None:
        cfg = self.config
        self.translation, self.rotation, self.size = t.copy(), R.copy(), size.copy()
        self.pending = []
        if cfg.mode == "full":
            self._t = _ConstantVelocity(t, cfg.accel_noise, cfg.translation_sigma)
            self._r = _ConstantVelocity(
                np.zeros(3), cfg.angular_accel_noise, math.radians(cfg.rotation_sigma_deg)
            )
            self._s = _ConstantVelocity(size, cfg.size_rate, cfg.size_sigma)

    def _dt(self, stamp: float | None) -> float:
        if stamp is None or self.stamp is None or stamp <= self.stamp:
            return self.config.default_dt
        return stamp - self.stamp

    def update(self, translation, rotation, size, stamp: float | None = None) -> FilteredPose:
        if self.config.mode == "none":
            t, R, s = (np.asarray(v, np.float64) for v in (translation, rotation, size))
            return FilteredPose(t, R, s, None)
        return run_updates([self._steps(translation, rotation, size, stamp)])[0]

    def _steps(self, translation, rotation, size, stamp: float | None = None):
        """`update` as a generator that yields its rotation maps as requests (run_updates serves them)."""
        cfg = self.config
        t = np.asarray(translation, np.float64)
        R = np.asarray(rotation, np.float64)
        s = np.asarray(size, np.float64)
        if cfg.mode == "none":
            return FilteredPose(t, R, s, None)
        if self.translation is None:
            self._start(t, R, s)
            self.stamp = stamp
            return self._output(False)
        dt = self._dt(stamp)
        self.stamp = stamp if stamp is not None else self.stamp
        t_pred, R_pred = yield from self._prediction(dt)
        e_rot = yield from _rotation_error_steps(R_pred, R, self.symmetric)
        if (
            np.linalg.norm(t - t_pred) > cfg.outlier_translation
            or math.degrees(np.linalg.norm(e_rot)) > cfg.outlier_rotation_deg
        ):
            if (yield from self._accept_outlier(t, R, s)):
                self._start(t, R, s)
                return self._output(False)
            self._coast(dt, t_pred, R_pred)
            return self._output(True)
        self.pending = []
        if cfg.mode == "light":
            g = cfg.light_gain
            self.translation = self.translation + g * (t - self.translation)
            self.size = self.size + g * (s - self.size)
            self.rotation = yield (_EXP, (g * e_rot, self.rotation))
        else:
            self._t.correct(dt, t - t_pred)
            self.translation = self._t.x.copy()
            corr = self._r.correct(dt, e_rot)
            # The rotation state is R itself; the filter's value tracks the applied rotation vector, its rate
            # the angular velocity. Prediction applied the rate over dt, the correction adds k0 * e.
            self.rotation = yield (_EXP, (corr, R_pred))
            self._r.x = np.zeros(3)  # the value is re-based on the new rotation every frame
            if self.symmetric:
                # no angular rate about the symmetry axis: the spin stays the one carried from the start
                y = self.rotation[:, 1]
                self._r.v -= np.dot(self._r.v, y) * y
            self._s.correct(dt, s - self._s.predict(dt))
            self.size = self._s.x.copy()
        return self._output(False)

    def _prediction(self, dt: float):
        """Step generator -> (predicted translation, predicted rotation)."""
        if self.config.mode == "full":
            return self._t.predict(dt), (yield (_EXP, (self._r.v * dt, self.rotation)))
        return self.translation, self.rotation

    def _coast(self, dt: float, t_pred: np.ndarray, R_pred: np.ndarray) -> None:
        """A held frame: move along the predicted motion (full: `_prediction(dt)`'s, made from the same state)
        and grow the uncertainty."""
        if self.config.mode != "full":
            return
        self.translation, self.rotation = t_pred, R_pred
        for f in (self._t, self._r):
            f.p00, f.p01, f.p10, f.p11 = f.propagate(dt)
        self._t.x = self.translation.copy()

    def _accept_outlier(self, t, R, s):
        """Step generator -> True when this outlier is the `outlier_frames`-th in a row and agrees with the
        held ones."""
        cfg = self.config
        if self.pending:
            t0, R0, _ = self.pending[-1]
            far = np.linalg.norm(t - t0) > cfg.outlier_translation
            if not far:
                e = yield from _rotation_error_steps(R0, R, self.symmetric)
                far = math.degrees(np.linalg.norm(e)) > cfg.outlier_rotation_deg
            if far:
                self.pending = []
        self.pending.append((t, R, s))
        return len(self.pending) >= cfg.outlier_frames

    def _output(self, held: bool) -> FilteredPose:
        return FilteredPose(
            self.translation.copy(), self.rotation.copy(), self.size.copy(), self.covariance(), held
        )

    def covariance(self) -> np.ndarray:
        cfg = self.config
        if cfg.mode == "full":
            var_t, var_r = self._t.variance, self._r.variance
        else:
            # light: the steady-state variance of exponential smoothing of white noise, g / (2 - g) sigma^2
            g = cfg.light_gain
            var_t = g / (2 - g) * cfg.translation_sigma**2
            var_r = g / (2 - g) * math.radians(cfg.rotation_sigma_deg) ** 2
        cov = np.zeros((6, 6))
        diag = np.arange(6)
        cov[diag, diag] = (var_t, var_t, var_t, var_r, var_r, var_r)
        if self.symmetric:
            y = self.rotation[:, 1]
            cov[3:, 3:] += (UNOBSERVED_VARIANCE - var_r) * np.outer(y, y)
        return cov


@dataclass
class TrackFilters:
    """One PoseFilter per track id; filters of ended tracks are dropped by `prune`."""

    config: FilterConfig = field(default_factory=FilterConfig)
    symmetric_categories: frozenset[int] = frozenset()
    filters: dict[int, PoseFilter] = field(default_factory=dict)

    def update(self, track_id: int, category: int, translation, rotation, size, stamp=None) -> FilteredPose:
        f = self.filters.get(track_id)
        if f is None:
            f = self.filters[track_id] = PoseFilter(self.config, int(category) in self.symmetric_categories)
        return f.update(translation, rotation, size, stamp)

    def update_many(self, items: list[tuple], stamp=None) -> list[FilteredPose]:
        """`update` for one frame's (track_id, category, translation, rotation, size) items, in order, with
        the rotation maps of all of them batched (run_updates); the same results as `update` one by one."""
        if self.config.mode == "none":  # the measurement as it is: nothing to batch
            return [self.update(*it, stamp=stamp) for it in items]
        out: list = [None] * len(items)
        todo = list(range(len(items)))
        while todo:  # a track id twice in one frame (not from Tracker): its later items in a later wave
            seen, wave, later = set(), [], []
            for i in todo:
                (later if items[i][0] in seen else wave).append(i)
                seen.add(items[i][0])
            steps = []
            for i in wave:
                track_id, category, translation, rotation, size = items[i]
                f = self.filters.get(track_id)
                if f is None:
                    f = self.filters[track_id] = PoseFilter(
                        self.config, int(category) in self.symmetric_categories
                    )
                steps.append(f._steps(translation, rotation, size, stamp))
            for i, fp in zip(wave, run_updates(steps)):
                out[i] = fp
            todo = later
        return out

    def prune(self, live_ids) -> None:
        live = set(live_ids)
        self.filters = {k: v for k, v in self.filters.items() if k in live}


class PoseStream:
    """Tracking + filtering of one camera's object stream, the node's step between the forward and the
    outputs: `apply` takes one frame's objects (anything with class_id, translation, rotation, size;
    `cleanpose_ros.pipeline.ObjectResult` in the node) and returns the confirmed ones with `instance_id` set
    to the track's label and the filtered pose and covariance (`dataclasses.replace`, inputs untouched).
    Objects of tentative tracks are left out; coasting tracks publish nothing."""

    def __init__(self, tracker_config, filter_config: FilterConfig, symmetric_categories) -> None:
        from cleanpose_ros.tracking import Tracker

        self.tracker = Tracker(tracker_config)
        self.filters = TrackFilters(filter_config, frozenset(int(c) for c in symmetric_categories))

    def apply(self, objects: list, detector_ids: list, stamp: float | None) -> list:
        import dataclasses

        from cleanpose_ros.tracking import CONFIRMED, Measurement

        ms = [
            Measurement(o.class_id, o.translation, o.rotation, o.size, d)
            for o, d in zip(objects, detector_ids)
        ]
        tracks = self.tracker.update(ms)
        filtered = self.filters.update_many(
            [(tr.id, tr.category, m.translation, m.rotation, m.size) for m, tr in zip(ms, tracks)], stamp
        )
        out = []
        for o, tr, fp in zip(objects, tracks, filtered):
            if tr.state == CONFIRMED:
                out.append(
                    dataclasses.replace(
                        o,
                        instance_id=tr.label,
                        translation=fp.translation,
                        rotation=fp.rotation,
                        size=fp.size,
                        covariance=fp.covariance,
                    )
                )
        self.filters.prune(t.id for t in self.tracker.live())
        return out
