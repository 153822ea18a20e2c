"""The two stages' objectives, as dicts of named scalar terms (every term is logged; ``total`` is what the
optimizer sees).

Stage 1 (PSR pre-training): L_recon = Chamfer(P, P_hat) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2. The
codebook term is reported but moves nothing: the codes are EMA buffers (VQ-VAE's EMA variant replaces that
term's gradient step by the moving average).
Stage 2 (no pose label): L = L_c + L_f + L_cycle (+ beta x commitment, which keeps the fine-tuned encoder's
descriptors near the codes the EMA memory is tracking)."""

from __future__ import annotations

import torch

from cleanpose_model.selfsup.correspondence import c2f_loss, cycle_loss, downsample_max, pseudo_labels


def chamfer_squared(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's Chamfer: mean over pred of the squared distance to the nearest target point plus the
    reverse, averaged over the batch. (``cleanpose_training.losses.chamfer_distance`` is CleanPose's
    un-squared, halved form.)"""
    d2 = torch.cdist(pred, target).pow(2)
    return (d2.min(2).values.mean(1) + d2.min(1).values.mean(1)).mean()


def stage1_losses(out: dict, target: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    q = out["quant"]
    terms = {
        "chamfer": chamfer_squared(out["shape"], target),
        "codebook": q.codebook_loss.detach(),
        "commit": q.commit_loss,
    }
    terms["total"] = terms["chamfer"] + beta * terms["commit"]
    return terms


def stage2_losses(out: dict, pts: torch.Tensor, cfg, weights: dict, map_fn=map) -> dict[str, torch.Tensor]:
    """``weights``: ``coarse``, ``fine``, ``cycle_pix``, ``cycle_pt``, ``commit``, ``cycle_topk``;
    ``map_fn`` solves the per-object assignments (``pseudo_labels``). The returned dict also carries
    ``hungarian_s`` (seconds spent in the assignment; not a loss)."""
    factor = cfg.pixel_grid // cfg.region_grid
    labels, seconds = pseudo_labels(out["s_c"], out["region_fg"], map_fn)
    s_fc = downsample_max(out["s_f"], out["pixel_fg"], cfg.pixel_grid, factor)
    l_c, l_f = c2f_loss(out["s_c"], s_fc, labels, cfg.tau)
    l_pix, l_pt = cycle_loss(out["s_pix"], out["corr_pts"], pts, cfg.tau, weights["cycle_topk"])
    terms = {
        "coarse": l_c,
        "fine": l_f,
        "cycle_pix": l_pix,
        "cycle_pt": l_pt,
        "commit": out["quant"].commit_loss,
        "codebook": out["quant"].codebook_loss.detach(),
    }
    terms["total"] = (
        weights["coarse"] * l_c
        + weights["fine"] * l_f
        + weights["cycle_pix"] * l_pix
        + weights["cycle_pt"] * l_pt
        + weights["commit"] * cfg.beta * terms["commit"]
    )
    terms["hungarian_s"] = torch.tensor(seconds)
    return terms
