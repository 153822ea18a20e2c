"""The CPU (exact) inference network: `CpuInferenceNet` runs the head on point-major rows, the layout every
CPU form reads (the point features (B, N, C) contiguous: the keypoint detector's attention memory and GAFA's
neighbour table without a transposing copy), with

- DINOv2 as `CpuDinoV2` (forms/cpu.py), PointNet++ as `CpuPointNet2` (forms/cpu_pointnet2.py), GAFA as
  `CpuGAFA` (forms/cpu_gafa.py);
- the keypoint detector (`CpuIAKD`): the four blocks' keys and values of the 1024 point features as one oneDNN
  product on the contiguous rows, read in place (strided views) by the attention;
- every attention core (keypoint detector, front-door encoder, NOCS head) through
  ``scaled_dot_product_attention`` (fp32; the reference's formula up to summation order, and on strided
  q / k / v views no copies);
- every remaining ``nn.Linear`` packed for oneDNN (forms/cpu.py).

`cpu_inference_net` builds it from the exact torch forms (inference/build.py's ``bind_forms``); weights
are a snapshot, the reference modules are untouched.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cleanpose_model.inference.forms.attention import FusedAttnLayer
from cleanpose_model.inference.forms.cpu import CpuDinoV2, pack_linears
from cleanpose_model.inference.forms.cpu_gafa import CpuGAFA, Dense
from cleanpose_model.inference.forms.cpu_pointnet2 import CpuPointNet2
from cleanpose_model.inference.forms.heads import FusedPoseSizeEstimator, folded_layers
from cleanpose_model.inference.forms.net import InferenceNet
from cleanpose_model.net import CleanPoseNet, centre_points
from cleanpose_model.nn.attention import AttnBlock, SelfAttnBlock
from cleanpose_model.nn.keypoints import keypoints_from_queries

# Memory length from which CpuAttnLayer makes keys and values per object and block.
PER_OBJECT_MEMORY = 256


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """`ops.attention.attention_math` through ``scaled_dot_product_attention``: q (B, L, C), k / v (B, S, C)
    (any strides with a contiguous last dim) -> (B, L, C)."""
    b, lq, c = q.shape
    d = c // heads
    qh, kh, vh = (t.unflatten(-1, (heads, d)).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, lq, c)


class _CpuBlock:
    """A published `AttnBlock` / `SelfAttnBlock` with every product packed for oneDNN (norms shared)."""

    def __init__(self, blk: AttnBlock | SelfAttnBlock) -> None:
        self.blk = blk
        ffn = blk.ffn
        self.ffn = (Dense(ffn[0].weight, ffn[0].bias, relu=True), Dense(ffn[3].weight, ffn[3].bias))
        mha = blk.self_attn
        self.heads = mha.num_heads
        self.qkv = Dense(mha.in_proj_weight, mha.in_proj_bias)
        self.out = Dense(mha.out_proj.weight, mha.out_proj.bias)
        if isinstance(blk, AttnBlock):
            cross = blk.multihead_attn
            c = cross.in_proj_weight.shape[1]
            self.cross_q = Dense(cross.in_proj_weight[:c], cross.in_proj_bias[:c])
            self.cross_out = Dense(cross.out_proj.weight, cross.out_proj.bias)

    def _self(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(norm(x).view(-1, c)).view(b, n, 3 * c)
        att = sdpa_attention(qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :], self.heads)
        return self.out.add(att.view(-1, c), x.view(-1, c)).view(b, n, c)

    def _ffn(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        b, n, c = x.shape
        h = self.ffn[0](norm(x).view(-1, c))
        return self.ffn[1].add(h, x.view(-1, c)).view(b, n, c)

    def cross(self, query: torch.Tensor, attend) -> torch.Tensor:
        """`AttnBlock.forward`; ``attend(q)``: the cross-attention core on the memory."""
        blk = self.blk
        b, n, c = query.shape
        query = query.contiguous()
        q = self.cross_q(blk.norm1(query).view(-1, c)).view(b, n, c)
        att = attend(q)
        query = self.cross_out.add(att.view(-1, c), query.view(-1, c)).view(b, n, c)
        return self._ffn(self._self(query, blk.norm2), blk.norm3)

    def self_block(self, query: torch.Tensor) -> torch.Tensor:
        """`SelfAttnBlock.forward`."""
        blk = self.blk
        return self._ffn(self._self(query.contiguous(), blk.norm1), blk.norm2)


class CpuAttnLayer(nn.Module):
    """`FusedAttnLayer` (cross-attention to one memory) on packed products: forward(query, memory).

    A long memory (the keypoint detector's 1024 point features) has its keys and values made per object and
    block just before the attention reads them (a 2 MB (1024, 512) table, still in L2; 1.25x the
    one-product form at 6 objects); a short one (the front-door's queue sample) all at once."""

    def __init__(self, layer: FusedAttnLayer) -> None:
        super().__init__()
        self.attn_blocks = layer.attn_blocks  # shared (norms)
        self.blocks = [_CpuBlock(b) for b in layer.attn_blocks]
        self.kv = Dense(layer.kv_weight, layer.kv_bias)
        c2 = layer.kv_weight.shape[0] // len(self.blocks)
        self.kv_blocks = [
            Dense(layer.kv_weight[i * c2 : (i + 1) * c2], layer.kv_bias[i * c2 : (i + 1) * c2])
            for i in range(len(self.blocks))
        ]

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        bsz, n, c = memory.shape
        heads = self.blocks[0].blk.multihead_attn.num_heads
        if n < PER_OBJECT_MEMORY:
            kv = self.kv(memory.reshape(-1, c)).view(bsz, n, -1)  # (B, S, 2C per block)
            for i, blk in enumerate(self.blocks):
                k, v = kv[..., 2 * c * i : 2 * c * i + c], kv[..., 2 * c * i + c : 2 * c * (i + 1)]
                query = blk.cross(query, lambda q, k=k, v=v: sdpa_attention(q, k, v, heads))
            return query
        memory = memory.contiguous()

        def per_object(q: torch.Tensor, dense: Dense) -> torch.Tensor:
            out = torch.empty_like(q)
            for b in range(bsz):
                kv = dense(memory[b]).unsqueeze(0)  # (1, S, 2C)
                out[b] = sdpa_attention(q[b : b + 1], kv[..., :c], kv[..., c:], heads)[0]
            return out

        for blk, dense in zip(self.blocks, self.kv_blocks, strict=True):
            query = blk.cross(query, lambda q, dense=dense: per_object(q, dense))
        return query


class CpuSelfAttnLayer(nn.Module):
    """`FusedSelfAttnLayer` on packed products."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.attn_blocks = layer.attn_blocks  # shared (norms)
        self.blocks = [_CpuBlock(b) for b in layer.attn_blocks]

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            query = blk.self_block(query)
        return query


class CpuNOCSPredictor(nn.Module):
    """`NOCSPredictor` (folded) on packed products, its last layer restricted to each object's category (the
    other categories' logits are never read): forward(kpt_feat (B, K, C), category (B,)) -> (B, K, 3)."""

    def __init__(self, pred: nn.Module) -> None:
        super().__init__()
        mlp, att = folded_layers(pred.nocs_mlp), folded_layers(pred.atten_mlp)
        if mlp is None or att is None or att[-1][2]:
            raise ValueError("CpuNOCSPredictor needs a NOCS head folded by forms/pointwise.py")
        self.mlp = [Dense(w, b, relu) for w, b, relu in mlp]
        self.att = [Dense(w, b, relu) for w, b, relu in att[:-1]]
        self.self_attn_layer = CpuSelfAttnLayer(pred.self_attn_layer)
        self.bins = pred.bins_num
        w, b, _ = att[-1]
        per_cat = 3 * self.bins
        self.last_w = (
            w.detach().view(-1, per_cat, w.shape[1]).transpose(1, 2).contiguous()
        )  # (cat, C, 3 bins)
        self.last_b = b.detach().view(-1, 1, per_cat).clone()
        i = torch.arange(self.bins, dtype=torch.float32)
        self.centres = (-0.5 + (i + 0.5) / self.bins).unsqueeze(1)

    def forward(self, kpt_feat: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        bsz, n_kpt, c = kpt_feat.shape
        x = kpt_feat.reshape(-1, c)
        for d in self.mlp:
            x = d(x)
        x = self.self_attn_layer(x.view(bsz, n_kpt, -1)).view(bsz * n_kpt, -1)
        for d in self.att:
            x = d(x)
        logits = torch.baddbmm(self.last_b[category], x.view(bsz, n_kpt, -1), self.last_w[category])
        prob = torch.softmax(logits.view(bsz, n_kpt, 3, self.bins), dim=-1)
        return torch.matmul(prob, self.centres).squeeze(-1)


class CpuIAKD(nn.Module):
    """`IAKD` with its `FusedAttnLayer` (shared blocks) on contiguous point rows: forward(feats_t (B, N, C)
    contiguous, pts (B, N, 3)) -> the published outputs."""

    def __init__(self, temperature: float, kpt_query: torch.Tensor, layer: FusedAttnLayer) -> None:
        super().__init__()
        self.temperature = temperature
        self.kpt_query = kpt_query
        self.attn_layer = CpuAttnLayer(layer)

    def forward(self, feats_t: torch.Tensor, pts: torch.Tensor) -> dict[str, torch.Tensor]:
        bsz = feats_t.shape[0]
        query = self.attn_layer(self.kpt_query.unsqueeze(0).expand(bsz, -1, -1), feats_t)
        return keypoints_from_queries(query, feats_t.transpose(1, 2), pts, self.temperature)


class CpuInferenceNet(InferenceNet):
    """`InferenceNet` whose head hands point-major rows to the CPU forms (`cpu_inference_net` builds it)."""

    def head(self, pts, choose, category, queue_feats, tokens, pts_local) -> dict[str, torch.Tensor]:
        pts_c, centroid = centre_points(pts)
        rgb_local = self.rgb_features(tokens[:, 1:], choose.long())
        feats_t = torch.cat([pts_local.transpose(1, 2), rgb_local.transpose(1, 2)], dim=2)  # (B, N, C)
        # the CPU forms read point-major rows: IAKD (B, N, C), GAFA (B * N, C)
        return self.decode(
            feats_t, feats_t.view(-1, feats_t.shape[-1]), pts_c, centroid, category, queue_feats
        )


def cpu_inference_net(inner: CleanPoseNet) -> CpuInferenceNet:
    """The CPU network from ``inner``, the exact torch forms' copy of a `CleanPoseNet` (bind_forms(...).net,
    folded; its modules are fresh where they differ from the reference, shared elsewhere)."""
    iakd = inner.IAKD
    forms: dict[str, nn.Module] = {
        "rgb_extractor": CpuDinoV2(inner.rgb_extractor),
        "pts_extractor": CpuPointNet2(inner.pts_extractor),
        "IAKD": CpuIAKD(iakd.temperature, iakd.kpt_query, iakd.attn_layer),
        "GAFA": CpuGAFA([b.blk for b in inner.GAFA.GAFA_blocks]),
    }
    if inner.cfg.use_front_door:
        fd = inner.FD_Encoder
        forms["FD_Encoder"] = copy_with(
            fd,
            self_attn_layer=CpuSelfAttnLayer(fd.self_attn_layer),
            cross_attn_layer=CpuAttnLayer(fd.cross_attn_layer),
        )
    forms["nocs_predictor"] = CpuNOCSPredictor(inner.nocs_predictor)
    forms["estimator"] = FusedPoseSizeEstimator(inner.estimator)
    clone = copy_with(inner, **forms)
    return CpuInferenceNet(pack_linears(clone))


def copy_with(module: nn.Module, **children: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` with some children replaced (``module`` itself is untouched)."""
    clone = copy.copy(module)
    clone._modules = {**module._modules, **children}
    return clone
