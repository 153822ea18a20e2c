"""A linear layer with an optional exact (erf) GELU on its output, in plain torch: the reference of
``ops/triton/linear.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_math(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False):
    """x (M, K), weight (N, K), bias (N,) -> (M, N); ``gelu``: ``nn.GELU()`` (the erf form) applied."""
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y
