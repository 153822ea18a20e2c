"""Geometric-aware feature aggregator (GAFA), spec model.md §3.5."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _delta_mlp(d_model: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(3, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, d_model),
        nn.ReLU(inplace=True),
        nn.Linear(d_model, d_model),
    )


class GAFABlock(nn.Module):
    def __init__(self, d_model: int, k: int, delta_hidden: int = 64, tau: float = 5.0) -> None:
        super().__init__()
        self.k = k
        self.tau = tau
        self.fc_in = nn.Sequential(
            nn.Conv1d(d_model, d_model, 1),
            nn.BatchNorm1d(d_model),
            nn.ReLU(inplace=True),
            nn.Conv1d(d_model, d_model, 1),
        )
        self.fc_delta = _delta_mlp(d_model, delta_hidden)
        self.fc_delta_1 = nn.Sequential(
            nn.Linear(2 * d_model, d_model), nn.ReLU(inplace=True), nn.Linear(d_model, d_model)
        )
        self.fc_delta_l = _delta_mlp(d_model, delta_hidden)
        self.fc_delta_abs = _delta_mlp(d_model, delta_hidden)
        self.fuse_mlp = nn.Sequential(
            nn.Conv1d(3 * d_model, d_model, 1),
            nn.BatchNorm1d(d_model),
            nn.ReLU(inplace=True),
            nn.Conv1d(d_model, d_model, 1),
            nn.BatchNorm1d(d_model),
            nn.ReLU(inplace=True),
        )
        self.out_mlp = nn.Sequential(
            nn.Linear(d_model, d_model), nn.ReLU(inplace=True), nn.Linear(d_model, d_model)
        )

    def _neighbour_proj(
        self, pts_feat: torch.Tensor, flat_idx: torch.Tensor, kpt_3d: torch.Tensor, knn_xyz: torch.Tensor
    ) -> torch.Tensor:
        """First layer of fc_delta_1 on cat([neighbour feature, fc_delta(offset)]), computed as the
        published layer but in a cheaper order (same algebra, float rounding aside):
        - the feature half of the weight is applied to every point once and the result gathered,
          instead of to each of the K*k gathered copies;
        - fc_delta's last layer is linear, so it is folded into the position half of the weight
          (one k*K-row matmul fewer)."""
        bsz, n_kpt, _ = kpt_3d.shape
        c = pts_feat.shape[-1]
        lin = self.fc_delta_1[0]
        w_feat, w_pos = lin.weight[:, :c], lin.weight[:, c:]
        proj = pts_feat @ w_feat.t()  # (B, N, C)
        gathered = torch.gather(proj, 1, flat_idx.unsqueeze(-1).expand(-1, -1, c)).view(bsz, n_kpt, self.k, c)
        last = self.fc_delta[4]
        w_fold = w_pos @ last.weight
        b_fold = w_pos @ last.bias + lin.bias
        hidden = self.fc_delta[:4](kpt_3d.unsqueeze(2) - knn_xyz)
        return gathered + F.linear(hidden, w_fold, b_fold)

    def forward(
        self, kpt_feat: torch.Tensor, kpt_3d: torch.Tensor, pts_feat: torch.Tensor, pts: torch.Tensor
    ) -> torch.Tensor:
        """kpt_feat (B,K,C), kpt_3d (B,K,3) (already detached), pts_feat (B,N,C), pts (B,N,3)."""
        bsz, n_kpt = kpt_feat.shape[:2]
        # Only the neighbour *set* matters below (everything is symmetric over it), so topk's
        # order is irrelevant; distances as in torch.cdist-free Euclidean norm.
        dist = torch.linalg.vector_norm(kpt_3d.unsqueeze(2) - pts.unsqueeze(1), dim=-1)
        knn_idx = dist.topk(self.k, dim=2, largest=False).indices  # (B, K, k)
        flat = knn_idx.reshape(bsz, -1)
        knn_xyz = torch.gather(pts, 1, flat.unsqueeze(-1).expand(-1, -1, 3)).view(bsz, n_kpt, self.k, 3)

        pre = kpt_feat
        q = self.fc_in(kpt_feat.transpose(1, 2)).transpose(1, 2)
        kf = self.fc_delta_1[2](torch.relu(self._neighbour_proj(pts_feat, flat, kpt_3d, knn_xyz)))
        sim = F.cosine_similarity(q.unsqueeze(2).expand_as(kf), kf, dim=-1)
        attn = torch.softmax(sim / self.tau, dim=-1)
        kpt_feat = torch.relu((attn.unsqueeze(-1) * kf).sum(dim=2) + pre)

        rel = kpt_3d.unsqueeze(2) - kpt_3d.unsqueeze(1)  # (B, K, K, 3), i minus j
        # mean_j of the last (linear) layer equals that layer applied to mean_j of its input: this
        # runs the widest matmul on K rows instead of K*K.
        rel_hidden = self.fc_delta_l[:4](rel).mean(dim=2)
        pos = self.fc_delta_abs(kpt_3d) + self.fc_delta_l[4](rel_hidden)
        return self.fuse_position(kpt_feat, pos)

    def fuse_position(self, kpt_feat: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The block's second half: keypoint features, their mean and the position encoding through fuse_mlp
        (residual), then out_mlp (residual)."""
        pre = kpt_feat
        glob = kpt_feat.mean(dim=1, keepdim=True).expand(-1, kpt_feat.shape[1], -1)
        fused = self.fuse_mlp(torch.cat([kpt_feat, glob, pos], dim=-1).transpose(1, 2)).transpose(1, 2)
        kpt_feat = torch.relu(fused + pre)
        return torch.relu(kpt_feat + self.out_mlp(kpt_feat))


class GAFA(nn.Module):
    def __init__(self, d_model: int, ks: list[int], delta_hidden: int = 64, tau: float = 5.0) -> None:
        super().__init__()
        self.GAFA_blocks = nn.ModuleList(GAFABlock(d_model, k, delta_hidden, tau) for k in ks)

    def forward(
        self, kpt_feat: torch.Tensor, kpt_3d: torch.Tensor, pts_feat: torch.Tensor, pts: torch.Tensor
    ) -> torch.Tensor:
        for blk in self.GAFA_blocks:
            kpt_feat = blk(kpt_feat, kpt_3d, pts_feat, pts)
        return kpt_feat
