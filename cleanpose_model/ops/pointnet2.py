"""PointNet++ operations in plain torch, reproducing the published CUDA kernels.

The published network was trained with the `pointnet2._ext` CUDA kernels, whose
choices (which point FPS starts from, which points it may never pick, how ties are
broken, strict vs inclusive radius test, how short neighbourhoods are padded) change
the sampled centroids and therefore the features. Every function here follows those
kernels bit for bit where float32 arithmetic allows (see spec model.md §3.3.1).

Distances are always formed as ``dx*dx + dy*dy + dz*dz`` evaluated left to right in
float32, like the kernels, rather than via ``cdist`` or matmul expansions, because a
different rounding can flip an FPS choice or a ball-membership test.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Kernel constants (sampling_gpu.cu / ball_query_gpu.cu / interpolate_gpu.cu).
_FPS_MAX_THREADS = 512
_FPS_ORIGIN_SKIP = 1e-3


def fps_thread_count(n: int) -> int:
    """Thread-block size the CUDA launcher picks for n points (``opt_n_threads``)."""
    pow_2 = int(math.log(float(n)) / math.log(2.0)) if n > 0 else 0
    return max(min(1 << pow_2, _FPS_MAX_THREADS), 1)


def _bit_reverse(values: torch.Tensor, bits: int) -> torch.Tensor:
    out = torch.zeros_like(values)
    for b in range(bits):
        out |= ((values >> b) & 1) << (bits - 1 - b)
    return out


def fps_tie_order(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Permutation of point indices in the order in which the CUDA FPS kernel prefers ties.

    Thread t scans k = t, t+T, ... and keeps the first strict maximum, so within a thread the
    smallest k wins. The shared-memory tree reduction merges slot i with slot i+s for
    s = T/2, ..., 1 and keeps slot i on equal values, so across threads the winner is the
    tied thread with the smallest *bit-reversed* thread id (lowest bit decides first).
    Sorting points by (bitrev(k mod T), k div T) and taking the first maximum reproduces both.
    """
    threads = fps_thread_count(n)
    bits = threads.bit_length() - 1
    k = torch.arange(n, dtype=torch.int64, device=device)
    per_thread = (n + threads - 1) // threads
    key = _bit_reverse(k % threads, bits) * per_thread + k // threads
    return torch.argsort(key)


def sample_centres(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """xyz (B, N, 3) -> the furthest-point-sampled points (B, npoint, 3)."""
    return gather_points(xyz, furthest_point_sample(xyz, npoint))


def furthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """Farthest point sampling with the CUDA kernel's semantics.

    xyz: (B, N, 3) float32. Returns int64 (B, npoint) indices into N.
    Starts at index 0; points with squared norm <= 1e-3 are never updated nor selected;
    ties follow `fps_tie_order`; if every candidate is skipped, index 0 is returned again.
    Loops over npoint, vectorised over batch and points.
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"xyz must be (B, N, 3), got {tuple(xyz.shape)}")
    bsz, n, _ = xyz.shape
    order = fps_tie_order(n, xyz.device)
    # (B, 3, N) in tie-priority order, so argmax's first-occurrence rule is the kernel's rule.
    pts = xyz.index_select(1, order).transpose(1, 2).contiguous()
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    mag = x * x + y * y + z * z
    # Skipped points hold -1 forever: min(-1, d>=0) stays -1, and -1 matches the kernel's
    # per-thread initial best, so an all-skipped round returns position 0 (= index 0).
    temp = torch.where(
        mag <= _FPS_ORIGIN_SKIP,
        torch.full_like(mag, -1.0),
        torch.full_like(mag, 1e10),
    )
    rows = torch.arange(bsz, device=xyz.device)
    old = torch.zeros(bsz, dtype=torch.int64, device=xyz.device)
    picks = [old]
    for _ in range(1, npoint):
        last = pts[rows, :, old].unsqueeze(-1)  # (B, 3, 1)
        diff = pts - last
        sq = diff * diff
        d = sq[:, 0] + sq[:, 1] + sq[:, 2]
        temp = torch.minimum(temp, d)
        old = torch.argmax(temp, dim=1)
        picks.append(old)
    pos = torch.stack(picks, dim=1)
    return order[pos]


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points (B, N, C), idx (B, M) -> (B, M, C)."""
    return torch.gather(points, 1, idx.unsqueeze(-1).expand(-1, -1, points.shape[-1]))


def gather_operation(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """features (B, C, N), idx (B, M) -> (B, C, M)."""
    return torch.gather(features, 2, idx.unsqueeze(1).expand(-1, features.shape[1], -1))


def group_points(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """features (B, C, N), idx (B, M, S) -> (B, C, M, S)."""
    bsz, m, s = idx.shape
    flat = idx.reshape(bsz, 1, m * s).expand(-1, features.shape[1], -1)
    return torch.gather(features, 2, flat).view(bsz, features.shape[1], m, s)


def pairwise_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (B, M, 3), b (B, N, 3) -> (B, M, N) squared distances, kernel evaluation order."""
    diff = a.unsqueeze(2) - b.unsqueeze(1)  # (B, M, N, 3)
    sq = diff * diff
    return sq[..., 0] + sq[..., 1] + sq[..., 2]


def ball_query_from_sq_dist(d2: torch.Tensor, radius: float, nsample: int) -> torch.Tensor:
    """Ball query on precomputed squared distances d2 (B, M, N) -> int64 (B, M, nsample).

    Keeps the lowest-index points with d2 < radius² (strict; radius² rounded in float32 as
    in the kernel), in ascending index order, padded with the first one; a centroid with
    no neighbour gets all zeros.
    """
    bsz, m, n = d2.shape
    # radius² rounded in float32 like the kernel; a Python scalar keeps this capturable in a CUDA graph.
    radius2 = float(np.float32(radius) * np.float32(radius))
    inside = d2 < radius2
    rank = torch.cumsum(inside, dim=-1, dtype=torch.int32)
    keep = inside & (rank <= nsample)
    # Accepted points go to slot rank-1; everything else lands in a spare slot that is dropped.
    slot = torch.where(keep, rank.long() - 1, torch.full_like(rank, nsample, dtype=torch.int64))
    buf = torch.zeros(bsz, m, nsample + 1, dtype=torch.int64, device=d2.device)
    src = torch.arange(n, device=d2.device).expand(bsz, m, n)
    buf.scatter_(2, slot, src)
    count = rank[..., -1:].clamp(max=nsample).long()
    slots = torch.arange(nsample, device=d2.device)
    return torch.where(slots < count, buf[..., :nsample], buf[..., :1])


def ball_query(radius: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
    """xyz (B, N, 3), new_xyz (B, M, 3) -> int64 (B, M, nsample)."""
    return ball_query_from_sq_dist(pairwise_sq_dist(new_xyz, xyz), radius, nsample)


def ball_query_multi(
    new_xyz: torch.Tensor, xyz: torch.Tensor, radii: list[float], nsamples: list[int]
) -> list[torch.Tensor]:
    """One ball query per (radius, nsample) around the same centres -> list of int64 (B, M, nsample);
    one distance matrix serves every radius."""
    d2 = pairwise_sq_dist(new_xyz, xyz)
    return [ball_query_from_sq_dist(d2, r, ns) for r, ns in zip(radii, nsamples, strict=True)]


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Three nearest known points of each unknown point.

    unknown (B, N, 3), known (B, M, 3) -> (squared distances (B, N, 3), int64 indices (B, N, 3)),
    ascending; an equal later candidate never displaces an earlier one (strict updates),
    which is what repeated first-occurrence argmin gives.
    """
    d = pairwise_sq_dist(unknown, known)
    dists, idxs = [], []
    for j in range(3):
        i = torch.argmin(d, dim=-1, keepdim=True)
        dists.append(torch.gather(d, -1, i))
        idxs.append(i)
        if j < 2:
            d = d.scatter(-1, i, float("inf"))
    return torch.cat(dists, dim=-1), torch.cat(idxs, dim=-1)


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """features (B, C, M), idx (B, N, 3), weight (B, N, 3) -> (B, C, N) weighted sum."""
    grouped = group_points(features, idx)  # (B, C, N, 3)
    w = weight.unsqueeze(1)
    return grouped[..., 0] * w[..., 0] + grouped[..., 1] * w[..., 1] + grouped[..., 2] * w[..., 2]


def inverse_distance_weights(sq_dist: torch.Tensor) -> torch.Tensor:
    """Weights of the FP interpolation: 1/(d + 1e-8), normalised, with d = sqrt(squared distance)."""
    recip = 1.0 / (torch.sqrt(sq_dist) + 1e-8)
    return recip / recip.sum(dim=-1, keepdim=True)
