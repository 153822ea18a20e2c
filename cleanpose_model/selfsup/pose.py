"""Pose from correspondences: a batched, weighted Umeyama similarity transform and the cycle filter that
picks reliable pixel/point pairs at inference."""

from __future__ import annotations

import torch


def umeyama(src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor | None = None):
    """Least-squares similarity transform dst ~ s R src + t, batched: src, dst (B,n,3), ``weight`` (B,n)
    (default 1) -> s (B,), R (B,3,3) proper rotation, t (B,3). Computed in float64 (3x3 SVD: the
    precision costs nothing and makes a noiseless fit exact)."""
    src64, dst64 = src.double(), dst.double()
    w = (
        torch.ones(src.shape[:2], dtype=torch.float64, device=src.device)
        if weight is None
        else weight.double()
    )
    w = w / w.sum(1, keepdim=True).clamp(min=1e-12)
    mu_s = (w[..., None] * src64).sum(1)
    mu_d = (w[..., None] * dst64).sum(1)
    xs, xd = src64 - mu_s[:, None], dst64 - mu_d[:, None]
    cov = (w[..., None] * xd).transpose(1, 2) @ xs  # (B,3,3) sum w xd xs^T
    u, d, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    fix = torch.ones_like(d)
    fix[:, 2] = sign
    rot = u @ torch.diag_embed(fix) @ vh
    var_s = (w * xs.pow(2).sum(-1)).sum(1).clamp(min=1e-12)
    s = (d * fix).sum(1) / var_s
    t = mu_d - s[:, None] * (rot @ mu_s[..., None])[..., 0]
    return s, rot, t


def cycle_pairs(sim: torch.Tensor, obs: torch.Tensor, keep: float, min_pairs: int):
    """Reliable pairs by cycle-matching distance: each pixel i goes to its most similar point j(i), that
    point back to its most similar pixel i'(j); the pair (i, j(i)) is kept when the observed points of i and
    i' are among the ``keep`` fraction closest (at least ``min_pairs``). Returns (point index (B,n),
    weight (B,n) 1 for kept pairs, 0 otherwise)."""
    j = sim.argmax(2)  # (B,n)
    back = sim.argmax(1).gather(1, j)  # (B,n): i'(j(i))
    dist = (obs - obs.gather(1, back[..., None].expand(-1, -1, 3))).norm(dim=-1)
    n = sim.shape[1]
    k = min(n, max(int(min_pairs), round(keep * n)))
    kept = dist.topk(k, dim=1, largest=False).indices
    weight = torch.zeros_like(dist).scatter_(1, kept, 1.0)
    return j, weight
