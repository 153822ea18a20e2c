"""Per-point RGB features (the bilinear gather of `CleanPoseNet.rgb_features`) as one Triton kernel.

The sparse form of `rgb_features` applies the 1x1 conv on DINOv2's 16 x 16 patch grid and then samples
each object's 1024 chosen crop pixels from that grid bilinearly (the grid upsampled to the crop with
half-pixel centres, as `F.interpolate(..., align_corners=False)` does). Spelled out in torch the
sampling is ~35 launches of a few thousand elements each (pixel -> row/column, source coordinates,
floor / clamp, weights, four gathers, three lerps), on the DINOv2 branch's critical path. Here:

- the conv runs as one batched product on the patch tokens where they lie (DINOv2's output with the
  class token in front, read in place), written channels-last; its bias is not part of the product:
- one kernel per (object, channel block, point block) computes each point's two source rows and
  columns and weights, gathers the four taps and interpolates, adding the conv bias at the end (the
  four weights sum to one, so the bias passes through the interpolation unchanged, up to rounding).

`ops/gather.py`'s `bilinear_gather_torch` is the reference (the network's own torch form); the kernel
computes the same float32 operations in the same order with floating-point contraction off, so
given the same feature map it reproduces the reference bit for bit. The product form (no bias in the
product, TF32) differs from the eager conv by float rounding only, so the inference builder uses it in
the fast mode only; the exact mode keeps the torch form.
"""

from __future__ import annotations

import torch

from cleanpose_model.ops.gather import grid_scale
from cleanpose_model.ops.triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _source_axis(coord, scale, GRID: tl.constexpr):
        """Crop pixel coordinate (int) -> (lower grid index, upper grid index, weight of the upper one)."""
        src = (coord.to(tl.float32) + 0.5) * scale - 0.5
        src = tl.maximum(src, 0.0)
        i0 = tl.minimum(tl.floor(src).to(tl.int32), GRID - 1)
        lam = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
        i1 = tl.minimum(i0 + 1, GRID - 1)
        return i0, i1, lam

    @triton.jit
    def _bilinear_gather_kernel(
        feat_ptr,
        bias_ptr,
        choose_ptr,
        out_ptr,
        n_ch,
        n_pts,
        sf_b,
        sf_c,
        sf_p,
        sc_b,
        sc_n,
        so_b,
        so_c,
        so_n,
        scale,
        GRID: tl.constexpr,
        SIZE: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        b = tl.program_id(0)
        pts = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        ch = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        pt_ok = pts < n_pts
        ch_ok = ch < n_ch
        pix = tl.load(choose_ptr + b * sc_b + pts * sc_n, mask=pt_ok, other=0)
        # Crop pixels are non-negative, where truncating and flooring division agree.
        y0, y1, ly = _source_axis(pix // SIZE, scale, GRID)
        x0, x1, lx = _source_axis(pix % SIZE, scale, GRID)
        base = feat_ptr + b * sf_b + ch[:, None] * sf_c
        ok = ch_ok[:, None] & pt_ok[None, :]
        f00 = tl.load(base + (y0 * GRID + x0)[None, :] * sf_p, mask=ok, other=0.0)
        f01 = tl.load(base + (y0 * GRID + x1)[None, :] * sf_p, mask=ok, other=0.0)
        f10 = tl.load(base + (y1 * GRID + x0)[None, :] * sf_p, mask=ok, other=0.0)
        f11 = tl.load(base + (y1 * GRID + x1)[None, :] * sf_p, mask=ok, other=0.0)
        lx = lx[None, :]
        ly = ly[None, :]
        top = (1.0 - lx) * f00 + lx * f01
        bottom = (1.0 - lx) * f10 + lx * f11
        out = (1.0 - ly) * top + ly * bottom
        if HAS_BIAS:
            out = out + tl.load(bias_ptr + ch, mask=ch_ok, other=0.0)[:, None]
        tl.store(out_ptr + b * so_b + ch[:, None] * so_c + pts[None, :] * so_n, out, mask=ok)


def bilinear_gather_triton(
    feat: torch.Tensor,
    choose: torch.Tensor,
    grid: int,
    size: int,
    bias: torch.Tensor | None = None,
    block_c: int = 32,
    block_n: int = 64,
) -> torch.Tensor:
    """`bilinear_gather_torch` (+ ``bias`` (C,) per channel, if given) in one launch. feat (B, C, P) float32
    with any strides (a channels-last product's transposed view is read in place), choose (B, N) integer."""
    bsz, n_ch, n_patch = feat.shape
    if n_patch != grid * grid:
        raise ValueError(f"feat has {n_patch} positions, a {grid} x {grid} grid has {grid * grid}")
    if feat.dtype != torch.float32:
        raise ValueError(f"feat must be float32, got {feat.dtype}")
    n_pts = choose.shape[1]
    out = torch.empty(bsz, n_ch, n_pts, device=feat.device, dtype=torch.float32)
    launch = (bsz, triton.cdiv(n_pts, block_n), triton.cdiv(n_ch, block_c))
    _bilinear_gather_kernel[launch](
        feat,
        bias if bias is not None else feat,  # not read without HAS_BIAS
        choose,
        out,
        n_ch,
        n_pts,
        *feat.stride(),
        *choose.stride(),
        *out.stride(),
        grid_scale(grid, size),
        GRID=grid,
        SIZE=size,
        HAS_BIAS=bias is not None,
        BLOCK_C=block_c,
        BLOCK_N=block_n,
        num_warps=4,
        # No FMA contraction: the same roundings as the torch reference's separate kernels.
        enable_fp_fusion=False,
    )
    return out


def project_and_gather(
    tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, choose: torch.Tensor, size: int
) -> torch.Tensor:
    """Patch tokens (B, P, D) (any batch and row strides, channels contiguous) -> the 1x1 conv (weight
    (C, D) or a Conv1d's (C, D, 1), bias (C,)) sampled bilinearly at the crop pixels choose (B, N):
    (B, C, N). Two launches: the product (channels-last, no bias) and the gather kernel; float32 CUDA
    tensors, nothing to differentiate."""
    bsz, n_patch, _ = tokens.shape
    grid = round(n_patch**0.5)
    weight = weight.flatten(1)
    # bmm reads the tokens where they lie (a row-strided slice after the class token); a 2-D product would
    # copy them first. The weight's batch dim is a stride-0 expansion, not a copy.
    feat = torch.bmm(tokens, weight.t().unsqueeze(0).expand(bsz, -1, -1))  # (B, P, C)
    return bilinear_gather_triton(feat.transpose(1, 2), choose, grid, size, bias)
