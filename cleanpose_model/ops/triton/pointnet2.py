"""PointNet++ index kernels in Triton (CUDA only): furthest point sampling, multi-radius ball
query, three nearest neighbours.

The torch versions in `ops/pointnet2.py` are the reference; these kernels make the same choices
bit for bit and only exist because the torch versions cost many launches (FPS: ~5 per
iteration, ~960 iterations per PointNet++ pass) or large int64 temporaries (ball query: a
(B, M, N) cumulative count per radius). Floating-point contraction is disabled at launch so
squared distances round exactly like the torch reference (no FMA), which keeps every
discrete decision (FPS pick, ball membership, neighbour order) identical.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from cleanpose_model.ops.pointnet2 import fps_tie_order
from cleanpose_model.ops.triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

ORIGIN_SKIP = tl.constexpr(1e-3) if HAVE_TRITON else 1e-3

if HAVE_TRITON:

    @triton.jit
    def _fps_kernel(xyz_ptr, rank_ptr, idx_ptr, centre_ptr, n, npoint, BLOCK: tl.constexpr):
        """One cloud per program: the sampled indices and the centres' coordinates in one pass."""
        b = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        valid = offs < n
        base = xyz_ptr + b * n * 3
        x = tl.load(base + offs * 3, mask=valid, other=0.0)
        y = tl.load(base + offs * 3 + 1, mask=valid, other=0.0)
        z = tl.load(base + offs * 3 + 2, mask=valid, other=0.0)
        mag = x * x + y * y + z * z
        keep = valid & (mag > ORIGIN_SKIP)
        temp = tl.where(keep, 1e10, -1.0)
        # Low 32 bits of the packed key: tie priority (larger for a point the published kernel prefers
        # among equal distances, see pointnet2.fps_tie_order) above the point's own index, so one max()
        # is argmax-with-the-kernel's-tie-rule and yields the index with no table lookup.
        rank = tl.load(rank_ptr + offs, mask=valid, other=BLOCK - 1)
        low = ((BLOCK - 1 - rank).to(tl.int64) << 16) | offs.to(tl.int64)  # < 2**32 (BLOCK <= 65536)
        old = 0
        ox = tl.load(base)
        oy = tl.load(base + 1)
        oz = tl.load(base + 2)
        out = idx_ptr + b * npoint
        cen = centre_ptr + b * npoint * 3
        tl.store(out, old.to(tl.int64))
        tl.store(cen, ox)
        tl.store(cen + 1, oy)
        tl.store(cen + 2, oz)
        for j in range(1, npoint):
            dx = x - ox
            dy = y - oy
            dz = z - oz
            d = dx * dx + dy * dy + dz * dz
            temp = tl.minimum(temp, d)
            # Distances are >= 0 or exactly -1 (skipped / padding). For such floats the int32 bit
            # pattern orders like the value (-1.0 is a negative int), so it can be the high word.
            key = (temp.to(tl.int32, bitcast=True).to(tl.int64) << 32) | low
            old = (tl.max(key, axis=0) & 65535).to(tl.int32)
            ox = tl.load(base + old * 3)
            oy = tl.load(base + old * 3 + 1)
            oz = tl.load(base + old * 3 + 2)
            tl.store(out + j, old.to(tl.int64))
            tl.store(cen + j * 3, ox)
            tl.store(cen + j * 3 + 1, oy)
            tl.store(cen + j * 3 + 2, oz)

    @triton.jit
    def _load_xyz(ptr, idx, mask):
        """Coordinates of points ``idx`` of a contiguous (N, 3) array (0 where masked)."""
        base = ptr + idx * 3
        x = tl.load(base, mask=mask, other=0.0)
        y = tl.load(base + 1, mask=mask, other=0.0)
        z = tl.load(base + 2, mask=mask, other=0.0)
        return x, y, z

    @triton.jit
    def _sq_dist_tile(ax, ay, az, bx, by, bz):
        """(len a, len b) squared distances, summed x, y, z in that order like the torch reference."""
        dx = ax[:, None] - bx[None, :]
        dy = ay[:, None] - by[None, :]
        dz = az[:, None] - bz[None, :]
        return dx * dx + dy * dy + dz * dz

    @triton.jit
    def _ball_step(within, ok, ids, cnt, first, optr, NS: tl.constexpr):
        """One tile of one radius: append the tile's members in index order after the cnt found so far."""
        inside = ok & within
        rank = cnt[:, None] + tl.cumsum(inside.to(tl.int32), axis=1)  # 1-based slot
        tl.store(optr[:, None] + (rank - 1), ids, mask=inside & (rank <= NS))
        lo = tl.min(tl.where(inside, ids, 2147483647), axis=1)
        first = tl.where((cnt == 0) & (lo < 2147483647), lo, first)
        return cnt + tl.sum(inside.to(tl.int32), axis=1), first

    @triton.jit
    def _ball_query2_kernel(
        new_ptr,
        xyz_ptr,
        out1_ptr,
        out2_ptr,
        m,
        n,
        r2a,
        r2b,
        NS1: tl.constexpr,
        NS2: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        b = tl.program_id(0)
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < m
        cx, cy, cz = _load_xyz(new_ptr + b * m * 3, rows, row_ok)
        cnt1 = tl.zeros([BLOCK_M], dtype=tl.int32)
        cnt2 = tl.zeros([BLOCK_M], dtype=tl.int32)
        first1 = tl.zeros([BLOCK_M], dtype=tl.int64)
        first2 = tl.zeros([BLOCK_M], dtype=tl.int64)
        o1 = out1_ptr + (b * m + rows).to(tl.int64) * NS1
        o2 = out2_ptr + (b * m + rows).to(tl.int64) * NS2
        for start in range(0, n, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < n
            px, py, pz = _load_xyz(xyz_ptr + b * n * 3, cols, col_ok)
            d2 = _sq_dist_tile(cx, cy, cz, px, py, pz)
            ids = cols.to(tl.int64)[None, :] + tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int64)
            ok = col_ok[None, :] & row_ok[:, None]
            cnt1, first1 = _ball_step(d2 < r2a, ok, ids, cnt1, first1, o1, NS1)
            cnt2, first2 = _ball_step(d2 < r2b, ok, ids, cnt2, first2, o2, NS2)
        # Short neighbourhoods are padded with their first member (0 when empty), like the kernel.
        s1 = tl.arange(0, NS1)
        tl.store(
            o1[:, None] + s1[None, :],
            first1[:, None] + tl.zeros([BLOCK_M, NS1], dtype=tl.int64),
            mask=row_ok[:, None] & (s1[None, :] >= cnt1[:, None]),
        )
        s2 = tl.arange(0, NS2)
        tl.store(
            o2[:, None] + s2[None, :],
            first2[:, None] + tl.zeros([BLOCK_M, NS2], dtype=tl.int64),
            mask=row_ok[:, None] & (s2[None, :] >= cnt2[:, None]),
        )

    @triton.jit
    def _three_nn_kernel(
        unk_ptr, known_ptr, dist_ptr, idx_ptr, n, m, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr
    ):
        b = tl.program_id(0)
        rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < n
        ux, uy, uz = _load_xyz(unk_ptr + b * n * 3, rows, row_ok)
        cols = tl.arange(0, BLOCK_M)
        col_ok = cols < m
        kx, ky, kz = _load_xyz(known_ptr + b * m * 3, cols, col_ok)
        d = _sq_dist_tile(ux, uy, uz, kx, ky, kz)
        d = tl.where(col_ok[None, :], d, float("inf"))
        ids = cols[None, :] + tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
        obase = (b * n + rows).to(tl.int64) * 3
        for j in tl.static_range(3):
            best = tl.min(d, axis=1)
            # First index among equal distances: an equal later point never displaces an earlier one.
            at = tl.min(tl.where(d == best[:, None], ids, BLOCK_M), axis=1)
            tl.store(dist_ptr + obase + j, best, mask=row_ok)
            tl.store(idx_ptr + obase + j, at.to(tl.int64), mask=row_ok)
            d = tl.where(ids == at[:, None], float("inf"), d)


# Launch width per cloud size (next power of two), measured on an H100 (the former bench/fps_kernel.py): the
# serial argmax chain is cheapest with 4 warps at 1024 points and with 1 warp at <= 256 points.
FPS_WARPS = {16: 1, 32: 1, 64: 1, 128: 1, 256: 1, 512: 4, 1024: 4, 2048: 8}


def _f32_square(r: float) -> float:
    # radius² rounded in float32 like the kernel (Triton passes Python floats as float32).
    return float(np.float32(r) * np.float32(r))


# The Triton FPS holds a cloud in one program (16-bit point ids in its packed argmax key).
FPS_MAX_POINTS = 65536
# Known points the three-NN kernel keeps in one tile.
THREE_NN_MAX_KNOWN = 4096


@functools.lru_cache(maxsize=16)
def fps_tie_rank(n: int, device: torch.device) -> torch.Tensor:
    """int32 (N,): each point's place in `fps_tie_order` (lower = preferred on ties). A constant per
    (N, device), kept so the Triton FPS reads one small table instead of re-deriving it with ~30
    kernels each call (inside a CUDA graph they would replay every frame)."""
    rank = torch.empty(n, dtype=torch.int32)
    rank[fps_tie_order(n)] = torch.arange(n, dtype=torch.int32)
    return rank.to(device)


def fps_triton(
    xyz: torch.Tensor, tie_rank: torch.Tensor, npoint: int, num_warps: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """xyz (B, N, 3) float32 CUDA, ``tie_rank`` (N,) int32 (`fps_tie_rank`) -> int64 indices
    (B, npoint) and the sampled points (B, npoint, 3). ``num_warps`` overrides the launch width
    (measured as the launch table above says)."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed; use the torch FPS")
    bsz, n, three = xyz.shape
    if three != 3 or xyz.dtype != torch.float32:
        raise ValueError(f"expected (B, N, 3) float32, got {tuple(xyz.shape)} {xyz.dtype}")
    if n > FPS_MAX_POINTS:
        raise ValueError(f"the Triton FPS handles up to {FPS_MAX_POINTS} points, got {n}")
    xyz = xyz.contiguous()
    idx = torch.empty(bsz, npoint, dtype=torch.int64, device=xyz.device)
    centres = torch.empty(bsz, npoint, 3, dtype=torch.float32, device=xyz.device)
    block = max(triton.next_power_of_2(n), 16)
    warps = num_warps or FPS_WARPS.get(block, 8)
    _fps_kernel[(bsz,)](
        xyz, tie_rank, idx, centres, n, npoint, BLOCK=block, num_warps=warps, enable_fp_fusion=False
    )
    return idx, centres


def ball_query2_triton(
    new_xyz: torch.Tensor,
    xyz: torch.Tensor,
    radii: tuple[float, float],
    nsamples: tuple[int, int],
    block_m: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ball queries around the same centres in one pass: new_xyz (B, M, 3), xyz (B, N, 3)
    -> int64 (B, M, nsamples[0]), (B, M, nsamples[1]). Semantics of pointnet2.ball_query.
    ``block_m``: centres per program (a power of two)."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed; use the torch ball query")
    bsz, m, _ = new_xyz.shape
    n = xyz.shape[1]
    for ns in nsamples:
        if ns & (ns - 1):
            raise ValueError(f"the Triton ball query needs power-of-two nsample, got {nsamples}")
    new_xyz, xyz = new_xyz.contiguous().float(), xyz.contiguous().float()
    out1 = torch.empty(bsz, m, nsamples[0], dtype=torch.int64, device=xyz.device)
    out2 = torch.empty(bsz, m, nsamples[1], dtype=torch.int64, device=xyz.device)
    # 8x128 tiles: the fastest on an H100 at every MSG level (1 and 6 objects), and small enough to stay in
    # registers. 32-centre tiles spill (ptxas: a 2.5 KB stack frame per thread); the driver sizes the
    # context's local memory for the largest frame of any launched kernel times every thread the GPU can
    # hold, and never shrinks it: that one launch cost the process ~390 MB (former bench/module_memory.py).
    # 8 centres need 136 bytes, under the 1 KB per-thread stack every context already reserves.
    # (4x1024 tiles with one long cumsum were 2-5x slower.)
    block_n = 128
    grid = (bsz, triton.cdiv(m, block_m))
    _ball_query2_kernel[grid](
        new_xyz,
        xyz,
        out1,
        out2,
        m,
        n,
        _f32_square(radii[0]),
        _f32_square(radii[1]),
        NS1=nsamples[0],
        NS2=nsamples[1],
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=4,
        enable_fp_fusion=False,
    )
    return out1, out2


def three_nn_triton(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """unknown (B, N, 3), known (B, M, 3) -> (squared distances (B, N, 3), int64 indices (B, N, 3));
    semantics of pointnet2.three_nn. The whole known set sits in one tile (M <= 4096)."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed; use the torch three_nn")
    bsz, n, _ = unknown.shape
    m = known.shape[1]
    if m < 3 or m > THREE_NN_MAX_KNOWN:
        raise ValueError(f"three_nn_triton needs 3 <= M <= {THREE_NN_MAX_KNOWN} known points, got {m}")
    unknown, known = unknown.contiguous().float(), known.contiguous().float()
    dist = torch.empty(bsz, n, 3, dtype=torch.float32, device=known.device)
    idx = torch.empty(bsz, n, 3, dtype=torch.int64, device=known.device)
    block_m = max(triton.next_power_of_2(m), 16)
    block_n = max(16, min(64, 8192 // block_m))
    grid = (bsz, triton.cdiv(n, block_n))
    _three_nn_kernel[grid](
        unknown, known, dist, idx, n, m, BLOCK_N=block_n, BLOCK_M=block_m, num_warps=4, enable_fp_fusion=False
    )
    return dist, idx
