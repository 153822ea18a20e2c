"""Inference form of `CleanPoseNet` (net.py): its eval forward over the network's inference copy (children
replaced by their forms), split into the two backbones and the head so that the graphed runner
(inference/graphs.py) can run the backbones concurrently and hand their outputs to the head.

With ``gather_kernel`` (the fast mode) the sparse RGB gather runs as one product and one Triton kernel
(`ops/triton/gather.py`); otherwise as the network's own torch form.
"""

from __future__ import annotations

import torch
from torch import nn

from cleanpose_model.geometry import ortho6d_to_matrix
from cleanpose_model.net import CleanPoseNet, centre_points
from cleanpose_model.ops.triton.gather import project_and_gather


class InferenceNet(nn.Module):
    """``net``: the inference copy of a `CleanPoseNet` in eval mode. Returns the eval outputs of
    `CleanPoseNet.forward`: pred_rotation, pred_translation, pred_size, pred_kpt_3d, kpt_nocs, centroid."""

    def __init__(self, net: CleanPoseNet, *, gather_kernel: bool = False) -> None:
        super().__init__()
        self.net = net
        self.cfg = net.cfg
        self.gather_kernel = gather_kernel and net.cfg.rgb_sparse_gather

    def rgb_features(self, patch_tokens: torch.Tensor, choose: torch.Tensor) -> torch.Tensor:
        if not self.gather_kernel:
            return self.net.rgb_features(patch_tokens, choose)
        conv = self.net.feature_mlp[0]
        return project_and_gather(patch_tokens, conv.weight, conv.bias, choose, self.cfg.image_size)

    def head(
        self,
        pts: torch.Tensor,
        choose: torch.Tensor,
        category: torch.Tensor,
        queue_feats: torch.Tensor | None,
        tokens: torch.Tensor,
        pts_local: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Everything after the backbones: ``tokens`` = rgb_extractor(rgb), ``pts_local`` = pts_extractor of
        the centred points."""
        pts_c, centroid = centre_points(pts)
        feats = torch.cat([pts_local, self.rgb_features(tokens[:, 1:], choose.long())], dim=1)
        return self.decode(feats, feats.transpose(1, 2), pts_c, centroid, category, queue_feats)

    def decode(
        self, iakd_feats, gafa_feats, pts_c, centroid, category, queue_feats
    ) -> dict[str, torch.Tensor]:
        """Keypoints, their aggregation, the front door, NOCS and the pose from the point features (in
        the layouts the bound IAKD and GAFA forms read) and the centred points."""
        net = self.net
        kp = net.IAKD(iakd_feats, pts_c)
        kpt_3d = kp["kpt_3d"]
        kpt_feat = net.GAFA(kp["kpt_feature"], kpt_3d, gafa_feats, pts_c)
        if self.cfg.use_front_door:
            kpt_feat = net.FD_Encoder(kpt_feat, queue_feats)
        kpt_nocs = net.nocs_predictor(kpt_feat, category.reshape(-1).long())
        r6, t, s = net.estimator(kpt_3d, kpt_nocs, kpt_feat)
        c = centroid.squeeze(1)
        return {
            "pred_rotation": ortho6d_to_matrix(r6),
            "pred_translation": t + c,
            "pred_size": s,
            "pred_kpt_3d": kpt_3d + centroid,
            "kpt_nocs": kpt_nocs,
            "centroid": c,
        }

    def forward(self, rgb, pts, choose, category, queue_feats=None) -> dict[str, torch.Tensor]:
        """As `CleanPoseNet.forward` in eval mode (no intermediates, no reconstruction)."""
        self.net._check_inputs(rgb, pts, choose, category.reshape(-1), queue_feats)
        tokens = self.net.rgb_extractor(rgb)
        pts_local = self.net.pts_extractor(centre_points(pts)[0])
        return self.head(pts, choose, category, queue_feats, tokens, pts_local)
