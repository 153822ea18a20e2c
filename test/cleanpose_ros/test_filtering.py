"""cleanpose_ros/filtering.py: per-track smoothing (none | light | full), the symmetric categories' spin never
taken from a measurement, outliers held until confirmed, a covariance per track."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cleanpose_ros.filtering import (
    UNOBSERVED_VARIANCE,
    FilterConfig,
    PoseFilter,
    PoseStream,
    TrackFilters,
    rotation_error,
    y_alignment,
)

SIZE = np.array([0.08, 0.12, 0.08])
DT = 1.0 / 30.0


def angle_deg(a, b):
    return math.degrees(np.linalg.norm(Rotation.from_matrix(a @ b.T).as_rotvec()))


def noisy_static(n, seed=0, sigma_t=0.01, sigma_deg=5.0, spin=False):
    """n noisy measurements of one static pose; spin=True adds a random rotation about the object's y."""
    g = np.random.default_rng(seed)
    R0 = Rotation.from_euler("xyz", [20, 30, 40], degrees=True).as_matrix()
    t0 = np.array([0.1, -0.05, 0.8])
    out = []
    for _ in range(n):
        R = Rotation.from_rotvec(g.normal(0, math.radians(sigma_deg), 3)).as_matrix() @ R0
        if spin:
            R = R @ Rotation.from_euler("y", g.uniform(0, 360), degrees=True).as_matrix()
        out.append((t0 + g.normal(0, sigma_t, 3), R, SIZE + g.normal(0, 0.005, 3)))
    return out, R0, t0


@pytest.mark.parametrize("mode", ["light", "full"])
def test_static_noise_is_reduced_and_none_passes_through(mode):
    meas, R0, t0 = noisy_static(120)
    f, raw = (
        PoseFilter(FilterConfig(mode=mode), symmetric=False),
        PoseFilter(FilterConfig(mode="none"), False),
    )
    outs = [f.update(t, R, s, k * DT) for k, (t, R, s) in enumerate(meas)]
    passed = [raw.update(t, R, s, k * DT) for k, (t, R, s) in enumerate(meas)]
    assert all(np.array_equal(p.rotation, m[1]) and p.covariance is None for p, m in zip(passed, meas))

    def jitter(poses):
        return np.mean([angle_deg(a.rotation, b.rotation) for a, b in zip(poses[1:], poses[:-1])]), np.mean(
            [np.linalg.norm(a.translation - b.translation) for a, b in zip(poses[1:], poses[:-1])]
        )

    (jr_raw, jt_raw), (jr, jt) = jitter(passed[20:]), jitter(outs[20:])
    assert jr < jr_raw / 2.5 and jt < jt_raw / 2.5
    # and closer to the truth than the raw measurements
    err = np.mean([angle_deg(o.rotation, R0) for o in outs[20:]])
    err_raw = np.mean([angle_deg(p.rotation, R0) for p in passed[20:]])
    assert err < err_raw
    assert np.mean([np.linalg.norm(o.translation - t0) for o in outs[20:]]) < np.mean(
        [np.linalg.norm(p.translation - t0) for p in passed[20:]]
    )
    cov = outs[-1].covariance
    assert cov.shape == (6, 6) and np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)


def test_full_mode_follows_constant_motion_without_lag():
    """A pose moving at constant linear and angular velocity (camera on an arc): after the start the full
    filter's error is a fraction of the per-frame motion; light lags behind by more than a frame's motion."""
    v, w = np.array([0.15, 0.0, 0.05]), np.array([0.0, 0.4, 0.1])  # m/s, rad/s
    truth = [
        (np.array([0, 0, 0.8]) + v * k * DT, Rotation.from_rotvec(w * k * DT).as_matrix()) for k in range(90)
    ]
    step_t, step_r = np.linalg.norm(v) * DT, math.degrees(np.linalg.norm(w) * DT)
    errs = {}
    for mode in ("light", "full"):
        f = PoseFilter(FilterConfig(mode=mode), symmetric=False)
        outs = [f.update(t, R, SIZE, k * DT) for k, (t, R) in enumerate(truth)]
        errs[mode] = (
            np.mean([np.linalg.norm(o.translation - t) for o, (t, _) in zip(outs[45:], truth[45:])]),
            np.mean([angle_deg(o.rotation, R) for o, (_, R) in zip(outs[45:], truth[45:])]),
        )
    assert errs["full"][0] < 0.1 * step_t and errs["full"][1] < 0.1 * step_r
    assert errs["light"][0] > step_t and errs["light"][1] > step_r


@pytest.mark.parametrize("mode", ["light", "full"])
def test_symmetric_spin_is_never_taken_from_measurements(mode):
    """Measurements spin at random about the object's y axis: the published y axis follows them, the spin
    does not move at all (the frame stays still), and the covariance marks the spin as unobserved."""
    meas, R0, _ = noisy_static(60, seed=1, sigma_deg=3.0, spin=True)
    f = PoseFilter(FilterConfig(mode=mode), symmetric=True)
    outs = [f.update(t, R, s, k * DT) for k, (t, R, s) in enumerate(meas)]
    ys = np.array([o.rotation[:, 1] for o in outs[10:]])
    assert np.degrees(np.arccos(np.clip(ys @ R0[:, 1], -1, 1))).max() < 4.0
    # the frame turns only as much as its y axis moved (no spin; the measured spins differ by tens of
    # degrees): second-order terms of composing two tilts are the only slack
    for a, b in itertools.pairwise(outs[10:]):
        dy = math.degrees(math.acos(np.clip(a.rotation[:, 1] @ b.rotation[:, 1], -1, 1)))
        assert angle_deg(a.rotation, b.rotation) <= 1.01 * dy + 1e-3
    y = outs[-1].rotation[:, 1]
    assert y @ outs[-1].covariance[3:, 3:] @ y == pytest.approx(UNOBSERVED_VARIANCE)
    assert not np.allclose([o.rotation for o in outs], [m[1] for m in meas], atol=0.1)


def test_outlier_is_held_until_it_repeats_then_accepted():
    cfg = FilterConfig(mode="full", outlier_frames=3)
    f = PoseFilter(cfg, symmetric=False)
    R = np.eye(3)
    for k in range(10):
        f.update(np.array([0, 0, 0.8]), R, SIZE, k * DT)
    far = np.array([0.3, 0, 0.8])
    a = f.update(far, R, SIZE, 10 * DT)  # one jump: held
    assert a.held and np.linalg.norm(a.translation - [0, 0, 0.8]) < 0.01
    b = f.update(np.array([0, 0, 0.8]), R, SIZE, 11 * DT)  # back: the jump was an outlier
    assert not b.held and f.pending == []
    outs = [f.update(far, R, SIZE, (12 + k) * DT) for k in range(3)]
    assert [o.held for o in outs] == [True, True, False]
    np.testing.assert_allclose(outs[-1].translation, far)
    # a flipped rotation is an outlier too
    flip = Rotation.from_euler("x", 120, degrees=True).as_matrix()
    assert f.update(far, flip, SIZE, 15 * DT).held


@pytest.mark.parametrize("mode", ["light", "full"])
def test_the_same_measurement_again_gives_the_same_pose_bit_for_bit(mode):
    R = Rotation.from_euler("xyz", [10, 70, -30], degrees=True).as_matrix()
    f = PoseFilter(FilterConfig(mode=mode), symmetric=False)
    first = f.update(np.array([0.1, 0.2, 0.9]), R, SIZE, 0.0)
    for k in range(1, 5):
        again = f.update(np.array([0.1, 0.2, 0.9]), R, SIZE, k * DT)
        assert np.array_equal(again.rotation, first.rotation)
        assert np.array_equal(again.translation, first.translation) and np.array_equal(again.size, first.size)


def test_rotation_error_helpers_and_track_filters():
    a, b = np.array([0, 1.0, 0]), np.array([0, 0, 1.0])
    np.testing.assert_allclose(y_alignment(a, b), [math.pi / 2, 0, 0])
    np.testing.assert_allclose(np.linalg.norm(y_alignment(a, -a)), math.pi)
    assert np.allclose(y_alignment(a, a), 0)
    spin = Rotation.from_euler("y", 90, degrees=True).as_matrix()
    assert np.allclose(rotation_error(np.eye(3), spin, symmetric=True), 0)
    assert np.linalg.norm(rotation_error(np.eye(3), spin, symmetric=False)) == pytest.approx(math.pi / 2)
    tf = TrackFilters(FilterConfig(mode="light"), symmetric_categories=frozenset({0, 1, 3}))
    tf.update(1, 3, np.zeros(3), np.eye(3), SIZE)
    tf.update(2, 5, np.zeros(3), np.eye(3), SIZE)
    assert tf.filters[1].symmetric and not tf.filters[2].symmetric
    tf.prune([2])
    assert list(tf.filters) == [2]
    with pytest.raises(ValueError, match="filter mode"):
        FilterConfig(mode="heavy")


def _objects(xs, cat=5, ids=None):
    from cleanpose_ros.pipeline import ObjectResult

    return [
        ObjectResult(
            "mug", cat, 0.9, ids[i] if ids else str(i), i, np.eye(3), np.array([x, 0, 0.8]), SIZE, 100
        )
        for i, x in enumerate(xs)
    ]


def test_pose_stream_sets_track_ids_filters_and_leaves_inputs_untouched():
    from cleanpose_ros.tracking import TrackerConfig

    stream = PoseStream(
        TrackerConfig(max_distance=0.05, confirm_hits=2), FilterConfig(mode="full"), [0, 1, 3]
    )
    first = _objects([0.0, 0.1])
    assert stream.apply(first, [None, None], 0.0) == []  # tentative: not published yet
    g = np.random.default_rng(0)
    ids = None
    for k in range(1, 10):
        objs = _objects([0.0 + g.normal(0, 0.003), 0.1 + g.normal(0, 0.003)])
        order = [1, 0] if k % 2 else [0, 1]
        out = stream.apply([objs[i] for i in order], [None, None], k / 30)
        by_x = {round(float(o.translation[0]), 1): o.instance_id for o in out}
        ids = ids or by_x
        assert by_x == ids and all(o.covariance.shape == (6, 6) for o in out)
    assert sorted(ids.values()) == ["1", "2"]
    assert all(o.covariance is None and o.instance_id == str(i) for i, o in enumerate(first))
    # the detector's ids are published as they are
    (o,) = PoseStream(TrackerConfig(), FilterConfig(mode="none"), []).apply(_objects([0.0]), ["cup-7"], 0.0)
    assert o.instance_id == "cup-7" and o.covariance is None


@pytest.mark.parametrize("mode", ["none", "light", "full"])
def test_update_many_equals_updates_one_by_one(mode):
    """One frame's filters updated together (rotation maps batched: one scipy call per map and round) give
    the same poses and covariances, bit for bit, as the same updates one by one; outliers, held frames,
    symmetric and non-orthogonal (float32) rotations included, and a track id twice in one frame."""
    g = np.random.default_rng(3)
    base = Rotation.random(6, random_state=4).as_matrix()
    cats = [0, 2, 3, 4, 5, 1]  # bottle, can, bowl symmetric
    one = TrackFilters(FilterConfig(mode=mode), symmetric_categories=frozenset({0, 1, 3}))
    many = TrackFilters(FilterConfig(mode=mode), symmetric_categories=frozenset({0, 1, 3}))
    for k in range(40):
        items = []
        for i in range(6):
            t = np.array([0.1 * i, 0.0, 0.8]) + g.normal(0, 0.004, 3) + (0.3 if k % 9 == 4 else 0.0)
            R = Rotation.from_rotvec(g.normal(0, 0.05, 3)).as_matrix() @ base[i]
            if g.random() < 0.1:
                R = Rotation.random(random_state=int(g.integers(1 << 30))).as_matrix()  # rotation outlier
            items.append((i, cats[i], t, R.astype(np.float32).astype(np.float64), SIZE))
        if k % 7 == 3:
            items.append(items[2])  # the same track twice: served after the first, as one by one
        stamp = k * DT if k % 5 else None
        ref = [one.update(*it, stamp=stamp) for it in items]
        got = many.update_many(items, stamp)
        for a, b in zip(ref, got):
            for name in ("translation", "rotation", "size", "covariance", "held"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), (k, name)
