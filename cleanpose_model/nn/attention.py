"""Transformer blocks shared by the keypoint detector, NOCS head and front-door encoder.

Pre-norm on the query only: the key/value memory is used as given (spec model.md §3.4).
Child names (`multihead_attn`, `self_attn`, `norm1..3`, `ffn.0`, `ffn.3`) match the
published state_dict.
"""

from __future__ import annotations

import torch
from torch import nn


def _ffn(d_model: int, dim_ffn: int) -> nn.Sequential:
    # Dropout(0) kept so the second Linear sits at index 3, as in the published keys.
    return nn.Sequential(
        nn.Linear(d_model, dim_ffn), nn.ReLU(inplace=True), nn.Dropout(0.0), nn.Linear(dim_ffn, d_model)
    )


def _mha(d_model: int, num_heads: int) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(d_model, num_heads, dropout=0.0, batch_first=True)


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
        query = query + self.multihead_attn(q, memory, memory, need_weights=False)[0]
        q = self.norm2(query)
        query = query + self.self_attn(q, q, q, need_weights=False)[0]
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
        query = query + self.self_attn(q, q, q, need_weights=False)[0]
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
