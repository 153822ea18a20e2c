"""Prediction heads: NOCS predictor (§3.8), pose/size estimator (§3.9), reconstructor (§3.7)."""

from __future__ import annotations

import torch
from torch import nn

from cleanpose_model.config import EstimatorConfig, NocsConfig, ReconstructorConfig
from cleanpose_model.nn.attention import SelfAttnLayer


def _conv_relu_stack(widths: list[int], final_relu: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Conv1d(widths[i], widths[i + 1], 1))
        if final_relu or i < len(widths) - 2:
            layers.append(nn.ReLU(inplace=True))
    return layers


def _linear_head(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class NOCSPredictor(nn.Module):
    def __init__(self, cfg: NocsConfig, d_model: int, cat_num: int, num_heads: int, dim_ffn: int) -> None:
        super().__init__()
        self.cat_num = cat_num
        self.bins_num = cfg.bins_num
        widths = [d_model, *list(cfg.mlp), d_model]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers += [nn.Conv1d(widths[i], widths[i + 1], 1), nn.BatchNorm1d(widths[i + 1])]
            if i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.nocs_mlp = nn.Sequential(*layers)
        self.self_attn_layer = SelfAttnLayer(cfg.block_num, d_model, num_heads, dim_ffn)
        self.atten_mlp = nn.Sequential(
            *_conv_relu_stack(
                [d_model, cfg.atten_hidden, cfg.atten_hidden, cat_num * 3 * cfg.bins_num], final_relu=False
            )
        )
        # Not a parameter nor a buffer in the published model (absent from its state_dict).
        self._bins = cfg.bins_num

    def bins_center(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        i = torch.arange(self._bins, device=device, dtype=dtype)
        return (-0.5 + (i + 0.5) / self._bins).unsqueeze(1)  # (bins, 1)

    def forward(self, kpt_feat: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """kpt_feat (B, K, C), category (B,) -> NOCS coordinates (B, K, 3)."""
        bsz, n_kpt, _ = kpt_feat.shape
        h = self.nocs_mlp(kpt_feat.transpose(1, 2)).transpose(1, 2)
        h = self.self_attn_layer(h)
        logits = self.atten_mlp(h.transpose(1, 2))  # channel = cat*3*bins + axis*bins + bin
        logits = logits.view(bsz, self.cat_num, 3, self.bins_num, n_kpt)
        logits = logits[torch.arange(bsz, device=kpt_feat.device), category]  # (B, 3, bins, K)
        prob = torch.softmax(logits, dim=2).permute(0, 3, 1, 2)  # (B, K, 3, bins)
        return torch.matmul(prob, self.bins_center(kpt_feat.device, kpt_feat.dtype)).squeeze(-1)


class PoseSizeEstimator(nn.Module):
    def __init__(self, cfg: EstimatorConfig, d_model: int) -> None:
        super().__init__()
        pts_w = [3, *list(cfg.pts_mlp)]
        self.pts_mlp1 = nn.Sequential(*_conv_relu_stack(pts_w, final_relu=True))
        self.pts_mlp2 = nn.Sequential(*_conv_relu_stack(pts_w, final_relu=True))
        c_in = 2 * cfg.pts_mlp[-1] + d_model
        self.pose_mlp1 = nn.Sequential(*_conv_relu_stack([c_in, *list(cfg.pose_mlp1)], final_relu=True))
        self.pose_mlp2 = nn.Sequential(
            *_conv_relu_stack([2 * cfg.pose_mlp1[-1], *list(cfg.pose_mlp2)], final_relu=True),
            nn.AdaptiveAvgPool1d(1),
        )
        head = [cfg.pose_mlp2[-1], *list(cfg.head_hidden)]
        self.rotation_estimator = _linear_head([*head, 6])
        self.translation_estimator = _linear_head([*head, 3])
        self.size_estimator = _linear_head([*head, 3])

    def forward(
        self, kpt_3d: torch.Tensor, kpt_nocs: torch.Tensor, kpt_feat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (6D rotation (B,6), translation (B,3), size (B,3)); kpt_nocs must arrive detached."""
        p1 = self.pts_mlp1(kpt_3d.transpose(1, 2))
        p2 = self.pts_mlp2(kpt_nocs.transpose(1, 2))
        f = self.pose_mlp1(torch.cat([p1, kpt_feat.transpose(1, 2), p2], dim=1))
        f = torch.cat([f, f.mean(dim=2, keepdim=True).expand_as(f)], dim=1)
        f = self.pose_mlp2(f).flatten(1)
        return self.rotation_estimator(f), self.translation_estimator(f), self.size_estimator(f)


class Reconstructor(nn.Module):
    def __init__(self, cfg: ReconstructorConfig, d_model: int) -> None:
        super().__init__()
        self.pts_per_kpt = cfg.pts_per_kpt
        self.pos_enc = nn.Sequential(*_conv_relu_stack([3, *list(cfg.pos_hidden), d_model], final_relu=False))
        self.mlp = nn.Sequential(*_conv_relu_stack([d_model, d_model, d_model], final_relu=False))
        self.shape_decoder = nn.Sequential(
            *_conv_relu_stack([2 * d_model, *list(cfg.decoder_hidden), 3 * cfg.pts_per_kpt], final_relu=False)
        )

    def forward(self, kpt_3d: torch.Tensor, kpt_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """kpt_3d (B,K,3), kpt_feat (B,K,C) -> (shape points (B, K*P, 3), offsets delta (B, K*P, 3))."""
        bsz, n_kpt, _ = kpt_3d.shape
        pos = self.pos_enc(kpt_3d.transpose(1, 2))
        kf = self.mlp(kpt_feat.transpose(1, 2))
        glob = (pos + kf).mean(dim=2, keepdim=True).expand_as(kf)
        delta = self.shape_decoder(torch.cat([glob, kf], dim=1))  # (B, 3P, K)
        delta = delta.transpose(1, 2).reshape(bsz, n_kpt * self.pts_per_kpt, 3)
        recon = delta + kpt_3d.repeat_interleave(self.pts_per_kpt, dim=1)
        return recon, delta
