"""The multi-head attention core in plain torch (the reference of ``ops/triton/attention.py``)."""

from __future__ import annotations

import torch


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The reference: q (B, L, C), k / v (B, S, C) -> (B, L, C), scale 1/sqrt(C / heads)."""
    bsz, lq, c = q.shape
    d = c // heads
    qh = q.reshape(bsz, lq, heads, d).transpose(1, 2)
    kh = k.reshape(bsz, -1, heads, d).transpose(1, 2)
    vh = v.reshape(bsz, -1, heads, d).transpose(1, 2)
    attn = torch.softmax((qh * d**-0.5) @ kh.transpose(2, 3), dim=-1)
    return (attn @ vh).transpose(1, 2).reshape(bsz, lq, c)
