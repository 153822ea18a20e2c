"""Coarse-to-Fine Correspondence Optimisation: cosine similarities between image and point features, the
one-to-one Hungarian pseudo labels with virtual rows, index-based down-sampling of the pixel level to the
region level, the two cross-entropy terms and the cycle-consistency loss.

Which pixels count: an ObjectBatch carries no mask, but its ``choose`` indices are exactly the crop pixels
that are inside the object's mask and have depth. A region (a pixel cell) is foreground when it holds at
least ``min_pixels`` (one) of them; only foreground regions take part in the matching."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

IGNORE = -100  # F.cross_entropy's ignore_index: rows with no pseudo label


def cosine_similarity(img: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """(B,Q,C) x (B,M,C) -> (B,Q,M) cosine similarities."""
    return F.normalize(img, dim=-1) @ F.normalize(pts, dim=-1).transpose(1, 2)


def cell_of(choose: torch.Tensor, image_size: int, stride: int) -> torch.Tensor:
    """Flat index, on the grid of cells ``stride`` pixels wide, of each crop pixel index in ``choose``."""
    row, col = choose // image_size, choose % image_size
    return (row // stride) * (image_size // stride) + col // stride


def occupied(choose: torch.Tensor, image_size: int, stride: int, min_pixels: int = 1) -> torch.Tensor:
    """(B, cells) bool: cells holding at least ``min_pixels`` of the sampled object pixels."""
    cells = cell_of(choose, image_size, stride)
    counts = torch.zeros(choose.shape[0], (image_size // stride) ** 2, device=choose.device)
    counts.scatter_add_(1, cells, torch.ones_like(cells, dtype=counts.dtype))
    return counts >= min_pixels


def hungarian_labels(cost: np.ndarray) -> np.ndarray:
    """One-to-one pseudo labels for the rows of ``cost`` (rows = image regions, columns = model points):
    label[i] = the point assigned to region i, or IGNORE when region i is left unmatched.

    With fewer regions than points the paper pads N - rows virtual rows of equal cost and discards them
    afterwards; the rectangular assignment that scipy solves directly is that problem (equal-cost rows add
    the same constant to every assignment), so the points the real rows leave are the ones that would have
    gone to virtual rows: the model's invisible points. With more regions than points some regions stay
    unmatched."""
    rows, cols = linear_sum_assignment(cost)
    label = np.full(cost.shape[0], IGNORE, np.int64)
    label[rows] = cols
    return label


def pseudo_labels(s_c: torch.Tensor, region_fg: torch.Tensor, map_fn=map) -> tuple[torch.Tensor, float]:
    """T_c* for a batch: (B, regions) int64 point ids (IGNORE for background and unmatched regions) from the
    cost 1 - S_c over each object's foreground regions; returns the seconds spent in the assignment too.
    ``map_fn`` maps ``hungarian_labels`` over the objects' cost matrices (a process pool's ``map`` solves
    them in parallel: scipy's solver holds the GIL, so threads would not)."""
    cost = (1.0 - s_c.detach()).to("cpu", torch.float64).numpy()
    fg = region_fg.cpu().numpy()
    labels = np.full(fg.shape, IGNORE, np.int64)
    rows = [np.flatnonzero(fg[b]) for b in range(cost.shape[0])]
    todo = [b for b in range(cost.shape[0]) if rows[b].size]
    t0 = time.perf_counter()
    solved = list(map_fn(hungarian_labels, [cost[b, rows[b]] for b in todo]))
    seconds = time.perf_counter() - t0
    for b, lab in zip(todo, solved):
        labels[b, rows[b]] = lab
    return torch.from_numpy(labels).to(s_c.device), seconds


def downsample_max(s_f: torch.Tensor, pixel_fg: torch.Tensor, pixel_grid: int, factor: int) -> torch.Tensor:
    """Index-based down-sampling: S_f (B, h3*w3, M) -> S_fc (B, h2*w2, M), each region's row the max over
    its factor x factor foreground pixels (background pixels never win; an all-background region gets
    -inf and is ignored by the labels)."""
    b, _, m = s_f.shape
    s = s_f.masked_fill(~pixel_fg[..., None], float("-inf"))
    g = pixel_grid // factor
    s = s.reshape(b, g, factor, g, factor, m).amax(dim=(2, 4))
    return s.reshape(b, g * g, m)


def c2f_loss(s_c: torch.Tensor, s_fc: torch.Tensor, labels: torch.Tensor, tau: float):
    """L_c = CE(T_c*, S_c), L_f = CE(T_c*, S_fc), both on similarities / ``tau`` over the model points;
    rows without a label are ignored (zero loss when no row has one)."""
    if not bool((labels != IGNORE).any()):
        zero = s_c.sum() * 0.0
        return zero, zero
    lab = labels.reshape(-1)
    l_c = F.cross_entropy((s_c / tau).reshape(lab.shape[0], -1), lab, ignore_index=IGNORE)
    fc = torch.where(torch.isfinite(s_fc), s_fc, torch.zeros_like(s_fc))  # -inf rows carry no label
    l_f = F.cross_entropy((fc / tau).reshape(lab.shape[0], -1), lab, ignore_index=IGNORE)
    return l_c, l_f


def cycle_loss(sim: torch.Tensor, canon: torch.Tensor, obs: torch.Tensor, tau: float, topk: float = 0.5):
    """Cycle consistency between the sampled object pixels and the model points (after Self-GC), in 3D.

    ``sim`` (B,n,M) pixel-point similarities, ``canon`` (B,M,3) the model points in the canonical frame,
    ``obs`` (B,n,3) the pixels' observed camera-frame points. The similarity transform (s,R,t) that best maps
    the soft canonical point of every pixel onto its observed point is solved without gradient (Umeyama);
    then
      pixel -> point -> pixel: s R (softmax_points(sim) @ canon) + t must land on the pixel's own point;
      point -> pixel -> point: the soft observed point of a model point, taken back to the canonical frame,
      must land on the point itself (only the ``topk`` fraction of points most similar to some pixel: the
      others are invisible and have no pixel to cycle through).
    The first distance is divided by the observed points' RMS radius, not by s: s comes from the soft points
    themselves, and dividing by it would reward soft points that collapse onto one point (s grows without
    bound, the error shrinks). The second is in canonical units (object diagonal 1). Returns (l_2d3d2d,
    l_3d2d3d)."""
    from cleanpose_model.selfsup.pose import umeyama

    a = torch.softmax(sim / tau, dim=2)  # pixel -> point
    b = torch.softmax(sim / tau, dim=1).transpose(1, 2)  # point -> pixel
    soft_canon = a @ canon  # (B,n,3)
    with torch.no_grad():
        s, rot, t = umeyama(soft_canon, obs)
    s_ = s[:, None, None].to(canon.dtype)
    rot, t = rot.to(canon.dtype), t.to(canon.dtype)
    fwd = s_ * soft_canon @ rot.transpose(1, 2) + t[:, None]
    radius = (obs - obs.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).sqrt().clamp(min=1e-6)
    l_pix = ((fwd - obs).norm(dim=-1) / radius[:, None]).mean()
    back = ((b @ obs) - t[:, None]) @ rot / s_  # (B,M,3) in the canonical frame
    k = max(1, round(topk * canon.shape[1]))
    vis = sim.detach().amax(1).topk(k, dim=1).indices  # (B,k)
    err = (back - canon).norm(dim=-1).gather(1, vis)
    return l_pix, err.mean()
