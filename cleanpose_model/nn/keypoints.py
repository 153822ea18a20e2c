"""Instance-adaptive keypoint detector (IAKD), spec model.md §3.4."""

from __future__ import annotations

import torch
from torch import nn

from cleanpose_model.nn.attention import AttnLayer


class IAKD(nn.Module):
    def __init__(
        self,
        kpt_num: int,
        d_model: int,
        block_num: int,
        num_heads: int,
        dim_ffn: int,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.kpt_query = nn.Parameter(torch.empty(kpt_num, d_model))
        nn.init.xavier_normal_(self.kpt_query)
        self.attn_layer = AttnLayer(block_num, d_model, num_heads, dim_ffn)

    def forward(self, feats: torch.Tensor, pts: torch.Tensor) -> dict[str, torch.Tensor]:
        """feats (B, C, N) point features, pts (B, N, 3) centred points.

        Returns the refined queries (B, K, C), the heatmap (B, K, N) (a softmax over the points of
        the temperature-scaled cosine similarity), keypoints (B, K, 3) and their features (B, K, C).
        """
        bsz = feats.shape[0]
        feats_t = feats.transpose(1, 2)
        query = self.attn_layer(self.kpt_query.unsqueeze(0).expand(bsz, -1, -1), feats_t)
        return keypoints_from_queries(query, feats, pts, self.temperature)


def keypoints_from_queries(
    query: torch.Tensor, feats: torch.Tensor, pts: torch.Tensor, temperature: float
) -> dict[str, torch.Tensor]:
    """IAKD's read-out: refined queries (B, K, C), point features (B, C, N) (any layout) and points
    (B, N, 3) -> the queries, the heatmap (B, K, N), keypoints (B, K, 3) and their features (B, K, C)."""
    sim = torch.bmm(query, feats)
    denom = query.norm(dim=2, keepdim=True) * feats.norm(dim=1, keepdim=True) + 1e-7
    heatmap = torch.softmax(sim / denom / temperature, dim=2)
    return {
        "kpt_query": query,
        "heatmap": heatmap,
        "kpt_3d": torch.bmm(heatmap, pts),
        "kpt_feature": torch.bmm(heatmap, feats.transpose(1, 2)),
    }
