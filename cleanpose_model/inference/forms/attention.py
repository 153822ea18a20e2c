"""Inference forms of the transformer layers (nn/attention.py): the same algebra in fewer launches.

At robot batch sizes every transformer block of the keypoint detector (4 blocks), front-door encoder
(4 + 2) and NOCS head (2) is a chain of ~30 small kernels that each cost more in launch latency than in
arithmetic. The forms below compute the published formula with:

- the attention core (scale, per-head products, softmax) as one Triton kernel (`ops/triton/attention.py`)
  when built with a ``precision`` ("tf32x3": fp32 accuracy on tensor cores, the exact mode; "ieee": full
  fp32 products on CUDA cores; "tf32": the fast mode), or
  its torch reference (`ops/attention.py`) when built with None (the CPU);
- the key/value projections of a stack's shared memory for all of its blocks as one product: the memory
  (IAKD's 1024 point features, the front-door's queue sample) is the same input to every block, so the
  blocks' K/V weights are concatenated once;
- the FFN's first layer with its bias and ReLU in the product's epilogue (`torch._addmm_activation`);
- with "tf32x3" (the exact mode on CUDA) every product as one 3xTF32 kernel launch (`ops/triton/linear.py`).

They share the published layers' blocks (only the concatenated K/V weight is new).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cleanpose_model.nn.attention import AttnBlock, AttnLayer, SelfAttnBlock, SelfAttnLayer
from cleanpose_model.ops.attention import attention_math
from cleanpose_model.ops.triton.attention import attention_triton
from cleanpose_model.ops.triton.linear import linear_triton

PRECISIONS = (None, "ieee", "tf32", "tf32x3")


def attention_core(precision: str | None):
    """The attention core ``(q, k, v, heads) -> out`` a form built with ``precision`` runs."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision is None:
        return attention_math
    return lambda q, k, v, heads: attention_triton(q, k, v, heads, precision)


def linear_product(precision: str | None):
    """The linear layer ``(x, weight, bias, relu=False) -> y`` a form built with ``precision`` runs: the
    3xTF32 kernel for "tf32x3" (the exact mode on CUDA: float32 accuracy on tensor cores), else torch's
    product (TF32 in the fast mode's graphs, fp32 on the CPU), the ReLU in its epilogue."""
    if precision == "tf32x3":

        def kernel(x, weight, bias, relu=False):
            return linear_triton(x, weight, bias, activation="relu" if relu else None, precision=precision)

        return kernel

    def torch_linear(x, weight, bias, relu=False):
        if not relu:
            return F.linear(x, weight, bias)
        flat = x.reshape(-1, x.shape[-1])
        return torch._addmm_activation(bias, flat, weight.t()).view(*x.shape[:-1], -1)

    return torch_linear


def _ffn(linear, ffn: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    first, last = ffn[0], ffn[3]
    return linear(linear(x, first.weight, first.bias, relu=True), last.weight, last.bias)


def _self_attention(attend, linear, mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[-1]
    qkv = linear(x, mha.in_proj_weight, mha.in_proj_bias)
    out = attend(qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :], mha.num_heads)
    return linear(out, mha.out_proj.weight, mha.out_proj.bias)


def _cross_block(
    attend, linear, blk: AttnBlock, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    mha = blk.multihead_attn
    c = query.shape[-1]
    q = linear(blk.norm1(query), mha.in_proj_weight[:c], mha.in_proj_bias[:c])
    query = query + linear(attend(q, k, v, mha.num_heads), mha.out_proj.weight, mha.out_proj.bias)
    query = query + _self_attention(attend, linear, blk.self_attn, blk.norm2(query))
    return query + _ffn(linear, blk.ffn, blk.norm3(query))


def _self_block(attend, linear, blk: SelfAttnBlock, query: torch.Tensor) -> torch.Tensor:
    query = query + _self_attention(attend, linear, blk.self_attn, blk.norm1(query))
    return query + _ffn(linear, blk.ffn, blk.norm2(query))


class _FusedLayer(nn.Module):
    """A published layer's blocks (shared, not copied) with the attention core of ``precision``."""

    def __init__(self, layer: AttnLayer | SelfAttnLayer, precision: str | None) -> None:
        super().__init__()
        self.attn_blocks = layer.attn_blocks  # shared
        self.precision = precision
        self._attend = attention_core(precision)
        self._linear = linear_product(precision)


class FusedAttnLayer(_FusedLayer):
    """`AttnLayer` (cross-attention to one memory, self-attention, FFN per block) for inference."""

    def __init__(self, layer: AttnLayer, precision: str | None) -> None:
        super().__init__(layer, precision)
        c = self.attn_blocks[0].norm1.normalized_shape[0]
        w = [b.multihead_attn.in_proj_weight[c:] for b in self.attn_blocks]
        bias = [b.multihead_attn.in_proj_bias[c:] for b in self.attn_blocks]
        self.register_buffer("kv_weight", torch.cat(w).detach().clone(), persistent=False)
        self.register_buffer("kv_bias", torch.cat(bias).detach().clone(), persistent=False)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        c = query.shape[-1]
        kv = self._linear(memory, self.kv_weight, self.kv_bias)  # (B, S, 2C per block)
        for i, blk in enumerate(self.attn_blocks):
            k = kv[..., 2 * c * i : 2 * c * i + c]
            v = kv[..., 2 * c * i + c : 2 * c * (i + 1)]
            query = _cross_block(self._attend, self._linear, blk, query, k, v)
        return query


class FusedSelfAttnLayer(_FusedLayer):
    """`SelfAttnLayer` for inference."""

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        for blk in self.attn_blocks:
            query = _self_block(self._attend, self._linear, blk, query)
        return query
