"""Confounder queue of the front-door encoder (model.md §3.1, §3.6, §7).

The queue is a per-category bank of keypoint-averaged features, a (cat_num, N_q, d) tensor (N_q = 80 for the
published NOCS model). Every forward pass feeds each object the ``select_num`` (12) entries chosen for its
category; all objects of one category share them.

Selection modes
---------------
``"random"``
    The published behaviour: for c = 0..cat_num-1 in order, ``rng.choice(N_q, 12, replace=False)``. With
    ``rng = np.random.RandomState(s)`` this reproduces ``np.random.seed(s)`` followed by the official forward
    (which draws from NumPy's global RNG, cat_num draws per forward). Results change from call to call.
``"deterministic"`` (the node's default)
    The same input always gives the same pose, in every call and every process. It means ``"all"``: attend
    over all N_q entries of the category. The front-door cross-attention takes the queue only as keys/values
    (§3.6), so any number of entries is valid, and the softmax-weighted average over all entries is what the
    random 12-of-80 subsets scatter around. Measured by ``bench/queue_modes.py`` on the parity inputs (200
    seeded random draws, distance to the random-mode mean pose): random draws have median 2.9-4.0 deg /
    8.3-10.1 mm translation / 6.3-7.5 mm size and 90th percentiles 5.1-7.4 deg / 15-19 mm / 10-14 mm; "all"
    gives 0.17-0.95 deg / 1.1-1.7 mm / 0.9-1.3 mm, closer to the centre than 96-100 % of the random draws.
    A fixed 12-entry subset ("spread") lands anywhere in the random spread (percentile ranks 1-99 %).
``"spread"``) is just one random-like draw.
``"spread"``
    A fixed subset of 12 entries evenly spread over the queue (indices round(linspace(0, N_q-1, 12))); kept
    for comparison and for networks whose feature distribution must see exactly 12 entries.
"""

from __future__ import annotations

import numpy as np
import torch

from cleanpose_model.errors import QueueError

MODES = ("random", "deterministic", "all", "spread")
DETERMINISTIC_STRATEGY = "all"


class ConfounderQueue:
    def __init__(self, features: torch.Tensor, select_num: int = 12):
        if features.dim() != 3:
            raise QueueError(f"queue must be (cat_num, N_q, d), got shape {tuple(features.shape)}")
        if features.shape[1] < select_num:
            raise QueueError(
                f"queue holds {features.shape[1]} entries per category, fewer than select_num={select_num}"
            )
        self.features = features
        self.select_num = int(select_num)
        self._fixed_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_tensor_list(cls, tensor_list, select_num: int = 12) -> ConfounderQueue:
        """Stack the published list-of-lists layout (each entry (1, d)) into one tensor."""
        lengths = [len(entries) for entries in tensor_list]
        if len(set(lengths)) != 1:
            raise QueueError(f"queue categories have different lengths {lengths}; expected one N_q for all")
        feats = torch.stack([torch.cat([t.reshape(1, -1) for t in entries], 0) for entries in tensor_list], 0)
        return cls(feats.float(), select_num)

    @classmethod
    def random(
        cls, cat_num: int, length: int, dim: int, seed: int = 0, select_num: int = 12
    ) -> ConfounderQueue:
        """Unit-normal features from ``seed`` (a private generator): the queue of an untrained network."""
        g = torch.Generator().manual_seed(int(seed))
        return cls(torch.randn(cat_num, length, dim, generator=g), select_num)

    @property
    def cat_num(self) -> int:
        return self.features.shape[0]

    @property
    def num_entries(self) -> int:
        return self.features.shape[1]

    @property
    def dim(self) -> int:
        return self.features.shape[2]

    def to(self, device=None, dtype=None) -> ConfounderQueue:
        return ConfounderQueue(self.features.to(device=device, dtype=dtype), self.select_num)

    def indices(self, mode: str = "deterministic", rng=None) -> np.ndarray:
        """(cat_num, k) int64 queue indices per category; k = select_num except for ``"all"``."""
        if mode == "deterministic":
            mode = DETERMINISTIC_STRATEGY
        n = self.num_entries
        if mode == "all":
            return np.tile(np.arange(n, dtype=np.int64), (self.cat_num, 1))
        if mode == "spread":
            row = np.round(np.linspace(0, n - 1, self.select_num)).astype(np.int64)
            return np.tile(row, (self.cat_num, 1))
        if mode == "random":
            if rng is None:
                rng = np.random.mtrand._rand  # NumPy's global RandomState, as the published forward uses
            elif isinstance(rng, (int, np.integer)):
                rng = np.random.RandomState(int(rng))
            # One draw per category in category order: this order is what makes seeded runs reproduce.
            return np.stack(
                [
                    np.asarray(rng.choice(n, self.select_num, replace=False), dtype=np.int64)
                    for _ in range(self.cat_num)
                ]
            )
        raise ValueError(f"unknown queue mode {mode!r}; expected one of {MODES}")

    def gather(self, category: torch.Tensor, indices) -> torch.Tensor:
        """(B, k, d) features per object, from per-category ``indices`` (cat_num, k)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.features.device)
        per_cat = torch.gather(self.features, 1, idx[:, :, None].expand(-1, -1, self.dim))
        return per_cat[category.reshape(-1).to(self.features.device)]

    def select(self, category: torch.Tensor, mode: str = "deterministic", rng=None) -> torch.Tensor:
        """Queue features for each object: (B, k, d) on the queue's device and dtype."""
        category = category.reshape(-1)
        if category.numel() and (int(category.min()) < 0 or int(category.max()) >= self.cat_num):
            raise ValueError(f"category ids must be in [0, {self.cat_num - 1}], got {category.tolist()}")
        if mode == "random":
            return self.gather(category, self.indices("random", rng))
        key = DETERMINISTIC_STRATEGY if mode == "deterministic" else mode
        per_cat = self._fixed_cache.get(key)
        if per_cat is None:
            idx = torch.as_tensor(self.indices(key), device=self.features.device)
            per_cat = torch.gather(self.features, 1, idx[:, :, None].expand(-1, -1, self.dim))
            self._fixed_cache[key] = per_cat
        return per_cat[category.to(self.features.device)]
