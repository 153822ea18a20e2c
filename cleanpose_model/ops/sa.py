"""PointNet++'s set-abstraction aggregation and feature propagation on raw (weight, bias) layers, in plain
torch as the published modules compute them (nn/pointnet2_msg.py): the references of ``ops/triton/sa.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def set_abstraction_torch(
    xyz: torch.Tensor,
    new_xyz: torch.Tensor,
    groups: list[torch.Tensor],
    features: torch.Tensor | None,
    layers: list[list[tuple[torch.Tensor, torch.Tensor]]],
) -> torch.Tensor:
    """The published SA aggregation on raw layers: xyz (B, N, 3), new_xyz (B, M, 3), groups[r]
    (B, M, S_r), features (B, C, N) or None -> (B, sum of output widths, M)."""
    outs = []
    for idx, ls in zip(groups, layers, strict=True):
        bsz, m, s = idx.shape
        flat = idx.reshape(bsz, m * s)
        rel = torch.gather(xyz, 1, flat.unsqueeze(-1).expand(-1, -1, 3)).view(bsz, m, s, 3)
        x = rel - new_xyz.unsqueeze(2)
        if features is not None:
            f = torch.gather(features, 2, flat.unsqueeze(1).expand(-1, features.shape[1], -1))
            x = torch.cat([x, f.view(bsz, -1, m, s).permute(0, 2, 3, 1)], dim=-1)
        for w, b in ls:
            x = torch.relu(F.linear(x, w, b))
        outs.append(x.amax(dim=2).transpose(1, 2))
    return torch.cat(outs, dim=1)


def feature_propagation_torch(
    known_feats: torch.Tensor,
    idx: torch.Tensor,
    weight: torch.Tensor,
    skip: torch.Tensor | None,
    layers: list[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """The published FP level on raw layers: known_feats (B, C, M), idx / weight (B, N, 3), skip
    (B, C_u, N) or None -> (B, last width, N)."""
    bsz, n, _ = idx.shape
    c = known_feats.shape[1]
    g = torch.gather(known_feats, 2, idx.reshape(bsz, 1, n * 3).expand(-1, c, -1)).view(bsz, c, n, 3)
    x = (
        g[..., 0] * weight[:, None, :, 0]
        + g[..., 1] * weight[:, None, :, 1]
        + g[..., 2] * weight[:, None, :, 2]
    )
    if skip is not None:
        x = torch.cat([x, skip], dim=1)
    x = x.transpose(1, 2)
    for w, b in layers:
        x = torch.relu(F.linear(x, w, b))
    return x.transpose(1, 2)
