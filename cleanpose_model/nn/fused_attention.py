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
  concurrently;
- in the fast mode (CUDA, TF32; `ops/linear_ln_triton.py`), each sub-layer's output product, residual
  add and the LayerNorm that reads the stream next as one kernel, and each FFN (both products, ReLU,
  residual, next LayerNorm) as one kernel. A stack's first LayerNorm runs once; then a cross block is
  7 launches (q projection, attention, [out + residual + norm2], QKV projection, attention,
  [out + residual + norm3], [FFN + residual + next block's norm1]) instead of 14, a self block 4
  instead of 9. The exact mode keeps the torch form below (full fp32 products);
- in the fast mode, the front-door encoder's end (sum of its branches, LayerNorm, gate, blend) as one
  kernel, and in the two heads around the stacks (`FusedIAKD`, `FusedNOCSPredictor`) the keypoint
  heatmap tail and the NOCS bin expectation as one kernel each (`ops/head_tails_triton.py`), the NOCS
  head's folded MLPs on channels-last rows with their ReLUs in the products' epilogues. They keep the
  published modules' children under the same names and run the published forward elsewhere.

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
from cleanpose_model.nn.fused_heads import FUSES_HEADS, fuse_heads
from cleanpose_model.nn.fused_pointnet2 import fuse_pointnet2
from cleanpose_model.nn.gafa import GAFA
from cleanpose_model.nn.heads import NOCSPredictor
from cleanpose_model.nn.keypoints import IAKD
from cleanpose_model.nn.pointnet2_msg import PointNet2MSG
from cleanpose_model.nn.pointwise import PointwiseLinear
from cleanpose_model.ops import head_tails_triton, linear_ln_triton
from cleanpose_model.ops.attention_triton import attention


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool = False) -> torch.Tensor:
    if not relu:
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    if flat.dtype != weight.dtype:  # autocast: the fused epilogue call is not autocast-aware
        return torch.relu(F.linear(x, weight, bias))
    return torch._addmm_activation(bias, flat, weight.t()).view(*x.shape[:-1], weight.shape[0])


def _self_attention_core(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[-1]
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    return attention(qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :], mha.num_heads)


def _self_attention(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    return mha.out_proj(_self_attention_core(mha, x))


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


# The fast mode's blocks: ``query`` is the residual stream and ``h`` its LayerNorm for the block's first
# sub-layer; each returns the new stream and its LayerNorm by ``next_norm`` (None after a stack's last
# block, where nothing normalises the stream).
Rows = tuple[torch.Tensor, torch.Tensor | None]


# Off by default: on an H100 (bench/head_kernels.py, CUDA-graph replay) the fused residual steps halve a
# stack's launches (57 -> 30 for 4 cross blocks) yet make it slower (IAKD 0.29 -> 0.40 ms at 1 object,
# 0.40 -> 0.53 at 6): each program reads the whole 256x256 (FFN: 2x) weight for its 16 rows, and at 96-576
# rows that costs more than the launches it saves; cuBLAS + the separate LayerNorm win.
ROW_KERNELS = False
# Off by default: the one-pass heatmap kernel takes 95 us where the torch tail takes 56 (1-6 objects, H100).
HEATMAP_KERNEL = False


def _rows_kernel(query: torch.Tensor, blocks: nn.ModuleList) -> bool:
    """Whether a stack runs the fast mode's fused residual steps (`ops/linear_ln_triton.py`)."""
    if not ROW_KERNELS:
        return False
    ffn = blocks[0].ffn
    return linear_ln_triton.use_kernel(query, ffn[0].weight) and linear_ln_triton.supported(
        query.shape[-1], ffn[3].weight, (ffn[0].weight, ffn[0].bias)
    )


def _residual(lin: nn.Linear, x: torch.Tensor, stream: torch.Tensor, norm: nn.LayerNorm | None) -> Rows:
    args = None if norm is None else (norm.weight, norm.bias, norm.eps)
    return linear_ln_triton.residual_linear_ln_triton(x, lin.weight, lin.bias, stream, args)


def _ffn_residual(
    ffn: nn.Sequential, h: torch.Tensor, stream: torch.Tensor, norm: nn.LayerNorm | None
) -> Rows:
    first, last = ffn[0], ffn[3]
    args = None if norm is None else (norm.weight, norm.bias, norm.eps)
    return linear_ln_triton.residual_linear_ln_triton(
        h, last.weight, last.bias, stream, args, (first.weight, first.bias)
    )


def _cross_block_rows(
    blk: AttnBlock, query: torch.Tensor, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor, next_norm
) -> Rows:
    mha = blk.multihead_attn
    c = query.shape[-1]
    # A batch-broadcast stream (IAKD's learned queries) is projected once; the attention reads it expanded.
    q = F.linear(h[:1] if h.stride(0) == 0 else h, mha.in_proj_weight[:c], mha.in_proj_bias[:c])
    q = q.expand(h.shape[0], -1, -1)
    query, h = _residual(mha.out_proj, attention(q, k, v, mha.num_heads), query, blk.norm2)
    query, h = _residual(blk.self_attn.out_proj, _self_attention_core(blk.self_attn, h), query, blk.norm3)
    return _ffn_residual(blk.ffn, h, query, next_norm)


def _self_block_rows(blk: SelfAttnBlock, query: torch.Tensor, h: torch.Tensor, next_norm) -> Rows:
    query, h = _residual(blk.self_attn.out_proj, _self_attention_core(blk.self_attn, h), query, blk.norm2)
    return _ffn_residual(blk.ffn, h, query, next_norm)


def _next_norm(blocks: nn.ModuleList, i: int) -> nn.LayerNorm | None:
    return blocks[i + 1].norm1 if i + 1 < len(blocks) else None


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
        blocks = self.attn_blocks
        rows = _rows_kernel(query, blocks)
        h = None
        if rows:  # the first block's norm; a batch-broadcast query is normalised once
            h = (
                blocks[0].norm1(query[:1]).expand_as(query)
                if query.stride(0) == 0
                else blocks[0].norm1(query)
            )
        for i, blk in enumerate(blocks):
            k = kv[..., 2 * c * i : 2 * c * i + c]
            v = kv[..., 2 * c * i + c : 2 * c * (i + 1)]
            if rows:
                query, h = _cross_block_rows(blk, query, h, k, v, _next_norm(blocks, i))
            else:
                query = _cross_block(blk, query, k, v)
        return query


class FusedSelfAttnLayer(nn.Module):
    def __init__(self, layer: SelfAttnLayer) -> None:
        super().__init__()
        self.attn_blocks = layer.attn_blocks  # shared

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        blocks = self.attn_blocks
        if not _rows_kernel(query, blocks):
            for blk in blocks:
                query = _self_block(blk, query)
            return query
        return self.forward_normed(query, blocks[0].norm1(query))

    def forward_normed(self, query: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The fast mode's blocks, given the stream's first LayerNorm ``h`` (where the caller's last
        step already computed it); only where `_rows_kernel` holds."""
        blocks = self.attn_blocks
        for i, blk in enumerate(blocks):
            query, h = _self_block_rows(blk, query, h, _next_norm(blocks, i))
        return query


class FusedFrontDoor(nn.Module):
    """`FrontDoorEncoder` for inference: one product for both input projections, the two branches on two
    CUDA streams, and in the fast mode the gated blend at the end as one kernel."""

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
        if head_tails_triton.use_kernel(s, x, local_feat) and head_tails_triton.gate_supported(
            s, x, local_feat
        ):
            return head_tails_triton.front_door_gate_triton(
                s, x, local_feat, fd.ln, fd.aug_linear, fd.ori_linear
            )
        fused = fd.ln(s + x)
        w = torch.sigmoid(fd.aug_linear(fused) + fd.ori_linear(local_feat))
        return w * fused + (1.0 - w) * local_feat


class FusedIAKD(nn.Module):
    """`IAKD` for inference: its transformer in the inference form (as `attn_layer`, shared), and in the
    fast mode the heatmap tail (cosine similarity, softmax over the points, weighted means) as one kernel
    (`ops/head_tails_triton.py`). Elsewhere the published forward runs on the shared children."""

    def __init__(self, iakd: IAKD) -> None:
        super().__init__()
        self.kpt_query = iakd.kpt_query
        self.attn_layer = iakd.attn_layer
        self.temperature = iakd.temperature

    def forward(self, feats: torch.Tensor, pts: torch.Tensor) -> dict[str, torch.Tensor]:
        if not (
            HEATMAP_KERNEL
            and head_tails_triton.use_kernel(feats, pts)
            and head_tails_triton.heatmap_supported(feats, pts)
        ):
            return IAKD.forward(self, feats, pts)
        bsz = feats.shape[0]
        query = self.attn_layer(self.kpt_query.unsqueeze(0).expand(bsz, -1, -1), feats.transpose(1, 2))
        heatmap, kpt_3d, kpt_feature = head_tails_triton.keypoint_heatmap_triton(
            query, feats, pts, self.temperature
        )
        return {"kpt_query": query, "heatmap": heatmap, "kpt_3d": kpt_3d, "kpt_feature": kpt_feature}


def _folded_layers(seq: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, bool]] | None:
    """(weight, bias, relu) per layer of a 1x1 MLP folded by nn/pointwise.py, or None if it is not."""
    layers = []
    for m in seq.children():
        if isinstance(m, PointwiseLinear):
            layers.append((m.weight, m.bias, m.relu))
        elif not isinstance(m, nn.Identity):
            return None
    return layers or None


def _product(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, relu: bool) -> torch.Tensor:
    """relu?(x W^T + b) on rows, bias and ReLU in the product's epilogue."""
    return torch._addmm_activation(b, x, w.t()) if relu else torch.addmm(b, x, w.t())


class FusedNOCSPredictor(nn.Module):
    """`NOCSPredictor` for inference. In the fast mode, on channels-last rows: the folded MLPs with their
    ReLUs in the products' epilogues, the MLP's last layer with the self-attention stack's first
    LayerNorm (`ops/linear_ln_triton.py`), the stack's fused blocks, and the last layer restricted to the
    object's category with the softmax over the bins and their expectation as one kernel
    (`ops/head_tails_triton.py`). Elsewhere the published forward runs on the shared children."""

    bins_center = NOCSPredictor.bins_center

    def __init__(self, pred: NOCSPredictor) -> None:
        super().__init__()
        self.nocs_mlp = pred.nocs_mlp
        self.self_attn_layer = pred.self_attn_layer
        self.atten_mlp = pred.atten_mlp
        self.cat_num, self.bins_num, self._bins = pred.cat_num, pred.bins_num, pred._bins

    def _fast_layers(self, kpt_feat: torch.Tensor):
        mlp, att = _folded_layers(self.nocs_mlp), _folded_layers(self.atten_mlp)
        layer = self.self_attn_layer
        if (
            mlp is None
            or att is None
            or mlp[-1][2]
            or att[-1][2]
            or not isinstance(layer, FusedSelfAttnLayer)
        ):
            return None
        ok = (
            head_tails_triton.use_kernel(kpt_feat)
            and linear_ln_triton.supported(mlp[-1][0].shape[1], mlp[-1][0])
            and head_tails_triton.nocs_supported(att[-1][0], self.cat_num, self.bins_num)
        )
        return (mlp, att) if ok else None

    def forward(self, kpt_feat: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        layers = self._fast_layers(kpt_feat)
        if layers is None:
            return NOCSPredictor.forward(self, kpt_feat, category)
        mlp, att = layers
        bsz, n_kpt, c = kpt_feat.shape
        x = kpt_feat.reshape(-1, c)
        for w, b, relu in mlp[:-1]:
            x = _product(x, w, b, relu)
        w, b, _ = mlp[-1]
        if _rows_kernel(kpt_feat, self.self_attn_layer.attn_blocks):
            norm = self.self_attn_layer.attn_blocks[0].norm1
            query, h = linear_ln_triton.residual_linear_ln_triton(
                x, w, b, None, (norm.weight, norm.bias, norm.eps)
            )
            query = self.self_attn_layer.forward_normed(query.view(bsz, n_kpt, -1), h.view(bsz, n_kpt, -1))
        else:
            query = self.self_attn_layer(_product(x, w, b, False).view(bsz, n_kpt, -1))
        x = query.view(bsz * n_kpt, -1)
        for w, b, relu in att[:-1]:
            x = _product(x, w, b, relu)
        w, b, _ = att[-1]
        return head_tails_triton.nocs_expectation_triton(x, w, b, category, self.bins_num).view(bsz, n_kpt, 3)


def fuse_for_inference(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with its transformer layers and front-door encoder replaced by the inference
    forms above (shallow copies on the way down; every other submodule and parameter is shared)."""
    if isinstance(
        module,
        FusedFrontDoor | FusedAttnLayer | FusedSelfAttnLayer | FusedGAFA | FusedIAKD | FusedNOCSPredictor,
    ):
        return module  # already fused
    if isinstance(module, IAKD):
        return FusedIAKD(_fuse_children(module))
    if isinstance(module, NOCSPredictor):
        return FusedNOCSPredictor(_fuse_children(module))
    if isinstance(module, GAFA):
        return FusedGAFA(module)
    if isinstance(module, FrontDoorEncoder):
        return FusedFrontDoor(module)
    if isinstance(module, AttnLayer):
        return FusedAttnLayer(module)
    if isinstance(module, SelfAttnLayer):
        return FusedSelfAttnLayer(module)
    if isinstance(module, PointNet2MSG):
        return fuse_pointnet2(module)  # nn/fused_pointnet2.py (itself when already fused)
    if isinstance(module, FUSES_HEADS):
        module = fuse_heads(module)  # nn/fused_heads.py; its children are fused below
    return _fuse_children(module)


def _fuse_children(module: nn.Module) -> nn.Module:
    children = dict(module.named_children())
    new = {name: fuse_for_inference(child) for name, child in children.items()}
    if all(new[n] is children[n] for n in children):
        return module
    clone = copy.copy(module)
    clone._modules = dict(new)
    return clone
