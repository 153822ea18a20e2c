"""The bilinear gather of `CleanPoseNet.rgb_features` in plain torch: the patch grid's features sampled at
the crop's chosen pixels (the reference of ``ops/triton/gather.py``)."""

from __future__ import annotations

import numpy as np
import torch


def grid_scale(grid: int, size: int) -> float:
    """Grid cells per crop pixel, rounded to float32 once (a Python scalar: a CUDA graph can capture it)."""
    return float(np.float32(grid / size))


def bilinear_gather_torch(feat: torch.Tensor, choose: torch.Tensor, grid: int, size: int) -> torch.Tensor:
    """The reference: feat (B, C, grid * grid) sampled bilinearly at crop pixels choose (B, N) (row-major
    indices into a size x size crop that the grid covers, half-pixel centres) -> (B, C, N)."""
    scale = grid_scale(grid, size)

    def axis(coord: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = ((coord.to(torch.float32) + 0.5) * scale - 0.5).clamp_min(0.0)
        i0 = src.floor().long().clamp(max=grid - 1)
        lam = (src - i0.to(torch.float32)).clamp(0.0, 1.0)
        i1 = (i0 + 1).clamp(max=grid - 1)
        return i0, i1, lam.to(feat.dtype)

    y0, y1, ly = axis(torch.div(choose, size, rounding_mode="floor"))
    x0, x1, lx = axis(choose % size)

    def tap(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        idx = (yi * grid + xi).unsqueeze(1).expand(-1, feat.shape[1], -1)
        return torch.gather(feat, 2, idx)

    lx, ly = lx.unsqueeze(1), ly.unsqueeze(1)
    top = (1 - lx) * tap(y0, x0) + lx * tap(y0, x1)
    bottom = (1 - lx) * tap(y1, x0) + lx * tap(y1, x1)
    return (1 - ly) * top + ly * bottom
