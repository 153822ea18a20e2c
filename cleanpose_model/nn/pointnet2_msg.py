"""PointNet++ MSG backbone (4 multi-scale SA levels + 4 FP levels).

Attribute names follow the published state_dict: ``SA_modules.{s}.mlps.{g}.layer{l}.conv``,
``...layer{l}.normlayer.bn``, ``FP_modules.{f}.mlp.layer{l}...``.
"""

from __future__ import annotations

import torch
from torch import nn

from cleanpose_model.config import PointNet2Config
from cleanpose_model.ops import pointnet2 as ops


class _BatchNorm2dWrapper(nn.Module):
    """Holds the BN under `.bn` so the keys read `normlayer.bn.*` like the published ones."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


class _ConvBnRelu2d(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
        self.normlayer = _BatchNorm2dWrapper(c_out)
        self.activation = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.normlayer(self.conv(x)))


class SharedMLP(nn.Sequential):
    """Stack of 1x1 Conv2d (no bias) + BN2d + ReLU, children named layer0, layer1, ..."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        for i in range(len(widths) - 1):
            self.add_module(f"layer{i}", _ConvBnRelu2d(widths[i], widths[i + 1]))


class SetAbstractionMSG(nn.Module):
    def __init__(self, npoint: int, radii: list[float], nsamples: list[int], mlps: list[list[int]]) -> None:
        super().__init__()
        self.npoint = npoint
        self.radii = list(radii)
        self.nsamples = list(nsamples)
        self.mlps = nn.ModuleList(SharedMLP(w) for w in mlps)

    def centres(self, xyz: torch.Tensor) -> torch.Tensor:
        """xyz (B, N, 3) -> furthest-point-sampled centres (B, npoint, 3)."""
        return ops.sample_centres(xyz, self.npoint)

    def neighbours(self, xyz: torch.Tensor, new_xyz: torch.Tensor) -> list[torch.Tensor]:
        """Neighbour indices of each centre, per radius: (B, npoint, nsample)."""
        return ops.ball_query_multi(new_xyz, xyz, self.radii, self.nsamples)

    def sample(self, xyz: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """xyz (B, N, 3) -> centres (B, npoint, 3), neighbour indices per radius (B, npoint, nsample)."""
        new_xyz = self.centres(xyz)
        return new_xyz, self.neighbours(xyz, new_xyz)

    def aggregate(
        self,
        xyz: torch.Tensor,
        new_xyz: torch.Tensor,
        groups: list[torch.Tensor],
        features: torch.Tensor | None,
    ) -> torch.Tensor:
        """Grouped relative coordinates (+ features) through each scale's MLP, max-pooled: (B, C, npoint)."""
        xyz_t = xyz.transpose(1, 2).contiguous()
        centre = new_xyz.transpose(1, 2).unsqueeze(-1)
        outs = []
        for group_idx, mlp in zip(groups, self.mlps, strict=True):
            grouped = ops.group_points(xyz_t, group_idx) - centre
            if features is not None:
                grouped = torch.cat([grouped, ops.group_points(features, group_idx)], dim=1)
            outs.append(mlp(grouped).amax(dim=-1))
        return torch.cat(outs, dim=1)

    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """xyz (B, N, 3), features (B, C, N) or None -> new_xyz (B, npoint, 3), (B, sum out, npoint)."""
        new_xyz, groups = self.sample(xyz)
        return new_xyz, self.aggregate(xyz, new_xyz, groups, features)


class FeaturePropagation(nn.Module):
    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.mlp = SharedMLP(widths)

    @staticmethod
    def interpolation(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Three-NN indices (B, N, 3) of each unknown point among the known ones and their weights."""
        sq_dist, idx = ops.three_nn(unknown, known)
        return idx, ops.inverse_distance_weights(sq_dist)

    def forward(
        self,
        unknown: torch.Tensor,
        known: torch.Tensor,
        unknown_feats: torch.Tensor | None,
        known_feats: torch.Tensor,
        interp: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        idx, weight = interp if interp is not None else self.interpolation(unknown, known)
        return self.propagate(known_feats, idx, weight, unknown_feats)

    def propagate(
        self,
        known_feats: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor,
        unknown_feats: torch.Tensor | None,
    ) -> torch.Tensor:
        """The feature work after the interpolation's geometry: known features interpolated at the unknown
        points, concatenated with the skip features, through the MLP -> (B, C_out, N)."""
        feats = ops.three_interpolate(known_feats, idx, weight)
        if unknown_feats is not None:
            feats = torch.cat([feats, unknown_feats], dim=1)
        return self.mlp(feats.unsqueeze(-1)).squeeze(-1)


# What `PointNet2MSG.geometry` returns: everything that depends on the coordinates only.
Geometry = dict[str, list]


class PointNet2MSG(nn.Module):
    def __init__(self, cfg: PointNet2Config, in_feat_dim: int = 0) -> None:
        super().__init__()
        self.SA_modules = nn.ModuleList()
        level_out = [in_feat_dim]
        c_in = in_feat_dim
        for lvl, npoint in enumerate(cfg.npoints):
            n_scales = len(cfg.radii[lvl])
            widths = [c_in + 3, *list(cfg.sa_mlps[lvl])]
            self.SA_modules.append(
                SetAbstractionMSG(npoint, cfg.radii[lvl], cfg.nsamples[lvl], [widths] * n_scales)
            )
            c_in = cfg.sa_mlps[lvl][-1] * n_scales
            level_out.append(c_in)
        # FP_modules.i maps level i+1 features onto level i points; run from the deepest level.
        self.FP_modules = nn.ModuleList()
        n_levels = len(cfg.npoints)
        for i in range(n_levels):
            interp = level_out[i + 1] if i == n_levels - 1 else cfg.fp_mlps[i + 1][-1]
            self.FP_modules.append(FeaturePropagation([interp + level_out[i], *list(cfg.fp_mlps[i])]))

    def geometry(self, xyz: torch.Tensor) -> Geometry:
        """The index work of a pass (sampling, grouping, interpolation weights): it depends on the
        coordinates only, so it can run apart from (e.g. concurrently with) the feature work.

        -> {"xyz": [level coordinates], "groups": [per SA level, per radius indices],
            "interp": [per FP level (indices, weights)]}
        """
        l_xyz, groups = [xyz], []
        for sa in self.SA_modules:
            new_xyz, g = sa.sample(l_xyz[-1])
            l_xyz.append(new_xyz)
            groups.append(g)
        interp = [fp.interpolation(l_xyz[i], l_xyz[i + 1]) for i, fp in enumerate(self.FP_modules)]
        return {"xyz": l_xyz, "groups": groups, "interp": interp}

    def forward(
        self, xyz: torch.Tensor, features: torch.Tensor | None = None, geometry: Geometry | None = None
    ) -> torch.Tensor:
        """xyz (B, N, 3) -> per-point features (B, fp_mlps[0][-1], N); ``geometry`` = self.geometry(xyz)
        when already computed."""
        geo = geometry if geometry is not None else self.geometry(xyz)
        l_xyz = geo["xyz"]
        l_feat: list[torch.Tensor | None] = [features]
        for lvl, sa in enumerate(self.SA_modules):
            l_feat.append(sa.aggregate(l_xyz[lvl], l_xyz[lvl + 1], geo["groups"][lvl], l_feat[-1]))
        for i in range(len(self.FP_modules) - 1, -1, -1):
            l_feat[i] = self.FP_modules[i](l_xyz[i], l_xyz[i + 1], l_feat[i], l_feat[i + 1], geo["interp"][i])
        return l_feat[0]
