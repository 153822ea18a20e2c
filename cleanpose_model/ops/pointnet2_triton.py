"""Furthest point sampling as one Triton kernel per call (CUDA only).

The plain-torch FPS in `pointnet2.py` runs `npoint` dependent iterations, each a handful
of kernel launches: ~960 iterations per PointNet++ pass make launch latency, not arithmetic,
the cost on a GPU. Here one program per batch element keeps the whole cloud in registers
and runs all iterations in a single launch.

Semantics are those of `pointnet2.furthest_point_sample` (and so of the published CUDA
kernel): the caller passes points already permuted into the kernel's tie-priority order,
so "first maximum" is the tie rule; points with squared norm <= 1e-3 keep -1 and are never
chosen; an all-skipped round returns position 0. Floating-point contraction is disabled at
launch so the squared distances round exactly like the torch reference (no FMA), which
makes the two paths pick identical indices.
"""

from __future__ import annotations

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs do not have it.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the installation
    HAVE_TRITON = False

ORIGIN_SKIP = tl.constexpr(1e-3) if HAVE_TRITON else 1e-3

if HAVE_TRITON:

    @triton.jit
    def _fps_kernel(pts_ptr, out_ptr, n, npoint, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        valid = offs < n
        base = pts_ptr + b * 3 * n
        x = tl.load(base + offs, mask=valid, other=0.0)
        y = tl.load(base + n + offs, mask=valid, other=0.0)
        z = tl.load(base + 2 * n + offs, mask=valid, other=0.0)
        mag = x * x + y * y + z * z
        keep = valid & (mag > ORIGIN_SKIP)
        temp = tl.where(keep, 1e10, -1.0)
        old = 0
        tl.store(out_ptr + b * npoint, old)
        for j in range(1, npoint):
            ox = tl.load(base + old)
            oy = tl.load(base + n + old)
            oz = tl.load(base + 2 * n + old)
            dx = x - ox
            dy = y - oy
            dz = z - oz
            d = dx * dx + dy * dy + dz * dz
            temp = tl.minimum(temp, d)
            # argmax with the first-occurrence tie rule, written out so the rule does not
            # depend on tl.argmax's tie behaviour across Triton versions.
            best = tl.max(temp, axis=0)
            old = tl.min(tl.where(temp == best, offs, BLOCK), axis=0)
            tl.store(out_ptr + b * npoint + j, old)


def fps_positions_triton(pts_ordered: torch.Tensor, npoint: int) -> torch.Tensor:
    """pts_ordered (B, 3, N) float32 CUDA, in tie-priority order -> int64 (B, npoint) positions."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed; use the torch FPS")
    bsz, three, n = pts_ordered.shape
    if three != 3 or pts_ordered.dtype != torch.float32:
        raise ValueError(f"expected (B, 3, N) float32, got {tuple(pts_ordered.shape)} {pts_ordered.dtype}")
    pts_ordered = pts_ordered.contiguous()
    out = torch.empty(bsz, npoint, dtype=torch.int32, device=pts_ordered.device)
    block = max(triton.next_power_of_2(n), 16)
    warps = 4 if block <= 1024 else 8
    _fps_kernel[(bsz,)](pts_ordered, out, n, npoint, BLOCK=block, num_warps=warps, enable_fp_fusion=False)
    return out.long()
