"""``SelfSupNet``: the self-supervised family's network (image backbone, part-level shape memory, decoder,
PointNet, the two similarity levels) and its pose read-out (cycle-filtered pairs + Umeyama)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cleanpose_model.selfsup.config import PIXEL_STRIDE, REGION_STRIDE, SelfSupConfig
from cleanpose_model.selfsup.correspondence import cell_of, cosine_similarity, occupied
from cleanpose_model.selfsup.encoder import ImageBackbone
from cleanpose_model.selfsup.pose import read_out
from cleanpose_model.selfsup.shape import PointNetFeatures, ShapeDecoder, ShapeMemory


class SelfSupNet(nn.Module):
    def __init__(self, cfg: SelfSupConfig):
        super().__init__()
        self.cfg = cfg
        n_cat = len(cfg.categories) if cfg.category_conditioned else 0
        self.backbone = ImageBackbone(cfg.encoder_widths, cfg.feat_dim)
        self.to_code = nn.Conv2d(cfg.encoder_widths[3], cfg.code_dim, 1)
        self.memory = ShapeMemory(cfg.codebook_size, cfg.code_dim, cfg.ema_decay, cfg.ema_eps)
        self.decoder = ShapeDecoder(cfg.n_patches, cfg.code_dim, n_cat, cfg.decoder_hidden, cfg.shape_points)
        self.pointnet = PointNetFeatures(cfg.pointnet_widths, cfg.feat_dim)
        # The correspondence levels use every (shape_points / corr_points)-th decoder output: the decoder's
        # output slots are fixed, so a strided index is a fixed, spread subset (and costs nothing).
        self.register_buffer(
            "corr_index", torch.arange(0, cfg.shape_points, cfg.shape_points // cfg.corr_points), False
        )

    def region_descriptors(self, feat: torch.Tensor) -> torch.Tensor:
        """Patchify the encoder's last map into patch_grid^2 patches, average-pool each: z_e (B, N, C)."""
        z = F.adaptive_avg_pool2d(self.to_code(feat), self.cfg.patch_grid)
        return z.flatten(2).transpose(1, 2)

    def forward(self, rgb, choose, category, update_memory: bool = False) -> dict:
        """Everything the losses and the pose read-out need: ``shape`` (B,P,3) the reconstruction,
        ``corr_pts`` (B,M,3) its correspondence subset, ``s_c`` (B,h2w2,M) / ``s_f`` (B,h3w3,M) region and
        pixel similarities, ``s_pix`` (B,n,M) the similarities of the sampled pixels, ``region_fg`` /
        ``pixel_fg`` the occupied cells, ``quant`` the memory's output."""
        cfg = self.cfg
        feat, f2, f3 = self.backbone(rgb)
        z_e = self.region_descriptors(feat)
        quant = self.memory(z_e, update=update_memory)
        shape = self.decoder(quant.z_q, category)
        # The correspondence terms see the reconstruction as a constant. Through the straight-through
        # estimator their gradients would otherwise reach z_e (and, by the EMA, the codes) and reshape the
        # decoded object with nothing to keep it true to the object: measured on the study data, 100
        # stage-2 steps doubled the reconstruction's extents (oracle read-out with GT correspondences:
        # IoU50 84.5 -> 16.0). The encoder and the memory are still fine-tuned in stage 2, through F2/F3
        # and the commitment term.
        fixed = shape.detach()
        v = self.pointnet(fixed)[:, self.corr_index]
        corr_pts = fixed[:, self.corr_index]
        s_c = cosine_similarity(f2.flatten(2).transpose(1, 2), v)
        s_f = cosine_similarity(f3.flatten(2).transpose(1, 2), v)
        pix = cell_of(choose, cfg.image_size, PIXEL_STRIDE)
        s_pix = s_f.gather(1, pix[..., None].expand(-1, -1, s_f.shape[2]))
        return {
            "z_e": z_e,
            "quant": quant,
            "shape": shape,
            "corr_pts": corr_pts,
            "s_c": s_c,
            "s_f": s_f,
            "s_pix": s_pix,
            "region_fg": occupied(choose, cfg.image_size, REGION_STRIDE, cfg.region_min_pixels),
            "pixel_fg": occupied(choose, cfg.image_size, PIXEL_STRIDE),
        }

    @torch.no_grad()
    def estimate(self, rgb, pts, choose, category) -> dict:
        """Pose read-out: reconstruct, keep the cycle-consistent pixel/point pairs, Umeyama from the pairs'
        canonical points to their observed points; size = the reconstruction's extents x scale."""
        out = self.forward(rgb, choose, category)
        cfg = self.cfg
        return read_out(
            out["s_pix"], out["corr_pts"], out["shape"], pts, cfg.cycle_keep, cfg.min_pairs, cfg.n_keypoints
        )
