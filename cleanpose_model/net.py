"""CleanPoseNet: the CleanPose / AG-Pose network with the published state_dict layout.

Attribute names equal the published state_dict prefixes (`rgb_extractor`, `feature_mlp`,
`pts_extractor`, `IAKD`, `GAFA`, `nocs_predictor`, `estimator`, `reconstructor`,
`projector_pts`, `pointnet2ulip`, `FD_Encoder`), so published checkpoints load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cleanpose_model.config import ModelConfig
from cleanpose_model.geometry import ortho6d_to_matrix, random_augmentation
from cleanpose_model.nn.dinov2 import DinoVisionTransformer
from cleanpose_model.nn.front_door import FrontDoorEncoder
from cleanpose_model.nn.gafa import GAFA
from cleanpose_model.nn.heads import NOCSPredictor, PoseSizeEstimator, Reconstructor
from cleanpose_model.nn.keypoints import IAKD
from cleanpose_model.nn.pointnet2_msg import PointNet2MSG
from cleanpose_model.ops.gather import bilinear_gather_torch

Augmentation = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def centre_points(pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pts (B, N, 3) -> (pts minus their mean, the mean (B, 1, 3)). The one centring every caller uses,
    so point features computed outside the forward (``pts_local``) are bit-identical to its own."""
    centroid = pts.mean(dim=1, keepdim=True)
    return pts - centroid, centroid


class CleanPoseNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        heads, ffn = cfg.attention.num_heads, cfg.attention.dim_ffn
        if cfg.has_distill_head:
            # psi in the paper: maps the normalised point feature into the teacher's space.
            self.pointnet2ulip = nn.Parameter(
                torch.randn(cfg.pts_feat_dim, cfg.distill.feat_dim) * cfg.distill.feat_dim**-0.5
            )
        self.rgb_extractor = DinoVisionTransformer(cfg.dino)
        if cfg.dino.frozen:
            self.rgb_extractor.requires_grad_(False)
        self.feature_mlp = nn.Sequential(nn.Conv1d(cfg.dino.embed_dim, cfg.rgb_feat_dim, 1))
        self.pts_extractor = PointNet2MSG(cfg.pointnet2)
        self.IAKD = IAKD(
            cfg.keypoints.kpt_num, d, cfg.keypoints.block_num, heads, ffn, cfg.keypoints.temperature
        )
        self.GAFA = GAFA(d, cfg.gafa.ks, cfg.gafa.delta_hidden, cfg.gafa.tau)
        self.nocs_predictor = NOCSPredictor(cfg.nocs, d, cfg.cat_num, heads, ffn)
        self.estimator = PoseSizeEstimator(cfg.estimator, d)
        self.reconstructor = Reconstructor(cfg.reconstructor, d)
        if cfg.has_distill_head:
            self.projector_pts = nn.Sequential(
                nn.Linear(cfg.pts_feat_dim, cfg.pts_feat_dim, bias=False),
                nn.GELU(),
                nn.Linear(cfg.pts_feat_dim, cfg.pts_feat_dim, bias=False),
            )
            nn.init.kaiming_normal_(self.projector_pts[0].weight)
            nn.init.zeros_(self.projector_pts[2].weight)
        if cfg.use_front_door:
            fd = cfg.front_door
            self.FD_Encoder = FrontDoorEncoder(d, heads, ffn, fd.cross_block_num, fd.self_block_num)

    # ------------------------------------------------------------------ pieces
    def rgb_features(self, patch_tokens: torch.Tensor, choose: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, P, D) -> per-point RGB features (B, rgb_feat_dim, N).

        The published code upsamples the patch grid bilinearly to the crop size, applies the
        1x1 conv at every pixel, then gathers the chosen pixels. Conv and bilinear resampling
        commute (the interpolation weights sum to one), so by default the conv runs on the
        patch grid and only the chosen pixels are interpolated.
        """
        bsz, n_patch, dim = patch_tokens.shape
        grid = round(n_patch**0.5)
        size = self.cfg.image_size
        fmap = patch_tokens.transpose(1, 2).reshape(bsz, dim, grid, grid)
        if not self.cfg.rgb_sparse_gather:
            up = F.interpolate(fmap, size=(size, size), mode="bilinear", align_corners=False)
            feat = self.feature_mlp(up.reshape(bsz, dim, size * size))
            return torch.gather(feat, 2, choose.unsqueeze(1).expand(-1, feat.shape[1], -1))
        feat = self.feature_mlp(fmap.reshape(bsz, dim, grid * grid))  # (B, C, P)
        return bilinear_gather_torch(feat, choose, grid, size)

    def distill_features(self, pts_local: torch.Tensor) -> torch.Tensor:
        """Student side of the ULIP distillation (training.md §4.1) -> (B, distill.feat_dim)."""
        f = pts_local.mean(dim=2)
        f = f / f.norm(dim=1, keepdim=True)
        f = f + self.cfg.distill.alpha * self.projector_pts(f)
        return f @ self.pointnet2ulip

    def _check_inputs(
        self,
        rgb: torch.Tensor,
        pts: torch.Tensor,
        choose: torch.Tensor,
        category: torch.Tensor,
        queue_feats: torch.Tensor | None,
    ) -> None:
        bsz = pts.shape[0]
        size = self.cfg.image_size
        if pts.dim() != 3 or pts.shape[2] != 3:
            raise ValueError(f"pts must be (B, N, 3), got {tuple(pts.shape)}")
        if rgb.shape != (bsz, 3, size, size):
            raise ValueError(f"rgb must be ({bsz}, 3, {size}, {size}), got {tuple(rgb.shape)}")
        if choose.shape != pts.shape[:2]:
            raise ValueError(f"choose must be {tuple(pts.shape[:2])}, got {tuple(choose.shape)}")
        if category.numel() != bsz:
            raise ValueError(f"category must hold {bsz} labels, got shape {tuple(category.shape)}")
        if self.cfg.use_front_door:
            # Any number of queue entries >= 1 is valid: they are only keys/values of the cross-attention
            # (the deterministic inference mode attends over the whole queue, see cleanpose_model.queue).
            if queue_feats is None:
                raise ValueError("the CleanPose variant needs queue_feats (B, select_num, d_model)")
            if (
                queue_feats.dim() != 3
                or queue_feats.shape[0] != bsz
                or queue_feats.shape[1] < 1
                or queue_feats.shape[2] != self.cfg.d_model
            ):
                want = (bsz, self.cfg.front_door.select_num, self.cfg.d_model)
                raise ValueError(
                    f"queue_feats must be {want} (any count >= 1 on dim 1), got {tuple(queue_feats.shape)}"
                )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        rgb: torch.Tensor,
        pts: torch.Tensor,
        choose: torch.Tensor,
        category: torch.Tensor,
        queue_feats: torch.Tensor | None = None,
        return_intermediates: bool = False,
        compute_recon: bool = False,
        augmentation: Augmentation | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Inputs: rgb (B,3,S,S) normalised crop, pts (B,N,3) camera-frame metres, choose (B,N)
        int64 pixel indices into the crop, category (B,) 0-based ids, queue_feats (B,select_num,d)
        (CleanPose only).

        In eval mode returns `pred_rotation` (B,3,3), `pred_translation` (B,3), `pred_size` (B,3),
        `pred_kpt_3d` (B,K,3), `kpt_nocs` (B,K,3) (+ `recon_model`, `recon_delta` if compute_recon).
        `recon_model` / `recon_delta` are (B, K*pts_per_kpt, 3) point lists (the published code returns
        the shape as (B, 3, K*P)); `recon_model` is in the camera frame, `recon_delta` in the network's
        (augmented) frame. In train mode the centred points are augmented with `augmentation` = (dR (B,3,3),
        dt (B,1,3), ds (B,1)) or a draw from `generator`, predictions are mapped back to the camera
        frame, and the reconstruction, centroid, queue-update and distillation features are added.
        """
        category = category.reshape(-1).long()
        choose = choose.long()
        self._check_inputs(rgb, pts, choose, category, queue_feats)
        training = self.training
        inter: dict[str, torch.Tensor] = {}

        pts_c, centroid = centre_points(pts)
        tokens = self.rgb_extractor(rgb)
        rgb_local = self.rgb_features(tokens[:, 1:], choose)

        if training:
            if augmentation is None:
                a = self.cfg.augmentation
                augmentation = random_augmentation(
                    pts.shape[0], generator, a.max_translation, a.max_angle_deg, a.scale_min, a.scale_max
                )
            d_rot, d_t, d_s = (x.to(device=pts.device, dtype=pts.dtype) for x in augmentation)
            d_t = d_t.reshape(-1, 1, 3)
            d_s = d_s.reshape(-1, 1)
            pts_c = ((pts_c - d_t) / d_s.unsqueeze(-1)) @ d_rot

        pts_local = self.pts_extractor(pts_c)
        feats = torch.cat([pts_local, rgb_local], dim=1)
        kp = self.IAKD(feats, pts_c)
        kpt_3d, kpt_feat = kp["kpt_3d"], kp["kpt_feature"]
        kpt_feat = self.GAFA(kpt_feat, kpt_3d.detach(), feats.transpose(1, 2), pts_c)
        if return_intermediates:
            inter.update(
                dino_x_prenorm=tokens,
                iakd_rgb_local=rgb_local,
                iakd_pts_local=pts_local,
                iakd_kpt_query=kp["kpt_query"],
                iakd_kpt_feature=kp["kpt_feature"],
                iakd_heatmap=kp["heatmap"],
                gafa_out=kpt_feat,
            )
        if self.cfg.use_front_door:
            kpt_feat = self.FD_Encoder(kpt_feat, queue_feats)
            if return_intermediates:
                inter.update(fd_global_in=queue_feats, fd_out=kpt_feat)

        kpt_nocs = self.nocs_predictor(kpt_feat, category)
        r6, t, s = self.estimator(kpt_3d, kpt_nocs.detach(), kpt_feat)
        rot = ortho6d_to_matrix(r6)
        c = centroid.squeeze(1)
        out: dict[str, torch.Tensor] = {}
        recon = delta = None
        if training or compute_recon:
            recon, delta = self.reconstructor(kpt_3d, kpt_feat)

        if training:
            out["pred_rotation"] = d_rot @ rot
            out["pred_translation"] = d_t.squeeze(1) + d_s * (d_rot @ t.unsqueeze(-1)).squeeze(-1) + c
            out["pred_size"] = s * d_s
            back = d_rot.transpose(1, 2)
            out["pred_kpt_3d"] = (kpt_3d @ back) * d_s.unsqueeze(-1) + d_t + centroid
            out["recon_model"] = (recon @ back) * d_s.unsqueeze(-1) + d_t + centroid
            out["recon_delta"] = delta
            out["aug_rotation"], out["aug_translation"], out["aug_scale"] = d_rot, d_t, d_s
        else:
            out["pred_rotation"] = rot
            out["pred_translation"] = t + c
            out["pred_size"] = s
            out["pred_kpt_3d"] = kpt_3d + centroid
            if recon is not None:
                out["recon_model"] = recon + centroid
                out["recon_delta"] = delta
        out["kpt_nocs"] = kpt_nocs
        out["centroid"] = c
        if training:
            # What the confounder-queue FIFO stores: keypoint-averaged (front-door) feature.
            out["queue_feat"] = kpt_feat.mean(dim=1).detach()
            out["pts_input"] = pts_c  # centred + augmented cloud, the ULIP teacher's input
            if self.cfg.has_distill_head:
                out["distill_student"] = self.distill_features(pts_local)
        out.update(inter)
        return out
