"""k nearest neighbours by a distance table (GAFA's neighbour choice, nn/gafa.py): the reference of
``ops/triton/knn.py``."""

from __future__ import annotations

import torch


def knn_indices(dist: torch.Tensor, k: int) -> torch.Tensor:
    """dist (..., N) float -> int64 (..., k): the indices of the k smallest entries of each row, ascending
    (``topk``'s order; its choice among entries equal to the k-th is unspecified)."""
    n = dist.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    return dist.topk(k, dim=-1, largest=False).indices
