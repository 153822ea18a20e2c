"""ULIP PointNet++ SSG point encoder (``Pointnet2_Ssg``, the Pointnet_Pointnet2_pytorch style used by ULIP),
used
only to initialise the confounder queue (training.md §5.1). Parameter names follow the ULIP checkpoint
(``sa{1,2,3}.mlp_convs.i`` / ``mlp_bns.i``, ``fc1``, ``bn1``, ``fc2``, ``bn2``). Output: 256-d, non-negative.

Sampling differs from the CUDA PointNet++ of the main network on purpose (it is what ULIP uses): FPS starts
at a
random index with no near-origin skip; the ball query keeps d² ≤ r² (inclusive), the first ``nsample`` by
index,
padded with the first.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cleanpose_model.ops.pointnet2 import gather_points, pairwise_sq_dist


def fps_random_start(
    xyz: torch.Tensor, npoint: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    bsz, n, _ = xyz.shape
    start = torch.randint(0, n, (bsz,), generator=generator, device="cpu").to(xyz.device)
    dist = torch.full((bsz, n), 1e10, dtype=xyz.dtype, device=xyz.device)
    rows = torch.arange(bsz, device=xyz.device)
    far = start
    picks = []
    for _ in range(npoint):
        picks.append(far)
        c = xyz[rows, far][:, None, :]
        dist = torch.minimum(dist, ((xyz - c) ** 2).sum(-1))
        far = dist.argmax(dim=1)
    return torch.stack(picks, 1)


def ball_query_inclusive(radius: float, nsample: int, xyz, new_xyz) -> torch.Tensor:
    n = xyz.shape[1]
    d2 = pairwise_sq_dist(new_xyz, xyz)
    idx = torch.arange(n, device=xyz.device).expand_as(d2).clone()
    idx[d2 > radius**2] = n
    idx = idx.sort(dim=-1).values[:, :, :nsample]
    first = idx[:, :, :1].expand_as(idx)
    return torch.where(idx == n, first, idx)


class SetAbstraction(nn.Module):
    def __init__(self, npoint, radius, nsample, in_channel, mlp, group_all):
        super().__init__()
        self.npoint, self.radius, self.nsample, self.group_all = npoint, radius, nsample, group_all
        self.mlp_convs = nn.ModuleList()
        self.mlp_bns = nn.ModuleList()
        last = in_channel
        for out in mlp:
            self.mlp_convs.append(nn.Conv2d(last, out, 1))
            self.mlp_bns.append(nn.BatchNorm2d(out))
            last = out

    def forward(self, xyz, feats, generator=None):
        """xyz (B, N, 3), feats (B, N, C) or None → new_xyz (B, S, 3), new_feats (B, S, C')."""
        bsz = xyz.shape[0]
        if self.group_all:
            new_xyz = xyz.new_zeros(bsz, 1, 3)
            grouped = xyz[:, None]  # absolute xyz, as ULIP's sample_and_group_all
            if feats is not None:
                grouped = torch.cat([grouped, feats[:, None]], -1)
        else:
            new_xyz = gather_points(xyz, fps_random_start(xyz, self.npoint, generator))
            idx = ball_query_inclusive(self.radius, self.nsample, xyz, new_xyz)  # (B, S, K)
            s, k = idx.shape[1], idx.shape[2]
            flat = idx.reshape(bsz, s * k, 1)
            g_xyz = torch.gather(xyz, 1, flat.expand(-1, -1, 3)).view(bsz, s, k, 3) - new_xyz[:, :, None]
            grouped = g_xyz
            if feats is not None:
                g_f = torch.gather(feats, 1, flat.expand(-1, -1, feats.shape[-1])).view(bsz, s, k, -1)
                grouped = torch.cat([g_xyz, g_f], -1)
        x = grouped.permute(0, 3, 2, 1)  # (B, C, K, S)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(bn(conv(x)))
        return new_xyz, x.max(dim=2).values.transpose(1, 2)


class Pointnet2Ssg(nn.Module):
    def __init__(self):
        super().__init__()
        self.sa1 = SetAbstraction(512, 0.2, 32, 3, [64, 64, 128], False)
        self.sa2 = SetAbstraction(128, 0.4, 64, 128 + 3, [128, 128, 256], False)
        self.sa3 = SetAbstraction(None, None, None, 256 + 3, [256, 512, 1024], True)
        self.fc1 = nn.Linear(1024, 512)
        self.bn1 = nn.BatchNorm1d(512)
        self.drop1 = nn.Dropout(0.4)
        self.fc2 = nn.Linear(512, 256)
        self.bn2 = nn.BatchNorm1d(256)
        self.drop2 = nn.Dropout(0.4)

    def forward(self, pts, generator: torch.Generator | None = None):
        """pts (B, N, 3) raw camera-frame metres (not centered, as queue_extraction.py) → (B, 256)."""
        xyz1, f1 = self.sa1(pts, None, generator)
        xyz2, f2 = self.sa2(xyz1, f1, generator)
        _, f3 = self.sa3(xyz2, f2, generator)
        x = f3.reshape(pts.shape[0], -1)
        x = self.drop1(F.relu(self.bn1(self.fc1(x))))
        return self.drop2(F.relu(self.bn2(self.fc2(x))))
