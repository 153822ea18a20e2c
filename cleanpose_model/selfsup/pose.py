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


def read_out(sim, corr_pts, shape, pts, keep: float, min_pairs: int, n_keypoints: int) -> dict:
    """The pose read-out, network-free (``SelfSupNet.estimate`` and the oracle study call this one function):
    ``sim`` (B,n,M) pixel/point similarities of the n observed points ``pts`` (B,n,3) (camera frame, metres)
    against the M correspondence points ``corr_pts`` (B,M,3) of the canonical reconstruction ``shape``
    (B,P,3) (NOCS frame: box-centred, unit diagonal). Cycle-consistent pairs -> Umeyama ``pts ~ s R x + t``
    -> rotation R, translation t, size = extents(shape) x s, ``n_keypoints`` shape points in the camera
    frame."""
    j, weight = cycle_pairs(sim, pts, keep, min_pairs)
    src = corr_pts.gather(1, j[..., None].expand(-1, -1, 3))
    s, rot, t = umeyama(src, pts, weight)
    # Degenerate pairs (every kept pixel on one model point: an untrained or collapsed similarity) leave no
    # source spread, so s = 0 and the size would be 0 (the evaluator's size / |size| is then NaN). The scale
    # falls back to the observed points' RMS radius over the reconstruction's, t to the centroids' offset.
    bad = ~torch.isfinite(s) | (s <= 1e-6)
    if bool(bad.any()):
        w = weight.double() / weight.double().sum(1, keepdim=True).clamp(min=1e-12)
        mu_d = (w[..., None] * pts.double()).sum(1)
        mu_s = (w[..., None] * src.double()).sum(1)
        rms = lambda x: (x - x.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).sqrt()  # noqa: E731
        s_fb = rms(pts.double()) / rms(shape.double()).clamp(min=1e-12)
        s = torch.where(bad, s_fb, s)
        t = torch.where(bad[:, None], mu_d - s[:, None] * (rot @ mu_s[..., None])[..., 0], t)
    extents = (shape.amax(1) - shape.amin(1)).double()
    step = max(1, shape.shape[1] // n_keypoints)
    kp = shape[:, ::step][:, :n_keypoints].double()
    keypoints = s[:, None, None] * kp @ rot.transpose(1, 2) + t[:, None]
    dt = pts.dtype
    return {
        "rotation": rot.to(dt),
        "translation": t.to(dt),
        "size": (extents * s[:, None]).to(dt),
        "keypoints": keypoints.to(dt),
        "scale": s.to(dt),
        "shape": shape,
        "pair_weight": weight,
    }
