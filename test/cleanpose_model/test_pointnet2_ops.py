"""PointNet++ ops against literal, slow re-statements of the published CUDA kernels.

The references below follow the kernels line by line (per-thread scans, shared-memory tree
reduction, per-point loops) in float32 numpy, so they check the vectorised torch versions
including tie handling, the near-origin skip and the short-neighbourhood padding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cleanpose_model.ops import pointnet2 as ops

f32 = np.float32


def _sq(a, b):
    # Same left-to-right float32 evaluation as the kernels.
    dx, dy, dz = f32(a[0] - b[0]), f32(a[1] - b[1]), f32(a[2] - b[2])
    return f32(f32(f32(dx * dx) + f32(dy * dy)) + f32(dz * dz))


def ref_fps(xyz: np.ndarray, m: int) -> np.ndarray:
    """furthest_point_sampling_kernel, one block per cloud, emulated thread by thread."""
    n = xyz.shape[0]
    block = max(min(1 << int(math.log(float(n)) / math.log(2.0)), 512), 1)
    temp = np.full(n, 1e10, dtype=f32)
    idxs = np.zeros(m, dtype=np.int64)
    old = 0
    for j in range(1, m):
        dists = np.zeros(block, dtype=f32)
        dists_i = np.zeros(block, dtype=np.int64)
        x1 = xyz[old]
        for tid in range(block):
            besti, best = 0, f32(-1.0)
            for k in range(tid, n, block):
                p = xyz[k]
                mag = f32(f32(f32(p[0] * p[0]) + f32(p[1] * p[1])) + f32(p[2] * p[2]))
                if mag <= 1e-3:
                    continue
                d2 = min(_sq(p, x1), temp[k])
                temp[k] = d2
                if d2 > best:
                    besti, best = k, d2
            dists[tid], dists_i[tid] = best, besti
        s = block // 2
        while s >= 1:
            for tid in range(s):
                v1, v2 = dists[tid], dists[tid + s]
                i1, i2 = dists_i[tid], dists_i[tid + s]
                dists[tid] = max(v1, v2)
                dists_i[tid] = i2 if v2 > v1 else i1
            s //= 2
        old = int(dists_i[0])
        idxs[j] = old
    return idxs


def ref_ball_query(radius: float, nsample: int, xyz: np.ndarray, new_xyz: np.ndarray) -> np.ndarray:
    r2 = f32(f32(radius) * f32(radius))
    out = np.zeros((new_xyz.shape[0], nsample), dtype=np.int64)
    for j, c in enumerate(new_xyz):
        cnt = 0
        for k in range(xyz.shape[0]):
            if cnt >= nsample:
                break
            if _sq(c, xyz[k]) < r2:
                if cnt == 0:
                    out[j, :] = k
                out[j, cnt] = k
                cnt += 1
    return out


def ref_three_nn(unknown: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist = np.zeros((unknown.shape[0], 3), dtype=f32)
    idx = np.zeros((unknown.shape[0], 3), dtype=np.int64)
    for i, u in enumerate(unknown):
        best = [1e40, 1e40, 1e40]
        besti = [0, 0, 0]
        for k in range(known.shape[0]):
            d = float(_sq(u, known[k]))
            if d < best[0]:
                best = [d, best[0], best[1]]
                besti = [k, besti[0], besti[1]]
            elif d < best[1]:
                best = [best[0], d, best[1]]
                besti = [besti[0], k, besti[1]]
            elif d < best[2]:
                best[2], besti[2] = d, k
        dist[i], idx[i] = best, besti
    return dist, idx


def _cloud(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "random":
        return rng.normal(scale=0.1, size=(n, 3)).astype(f32)
    if kind == "grid":
        # Integer-grid points: many exactly equal distances, so tie rules decide.
        return (rng.integers(-3, 4, size=(n, 3)) * 0.25).astype(f32)
    if kind == "near_origin":
        pts = rng.normal(scale=0.1, size=(n, 3)).astype(f32)
        pts[rng.random(n) < 0.3] *= f32(0.05)  # within sqrt(1e-3) of the origin: never sampled
        pts[0] = 0.0  # index 0 is still the first pick
        return pts
    if kind == "duplicates":
        base = rng.normal(scale=0.1, size=(n // 3 + 1, 3)).astype(f32)
        return base[rng.integers(0, base.shape[0], size=n)]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["random", "grid", "near_origin", "duplicates"])
@pytest.mark.parametrize("n,m", [(37, 12), (64, 20), (100, 30), (600, 12)])
def test_fps_matches_kernel(kind: str, n: int, m: int) -> None:
    rng = np.random.default_rng(n * 7 + len(kind))
    clouds = np.stack([_cloud(rng, n, kind) for _ in range(2)])
    got = ops.furthest_point_sample(torch.from_numpy(clouds), m).numpy()
    for b in range(2):
        np.testing.assert_array_equal(got[b], ref_fps(clouds[b], m))


def test_fps_tie_rule_is_bit_reversed_thread_order() -> None:
    # 8 points, 8 threads: points 1..7 all tie at distance 1 from point 0. The tree reduction
    # keeps the lower slot on equal values at strides 4, 2, 1, so the winner is the tied thread
    # with the smallest bit-reversed id: thread 4 (100 -> 001), not thread 1 (001 -> 100).
    pts = np.zeros((8, 3), dtype=f32)
    pts[0] = [0.0, 0.0, 1.0]
    pts[1:] = [0.0, 0.0, 2.0]
    got = ops.furthest_point_sample(torch.from_numpy(pts[None]), 2).numpy()[0]
    assert got.tolist() == ref_fps(pts, 2).tolist() == [0, 4]


def test_fps_all_skipped_returns_zero() -> None:
    pts = np.full((1, 16, 3), 0.001, dtype=f32)
    got = ops.furthest_point_sample(torch.from_numpy(pts), 5)
    assert got.tolist() == [[0, 0, 0, 0, 0]]


def test_fps_thread_count() -> None:
    counts = [ops.fps_thread_count(n) for n in (1, 37, 64, 100, 512, 1024, 4096)]
    assert counts == [1, 32, 64, 64, 512, 512, 512]


@pytest.mark.parametrize("kind", ["random", "grid", "duplicates"])
def test_ball_query_matches_kernel(kind: str) -> None:
    rng = np.random.default_rng(3)
    xyz = np.stack([_cloud(rng, 90, kind) for _ in range(2)])
    new_xyz = xyz[:, :17].copy()
    new_xyz[:, 16] = 10.0  # a centroid with no neighbour: all zeros
    for radius, nsample in [(0.05, 4), (0.25, 8), (0.5, 16), (0.2500001, 32)]:
        got = ops.ball_query(radius, nsample, torch.from_numpy(xyz), torch.from_numpy(new_xyz)).numpy()
        for b in range(2):
            np.testing.assert_array_equal(got[b], ref_ball_query(radius, nsample, xyz[b], new_xyz[b]))


def test_ball_query_is_strict() -> None:
    xyz = np.array([[[0, 0, 0], [0.5, 0, 0], [0.25, 0, 0]]], dtype=f32)
    got = ops.ball_query(0.5, 3, torch.from_numpy(xyz), torch.from_numpy(xyz[:, :1])).tolist()
    assert got == [[[0, 2, 0]]]  # the point at exactly r is out; padded with the first


@pytest.mark.parametrize("kind", ["random", "grid", "duplicates"])
def test_three_nn_matches_kernel(kind: str) -> None:
    rng = np.random.default_rng(5)
    unknown = np.stack([_cloud(rng, 40, kind) for _ in range(2)])
    known = np.stack([_cloud(rng, 25, kind) for _ in range(2)])
    dist, idx = ops.three_nn(torch.from_numpy(unknown), torch.from_numpy(known))
    for b in range(2):
        rd, ri = ref_three_nn(unknown[b], known[b])
        np.testing.assert_array_equal(idx[b].numpy(), ri)
        np.testing.assert_array_equal(dist[b].numpy(), rd)


def test_three_interpolate_and_grouping() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 11, generator=gen)
    idx = torch.randint(0, 11, (2, 7, 3), generator=gen)
    w = torch.rand(2, 7, 3, generator=gen)
    got = ops.three_interpolate(feats, idx, w)
    ref = torch.zeros(2, 5, 7)
    for b in range(2):
        for i in range(7):
            for k in range(3):
                ref[b, :, i] += w[b, i, k] * feats[b, :, idx[b, i, k]]
    torch.testing.assert_close(got, ref)
    grouped = ops.group_points(feats, idx)
    assert grouped.shape == (2, 5, 7, 3)
    assert torch.equal(grouped[1, :, 4, 2], feats[1, :, idx[1, 4, 2]])
    gathered = ops.gather_operation(feats, idx[..., 0])
    assert torch.equal(gathered[0, :, 3], feats[0, :, idx[0, 3, 0]])


def test_inverse_distance_weights() -> None:
    d2 = torch.tensor([[[1.0, 4.0, 0.0]]])
    w = ops.inverse_distance_weights(d2)
    recip = torch.tensor([1.0 / (1 + 1e-8), 1.0 / (2 + 1e-8), 1.0 / 1e-8])
    torch.testing.assert_close(w[0, 0], recip / recip.sum())
