"""Inference form of the GAFA blocks (nn/gafa.py): the weight-only products done once, each keypoint's
neighbours picked by one Triton kernel (``knn_kernel``: `ops/triton/knn.py`, CUDA) and, when built with a
``precision`` (the fast mode: "tf32"), the neighbour branch and the keypoint-pair MLP as one Triton kernel
each (`ops/triton/gafa.py`); with None their torch references (`ops/gafa.py`) run.

Shares the published block's modules; the folded / transposed weight copies are buffers of this
inference module (a few hundred KB).
"""

from __future__ import annotations

import torch
from torch import nn

from cleanpose_model.inference.forms.attention import linear_product
from cleanpose_model.nn.gafa import GAFA, GAFABlock
from cleanpose_model.ops import gafa as ref
from cleanpose_model.ops.knn import knn_indices
from cleanpose_model.ops.triton import gafa as kernels
from cleanpose_model.ops.triton.knn import MAX_POINTS, knn_indices_triton


def _t(w: torch.Tensor) -> torch.Tensor:
    return w.detach().t().contiguous()


class FusedGAFABlock(nn.Module):
    def __init__(self, blk: GAFABlock, knn_kernel: bool, precision: str | None) -> None:
        super().__init__()
        self.blk = blk
        self.k, self.tau = blk.k, blk.tau
        self.knn_kernel = knn_kernel
        # The neighbour kernel takes power-of-two neighbour counts >= 16 (the published 16 and 32).
        self.precision = precision
        self._linear = linear_product(precision)
        self.neighbour_precision = precision if kernels.neighbours_supported(self.k) else None
        lin, last = blk.fc_delta_1[0], blk.fc_delta[4]
        c = last.weight.shape[0]
        w_pos = lin.weight.detach()[:, c:].double()
        # fc_delta's last layer is linear: folded into the position half of fc_delta_1's first layer (in
        # float64 once, instead of two float32 products every call as the published order does).
        w_fold = (w_pos @ last.weight.detach().double()).float()
        b_fold = (w_pos @ last.bias.detach().double() + lin.bias.detach().double()).float()
        self.register_buffer("w_feat", lin.weight.detach()[:, :c].contiguous(), persistent=False)
        hidden, mid = blk.fc_delta[0], blk.fc_delta[2]
        out = blk.fc_delta_1[2]
        for name, t in (
            ("n_w1", hidden.weight.detach()),
            ("n_b1", hidden.bias.detach()),
            ("n_w2t", _t(mid.weight)),
            ("n_b2", mid.bias.detach()),
            ("n_wft", w_fold.t().contiguous()),
            ("n_bf", b_fold),
            ("n_w3t", _t(out.weight)),
            ("n_b3", out.bias.detach()),
            ("l_w1", blk.fc_delta_l[0].weight.detach()),
            ("l_b1", blk.fc_delta_l[0].bias.detach()),
            ("l_w2t", _t(blk.fc_delta_l[2].weight)),
            ("l_b2", blk.fc_delta_l[2].bias.detach()),
        ):
            self.register_buffer(name, t, persistent=False)

    def _neighbour_weights(self) -> tuple[torch.Tensor, ...]:
        return (self.n_w1, self.n_b1, self.n_w2t, self.n_b2, self.n_wft, self.n_bf, self.n_w3t, self.n_b3)

    def forward(
        self, kpt_feat: torch.Tensor, kpt_3d: torch.Tensor, pts_feat: torch.Tensor, pts: torch.Tensor
    ) -> torch.Tensor:
        blk = self.blk
        bsz, n_kpt = kpt_feat.shape[:2]
        dist = torch.linalg.vector_norm(kpt_3d.unsqueeze(2) - pts.unsqueeze(1), dim=-1)
        if self.knn_kernel and dist.shape[-1] <= MAX_POINTS:
            knn_idx = knn_indices_triton(dist, self.k)  # (B, K, k): topk's neighbour set
        else:
            knn_idx = knn_indices(dist, self.k)
        flat = knn_idx.reshape(bsz, -1)
        knn_xyz = torch.gather(pts, 1, flat.unsqueeze(-1).expand(-1, -1, 3)).view(bsz, n_kpt, self.k, 3)
        q = blk.fc_in(kpt_feat.transpose(1, 2)).transpose(1, 2)
        # The feature half of fc_delta_1's first layer on every point once, gathered per neighbour inside.
        proj = self._linear(pts_feat, self.w_feat, None)
        args = (kpt_3d, knn_xyz, knn_idx, proj, q, kpt_feat, self._neighbour_weights(), self.tau)
        if self.neighbour_precision is None:
            kpt_feat = ref.neighbour_aggregate_torch(*args)
        else:
            kpt_feat = kernels.neighbour_aggregate_triton(*args, self.neighbour_precision)
        pair = (kpt_3d, self.l_w1, self.l_b1, self.l_w2t, self.l_b2)
        if self.precision is None:
            rel_hidden = ref.pairwise_mlp_mean_torch(*pair)
        else:
            rel_hidden = kernels.pairwise_mlp_mean_triton(*pair, self.precision)
        pos = blk.fc_delta_abs(kpt_3d) + blk.fc_delta_l[4](rel_hidden)
        return blk.fuse_position(kpt_feat, pos)


class FusedGAFA(nn.Module):
    def __init__(self, gafa: GAFA, knn_kernel: bool = False, precision: str | None = None) -> None:
        super().__init__()
        self.GAFA_blocks = nn.ModuleList(FusedGAFABlock(b, knn_kernel, precision) for b in gafa.GAFA_blocks)

    def forward(self, kpt_feat, kpt_3d, pts_feat, pts):
        for blk in self.GAFA_blocks:
            kpt_feat = blk(kpt_feat, kpt_3d, pts_feat, pts)
        return kpt_feat
