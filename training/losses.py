"""CleanPose training losses (training.md §3, §4.3), written from the published code's formulas.

Every term is a plain function on tensors so the tests can check it against hand-computed values;
``CleanPoseLoss``
combines them per sub-batch with the published weights and mixes sub-batches by size (30 syn + 10 real →
weights
30/40 and 10/40).

Shapes (per sub-batch of size B): points P (B, N, 3) camera frame with the training noise; keypoints K̂ (B,
K, 3)
camera frame; R̂/R (B, 3, 3); t̂/t, ŝ/s (B, 3); NOCS prediction ŷ (B, K, 3); reconstruction Ŝ (B, M, 3)
camera frame;
δ (B, M, 3) augmented frame; pc_mask (B, N) 0/1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from cleanpose_model.config import YamlConfig

# Euclidean norms of exact zeros (a keypoint on a point, the diagonal of the diversity matrix) have an
# undefined
# gradient; taking sqrt of max(d², tiny) keeps the value within 1e-10 of the exact norm and the gradient
# finite.
_TINY_SQ = 1e-20


def _safe_norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.sqrt(torch.clamp((x * x).sum(dim), min=_TINY_SQ))


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, n, m) squared distances; explicit differences (not the ‖a‖²+‖b‖²−2ab expansion) to avoid
    cancellation for points that nearly coincide, which is exactly where Chamfer minima sit."""
    return ((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1)


def pose_loss(pred_r, pred_t, pred_s, gt_r, gt_t, gt_s) -> torch.Tensor:
    """mean_(b, column j) ‖R̂[:, j] − R[:, j]‖ + mean_b ‖t̂ − t‖ + mean_b ‖ŝ − s‖."""
    rot = _safe_norm(pred_r - gt_r, dim=1).mean()  # dim 1 = rows → one norm per column
    trans = _safe_norm(pred_t - gt_t, dim=-1).mean()
    size = _safe_norm(pred_s - gt_s, dim=-1).mean()
    return rot + trans + size


def nocs_loss(kpt_nocs, kpt_3d, gt_r, gt_t, gt_s, beta: float = 0.1) -> torch.Tensor:
    """Smooth-L1 (β = 0.1) between predicted keypoint NOCS and Rᵀ(K̂ − t)/(‖s‖ + 1e-8), summed over xyz,
    averaged
    over (b, k). The target is built from the predicted keypoints and is deliberately not detached
    (published)."""
    scale = torch.linalg.vector_norm(gt_s, dim=-1)[:, None, None] + 1e-8
    target = torch.bmm(kpt_3d - gt_t[:, None, :], gt_r) / scale  # row vectors: (p − t)·R = Rᵀ(p − t)
    per = F.smooth_l1_loss(kpt_nocs, target, reduction="none", beta=beta)
    return per.sum(-1).mean()


def keypoint_cd_loss(kpt_3d, pts) -> torch.Tensor:
    """One-directional Chamfer: mean over (b, k) of the distance from each keypoint to its nearest point."""
    d2 = _sq_dist(kpt_3d, pts).min(dim=2).values
    return torch.sqrt(torch.clamp(d2, min=_TINY_SQ)).mean()


def diversity_loss(kpt_3d, th: float = 0.01) -> torch.Tensor:
    """mean_b Σ_ij (1 − min(D_ij, th)/th) / (K(K−1)) with D_ij = ‖K̂_i − K̂_j‖ + [i = j]."""
    k = kpt_3d.shape[1]
    eye = torch.eye(k, dtype=torch.bool, device=kpt_3d.device)
    d2 = _sq_dist(kpt_3d, kpt_3d)
    # The diagonal is 0 + 1 ≥ th and contributes exactly 0; masking it before the sqrt avoids the 0-norm
    # gradient.
    dist = torch.sqrt(torch.clamp(torch.where(eye, torch.ones_like(d2), d2), min=_TINY_SQ))
    dist = torch.clamp(dist, max=th)
    return ((1.0 - dist / th).sum(dim=(1, 2)) / (k * (k - 1))).mean()


def chamfer_distance(x, y, x_mask=None) -> torch.Tensor:
    """Per-sample symmetric Chamfer ½·mean_x min_y ‖x−y‖ + ½·mean_y min_x ‖x−y‖ → (B,).

    ``x_mask`` (B, n) restricts x to the masked points (both directions). Samples with no valid x give 0."""
    d2 = _sq_dist(x, y)  # (B, n, m)
    x_mask = torch.ones(d2.shape[:2], dtype=torch.bool, device=d2.device) if x_mask is None else x_mask > 0.5
    x_to_y = torch.sqrt(torch.clamp(d2.min(dim=2).values, min=_TINY_SQ))  # (B, n)
    n_valid = x_mask.sum(1)
    term_x = (x_to_y * x_mask).sum(1) / n_valid.clamp(min=1)
    # Invalid x must never be the nearest neighbour of a y: give them a distance above any real one.
    big = d2.detach().max() + 1.0
    d2_masked = torch.where(x_mask[:, :, None], d2, big)
    y_to_x = torch.sqrt(torch.clamp(d2_masked.min(dim=1).values, min=_TINY_SQ))  # (B, m)
    term_y = y_to_x.mean(1)
    cd = 0.5 * term_x + 0.5 * term_y
    return torch.where(n_valid > 0, cd, torch.zeros_like(cd))


def recon_loss(pts, recon, pc_mask=None) -> torch.Tensor:
    """Object-aware (NOCS, ``pc_mask`` given): Σ over samples with ≥1 valid point, divided by the full B
    (published). Without a mask (HouseCat6D): mean over all samples of the full-cloud Chamfer."""
    cd = chamfer_distance(pts, recon, pc_mask)
    return cd.sum() / pts.shape[0]


def delta_loss(recon_delta) -> torch.Tensor:
    return _safe_norm(recon_delta, dim=-1).mean()


def distillation_loss(student, teacher) -> torch.Tensor:
    """mean_b ‖z − u‖ (unnormalised 768-d features; the teacher carries no gradient)."""
    return _safe_norm(student - teacher.detach(), dim=-1).mean()


def as_points_last(x: torch.Tensor, n_hint: int | None = None) -> torch.Tensor:
    """Accept (B, M, 3) or the (B, 3, M) layout the published reconstructor returns."""
    if x.dim() == 3 and x.shape[-1] != 3 and x.shape[1] == 3:
        return x.transpose(1, 2)
    return x


@dataclass
class LossWeights(YamlConfig):
    """Weight of each term (the published values) plus the two loss settings: ``th``, the diversity
    margin, and ``obj_aware``, whether the reconstruction ignores points outside the object mask."""

    section: ClassVar[str] = "loss"

    pose: float = 0.3
    nocs: float = 2.0
    cd: float = 2.0
    diversity: float = 10.0
    recon: float = 15.0
    delta: float = 1.0
    distillation: float = 0.01
    th: float = 0.01
    obj_aware: bool = True


TERMS = ("pose", "nocs", "cd", "diversity", "recon", "delta", "distillation")
# The published weight of every term (the LossWeights defaults), by name.
DEFAULT_WEIGHTS = {t: getattr(LossWeights(), t) for t in TERMS}


def sub_batch_terms(out: dict, batch: dict, w: LossWeights, teacher_feat=None) -> dict[str, torch.Tensor]:
    """Unweighted loss terms of one sub-batch. ``out`` holds the network outputs (camera frame except
    ``recon_delta``), ``batch`` the dataset tensors. The distillation term is present only with a teacher."""
    pts = batch["pts"]
    kpt = out["pred_kpt_3d"]
    terms = {
        "pose": pose_loss(
            out["pred_rotation"],
            out["pred_translation"],
            out["pred_size"],
            batch["rotation_label"],
            batch["translation_label"],
            batch["size_label"],
        ),
        "nocs": nocs_loss(
            out["kpt_nocs"], kpt, batch["rotation_label"], batch["translation_label"], batch["size_label"]
        ),
        "cd": keypoint_cd_loss(kpt, pts),
        "diversity": diversity_loss(kpt, w.th),
        "recon": recon_loss(
            pts, as_points_last(out["recon_model"]), batch.get("pc_mask") if w.obj_aware else None
        ),
        "delta": delta_loss(as_points_last(out["recon_delta"])),
    }
    if teacher_feat is not None:
        terms["distillation"] = distillation_loss(out["distill_feat"], teacher_feat)
    return terms


class CleanPoseLoss:
    """Σ weight·term per sub-batch, then Σ_s (B_s/B)·L_s over the sub-batches (training.md §2 step 4)."""

    def __init__(self, weights: LossWeights | dict | None = None):
        self.w = weights if isinstance(weights, LossWeights) else LossWeights.from_dict(weights)

    def weight(self, name: str) -> float:
        return float(getattr(self.w, name))

    def __call__(self, out: dict, batch: dict, splits: list[int], teacher_feat=None):
        total_b = sum(splits)
        start = 0
        total = None
        logged: dict[str, torch.Tensor] = {}
        for size in splits:
            sl = slice(start, start + size)
            start += size
            o = {
                k: v[sl]
                for k, v in out.items()
                if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == total_b
            }
            b = {
                k: v[sl]
                for k, v in batch.items()
                if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == total_b
            }
            tf = teacher_feat[sl] if teacher_feat is not None else None
            terms = sub_batch_terms(o, b, self.w, tf)
            sub_total = sum(self.weight(k) * v for k, v in terms.items())
            frac = size / total_b
            total = frac * sub_total if total is None else total + frac * sub_total
            for k, v in terms.items():
                logged[k] = logged.get(k, 0.0) + frac * v.detach()
        logged["total"] = total.detach()
        return total, logged
