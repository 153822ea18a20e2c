"""Front-door (causal) encoder of CleanPose, spec model.md §3.6."""

from __future__ import annotations

import torch
from torch import nn

from cleanpose_model.nn.attention import AttnLayer, SelfAttnLayer


class FrontDoorEncoder(nn.Module):
    def __init__(
        self, d_model: int, num_heads: int, dim_ffn: int, cross_block_num: int = 4, self_block_num: int = 2
    ) -> None:
        super().__init__()
        self.cross_attn_layer = AttnLayer(cross_block_num, d_model, num_heads, dim_ffn)
        self.self_attn_layer = SelfAttnLayer(self_block_num, d_model, num_heads, dim_ffn)
        self.mlp_local = nn.Linear(d_model, d_model)
        self.mlp_global = nn.Linear(d_model, d_model)
        self.ln = nn.LayerNorm(d_model)
        self.aug_linear = nn.Linear(d_model, 1)
        self.ori_linear = nn.Linear(d_model, 1)

    def forward(self, local_feat: torch.Tensor, global_feat: torch.Tensor) -> torch.Tensor:
        """local_feat (B, K, C) keypoint features, global_feat (B, S, C) confounder-queue sample."""
        s = self.self_attn_layer(self.mlp_local(local_feat))
        x = self.cross_attn_layer(self.mlp_global(local_feat), global_feat)
        fused = self.ln(s + x)
        # Learned gate between the deconfounded and the original keypoint features.
        w = torch.sigmoid(self.aug_linear(fused) + self.ori_linear(local_feat))
        return w * fused + (1.0 - w) * local_feat
