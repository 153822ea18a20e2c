"""Inference forms of the transformer layers: the same algebra in fewer launches.

At robot batch sizes every transformer block of the keypoint detector (4 blocks), front-door
encoder (4 + 2) and NOCS head (2) is a chain of ~30 small kernels that each cost more in launch
latency than in arithmetic. The inference forms below compute the published formula with:

- the attention core (scale, per-head products, softmax) as one kernel (`ops/attention_triton.py`);
- the key/value projections of a stack's shared memory for all of its blocks as one product: the
  memory (IAKD's 1024 point features, the front-door's queue sample) is the same input to every
  block, so the blocks' K/V weights are concatenated once;
- the FFN's first layer with its bias and ReLU in the product's epilogue (`torch._addmm_activation`);
- in the front-door encoder, the two input projections as one product, and (on CUDA) its
  self-attention and cross-attention branches on two streams, which a CUDA graph replays
  concurrently.

They share the published modules' parameters (only the concatenated K/V weight is new) and leave
training untouched: `fuse_for_inference` swaps them into an inference copy of the network.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cleanpose_model.nn.attention import AttnBlock, AttnLayer, SelfAttnBlock, SelfAttnLayer
from cleanpose_model.nn.front_door import FrontDoorEncoder
from cleanpose_model.nn.fused_gafa import FusedGAFA
from cleanpose_model.nn.gafa import GAFA
from cleanpose_model.ops.attention_triton import attention


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool = False) -> torch.Tensor:
    if not relu:
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    if flat.dtype != weight.dtype:  # autocast: the fused epilogue call is not autocast-aware
        return torch.relu(F.linear(x, weight, bias))
    return torch._addmm_activation(bias, flat, weight.t()).view(*x.shape[:-1], weight.shape[0])


def _self_attention(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[-1]
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    out = attention(qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :], mha.num_heads)
    return mha.out_proj(out)


def _ffn(ffn: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    first, last = ffn[0], ffn[3]
    return F.linear(_linear(x, first.weight, first.bias, relu=True), last.weight, last.bias)


def _cross_block(blk: AttnBlock, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    mha = blk.multihead_attn
    c = query.shape[-1]
    q = F.linear(blk.norm1(query), mha.in_proj_weight[:c], mha.in_proj_bias[:c])
    query = query + mha.out_proj(attention(q, k, v, mha.num_heads))
    query = query + _self_attention(blk.self_attn, blk.norm2(query))
    return query + _ffn(blk.ffn, blk.norm3(query))


def _self_block(blk: SelfAttnBlock, query: torch.Tensor) -> torch.Tensor:
    query = query + _self_attention(blk.self_attn, blk.norm1(query))
    return query + _ffn(blk.ffn, blk.norm2(query))


class FusedAttnLayer(nn.Module):
    """`AttnLayer` (cross-attention to one memory, self-attention, FFN per block) for inference."""

    def __init__(self, layer: AttnLayer) -> None:
        super().__init__()
        self.attn_blocks = layer.attn_blocks  # shared
        c = self.attn_blocks[0].norm1.normalized_shape[0]
        w = [b.multihead_attn.in_proj_weight[c:] for b in self.attn_blocks]
        bias = [b.multihead_attn.in_proj_bias[c:] for b in self.attn_blocks]
        self.register_buffer("kv_weight", torch.cat(w).detach().clone(), persistent=False)
        self.register_buffer("kv_bias", torch.cat(bias).detach().clone(), persistent=False)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        c = query.shape[-1]
        kv = F.linear(memory, self.kv_weight, self.kv_bias)  # (B, S, 2C per block)
        for i, blk in enumerate(self.attn_blocks):
            k = kv[..., 2 * c * i : 2 * c * i + c]
            v = kv[..., 2 * c * i + c : 2 * c * (i + 1)]
            query = _cross_block(blk, query, k, v)
        return query


class FusedSelfAttnLayer(nn.Module):
    def __init__(self, layer: SelfAttnLayer) -> None:
        super().__init__()
        self.attn_blocks = layer.attn_blocks  # shared

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        for blk in self.attn_blocks:
            query = _self_block(blk, query)
        return query


class FusedFrontDoor(nn.Module):
    """`FrontDoorEncoder` for inference: one product for both input projections, and the two branches
    on two CUDA streams."""

    def __init__(self, fd: FrontDoorEncoder) -> None:
        super().__init__()
        self.fd = fd
        self.self_attn_layer = FusedSelfAttnLayer(fd.self_attn_layer)
        self.cross_attn_layer = FusedAttnLayer(fd.cross_attn_layer)
        w = torch.cat([fd.mlp_local.weight, fd.mlp_global.weight])
        b = torch.cat([fd.mlp_local.bias, fd.mlp_global.bias])
        self.register_buffer("in_weight", w.detach().clone(), persistent=False)
        self.register_buffer("in_bias", b.detach().clone(), persistent=False)
        self._side: torch.cuda.Stream | None = None

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        if self._side is None or self._side.device != device:
            self._side = torch.cuda.Stream(device)
        return self._side

    def forward(self, local_feat: torch.Tensor, global_feat: torch.Tensor) -> torch.Tensor:
        fd = self.fd
        c = local_feat.shape[-1]
        both = F.linear(local_feat, self.in_weight, self.in_bias)
        loc, glob = both[..., :c], both[..., c:]
        if local_feat.is_cuda:
            main = torch.cuda.current_stream(local_feat.device)
            side = self._side_stream(local_feat.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                s = self.self_attn_layer(loc)
            x = self.cross_attn_layer(glob, global_feat)
            main.wait_stream(side)
            if not torch.cuda.is_current_stream_capturing():
                # s was allocated on the side stream and is read here: keep its block from being reused early.
                s.record_stream(main)
                both.record_stream(side)
        else:
            s = self.self_attn_layer(loc)
            x = self.cross_attn_layer(glob, global_feat)
        fused = fd.ln(s + x)
        w = torch.sigmoid(fd.aug_linear(fused) + fd.ori_linear(local_feat))
        return w * fused + (1.0 - w) * local_feat


def fuse_for_inference(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with its transformer layers and front-door encoder replaced by the inference
    forms above (shallow copies on the way down; every other submodule and parameter is shared)."""
    if isinstance(module, FusedFrontDoor | FusedAttnLayer | FusedSelfAttnLayer | FusedGAFA):
        return module  # already fused
    if isinstance(module, GAFA):
        return FusedGAFA(module)
    if isinstance(module, FrontDoorEncoder):
        return FusedFrontDoor(module)
    if isinstance(module, AttnLayer):
        return FusedAttnLayer(module)
    if isinstance(module, SelfAttnLayer):
        return FusedSelfAttnLayer(module)
    children = dict(module.named_children())
    new = {name: fuse_for_inference(child) for name, child in children.items()}
    if all(new[n] is children[n] for n in children):
        return module
    clone = copy.copy(module)
    clone._modules = dict(new)
    return clone
