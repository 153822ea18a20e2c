"""A pre-norm transformer's residual update + next LayerNorm, and its embedding + first LayerNorm, in plain
torch as autocast computes them (the references of ``ops/triton/layernorm.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def residual_layer_norm_math(
    res: torch.Tensor,
    y: torch.Tensor,
    gamma: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype,
) -> torch.Tensor | None:
    """The reference: ``res += gamma * y`` in place; returns LayerNorm(res) in ``out_dtype`` (None without
    weight)."""
    res.add_(y * gamma)  # y (half) * gamma (fp32) promotes to fp32, as under autocast
    if weight is None:
        return None
    return F.layer_norm(res, res.shape[-1:], weight, bias, eps).to(out_dtype)


def embed_layer_norm_math(
    patches: torch.Tensor,
    base: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: patches (B, P, C) and base (P + 1, C) fp32, whose row 0 is class token + its position
    and the others the patches' positions -> residual stream (B, P + 1, C) fp32 and its LayerNorm in
    ``out_dtype``."""
    b, _, c = patches.shape
    zero = patches.new_zeros(b, 1, c, dtype=torch.float32)
    res = torch.cat([zero, patches.float()], dim=1) + base
    return res, F.layer_norm(res, (c,), weight, bias, eps).to(out_dtype)
