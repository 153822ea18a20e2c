"""A linear layer with an optional ReLU or exact (erf) GELU on its output, in plain torch: the reference of
``ops/triton/linear.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_math(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None = None
) -> torch.Tensor:
    """x (..., K), weight (N, K), bias (N,) -> (..., N); ``activation``: None, "relu" or "gelu"
    (``nn.GELU()``, the erf form)."""
    y = F.linear(x, weight, bias)
    if activation == "relu":
        return F.relu(y)
    return F.gelu(y) if activation == "gelu" else y
