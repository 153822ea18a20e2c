"""The ends of two heads in plain torch, as the published modules compute them: the NOCS head's bin
expectation (nn/heads.py) on channels-last rows and the front-door encoder's gated blend
(nn/front_door.py). The references of ``ops/triton/head_tails.py``."""

from __future__ import annotations

import torch


def nocs_expectation_torch(h, weight, bias, category, cat_num: int, bins: int):
    """The published NOCS tail (nn/heads.py) on channels-last rows: h (B, K, C_in) the last hidden layer,
    weight (cat_num * 3 * bins, C_in) the last 1x1 layer -> (B, K, 3)."""
    bsz, n_kpt, _ = h.shape
    logits = torch.nn.functional.linear(h, weight, bias).transpose(1, 2)
    logits = logits.reshape(bsz, cat_num, 3, bins, n_kpt)
    logits = logits[torch.arange(bsz, device=h.device), category]
    prob = torch.softmax(logits, dim=2).permute(0, 3, 1, 2)
    i = torch.arange(bins, device=h.device, dtype=h.dtype)
    return torch.matmul(prob, (-0.5 + (i + 0.5) / bins).unsqueeze(1)).squeeze(-1)


def front_door_gate_torch(s, x, local_feat, ln, aug_linear, ori_linear):
    """The published end of the front-door encoder (nn/front_door.py): the two branches' sum normalised,
    and a learned per-keypoint gate between it and the input features."""
    fused = ln(s + x)
    w = torch.sigmoid(aug_linear(fused) + ori_linear(local_feat))
    return w * fused + (1.0 - w) * local_feat
