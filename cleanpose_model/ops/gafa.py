"""GAFA's two per-keypoint MLP chains (nn/gafa.py) on weights prepared once, in plain torch: the references
of ``ops/triton/gafa.py`` and the exact mode's GAFA inference form."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_mlp_mean_torch(x, w1, b1, w2t, b2) -> torch.Tensor:
    """x (B, K, 3) -> mean over j of relu(relu((x_i - x_j) W1^T + b1) W2t + b2): (B, K, C).
    w1 (H, 3), w2t (H, C) (the second layer's weight transposed)."""
    rel = x.unsqueeze(2) - x.unsqueeze(1)  # (B, K, K, 3), i minus j
    h = torch.relu(F.linear(rel, w1, b1))
    return torch.relu(h @ w2t + b2).mean(dim=2)


def neighbour_aggregate_torch(kpt_3d, knn_xyz, knn_idx, proj, q, pre, weights, tau: float) -> torch.Tensor:
    """One GAFA block's neighbour branch -> the updated keypoint features (B, K, C):

    kf_j = relu(proj[idx_j] + relu(relu(d_j W1^T + b1) W2t + b2) Wft + bf) W3t + b3, d_j = kpt - knn_xyz_j,
    a = softmax_j(cos(q, kf_j) / tau), out = relu(sum_j a_j kf_j + pre).

    kpt_3d (B, K, 3), knn_xyz (B, K, k, 3), knn_idx (B, K, k) into proj's N, proj (B, N, C) the neighbour
    features' projection, q / pre (B, K, C); weights = (w1 (H, 3), b1, w2t (H, C), b2, wft (C, C), bf,
    w3t (C, C), b3), matrices transposed (input rows)."""
    w1, b1, w2t, b2, wft, bf, w3t, b3 = weights
    bsz, n_kpt, k = knn_idx.shape
    c = proj.shape[-1]
    flat = knn_idx.reshape(bsz, -1, 1).expand(-1, -1, c)
    gathered = torch.gather(proj, 1, flat).view(bsz, n_kpt, k, c)
    hidden = torch.relu(torch.relu(F.linear(kpt_3d.unsqueeze(2) - knn_xyz, w1, b1)) @ w2t + b2)
    kf = torch.relu(gathered + hidden @ wft + bf) @ w3t + b3
    sim = F.cosine_similarity(q.unsqueeze(2).expand_as(kf), kf, dim=-1)
    attn = torch.softmax(sim / tau, dim=-1)
    return torch.relu((attn.unsqueeze(-1) * kf).sum(dim=2) + pre)
