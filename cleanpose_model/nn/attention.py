"""Transformer blocks shared by the keypoint detector, NOCS head and front-door encoder.

Pre-norm on the query only: the key/value memory is used as given (spec model.md §3.4).
Child names (`multihead_attn`, `self_attn`, `norm1..3`, `ffn.0`, `ffn.3`) match the
published state_dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _ffn(d_model: int, dim_ffn: int) -> nn.Sequential:
    # Dropout(0) kept so the second Linear sits at index 3, as in the published keys.
    return nn.Sequential(
        nn.Linear(d_model, dim_ffn), nn.ReLU(inplace=True), nn.Dropout(0.0), nn.Linear(dim_ffn, d_model)
    )


def _mha(d_model: int, num_heads: int) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(d_model, num_heads, dropout=0.0, batch_first=True)


def multihead_attention(mha: nn.MultiheadAttention, query: torch.Tensor, memory: torch.Tensor):
    """``mha(query, memory, memory)`` (batch_first, no mask, no dropout) -> (B, Lq, C), spelled out as
    projections + two batched matmuls + softmax: the published formula (the module call differs only in
    float rounding), and with 4 heads, 96 queries and 12-1024 keys cheaper than the module's fused kernels
    (keypoint detector 0.84 -> 0.56 ms for 1 object on an H100).
    """
    bsz, lq, c = query.shape
    h = mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    if query is memory:
        q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
    else:
        q = F.linear(query, w[:c], b[:c])
        k, v = F.linear(memory, w[c:], b[c:]).chunk(2, dim=-1)
    q = q.reshape(bsz, lq, h, c // h).transpose(1, 2)
    k = k.reshape(bsz, -1, h, c // h).transpose(1, 2)
    v = v.reshape(bsz, -1, h, c // h).transpose(1, 2)
    attn = torch.softmax((q * (c // h) ** -0.5) @ k.transpose(2, 3), dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(bsz, lq, c)
    return mha.out_proj(out)


class AttnBlock(nn.Module):
    """Cross-attention to a memory, then self-attention, then FFN."""

    def __init__(self, d_model: int, num_heads: int, dim_ffn: int) -> None:
        super().__init__()
        self.multihead_attn = _mha(d_model, num_heads)
        self.self_attn = _mha(d_model, num_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.ffn = _ffn(d_model, dim_ffn)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = self.norm1(query)
        query = query + multihead_attention(self.multihead_attn, q, memory)
        q = self.norm2(query)
        query = query + multihead_attention(self.self_attn, q, q)
        return query + self.ffn(self.norm3(query))


class SelfAttnBlock(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dim_ffn: int) -> None:
        super().__init__()
        self.self_attn = _mha(d_model, num_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = _ffn(d_model, dim_ffn)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        q = self.norm1(query)
        query = query + multihead_attention(self.self_attn, q, q)
        return query + self.ffn(self.norm2(query))


class AttnLayer(nn.Module):
    def __init__(self, block_num: int, d_model: int, num_heads: int, dim_ffn: int) -> None:
        super().__init__()
        self.attn_blocks = nn.ModuleList(AttnBlock(d_model, num_heads, dim_ffn) for _ in range(block_num))

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        for blk in self.attn_blocks:
            query = blk(query, memory)
        return query


class SelfAttnLayer(nn.Module):
    def __init__(self, block_num: int, d_model: int, num_heads: int, dim_ffn: int) -> None:
        super().__init__()
        self.attn_blocks = nn.ModuleList(SelfAttnBlock(d_model, num_heads, dim_ffn) for _ in range(block_num))

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        for blk in self.attn_blocks:
            query = blk(query)
        return query
