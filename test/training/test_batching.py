"""cleanpose_training.batching: worker count for the machine, keyed batches, collation."""

from __future__ import annotations

import numpy as np
import torch

from cleanpose_training.batching import EpochKeyed, IterationBatchSampler, collate, loader_workers


def test_loader_workers_leave_one_cpu_for_the_training_process():
    assert loader_workers(14, cpu_count=2) == 1
    assert loader_workers(14, cpu_count=16) == 14
    assert loader_workers(4, cpu_count=1) == 0  # one core: load in the training process
    assert loader_workers(0, cpu_count=64) == 0  # 0 stays "no worker processes"


class _Keyed:
    """A dataset whose items say which (epoch, index) produced them."""

    def __init__(self, n):
        self.n, self.epoch = n, None

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, i):
        return {"key": np.array([self.epoch, i]), "category_label": np.array([i % 3]), "name": f"item{i}"}


def test_keyed_batches_walk_epoch_permutations_and_collate():
    ds = _Keyed(5)
    sampler = IterationBatchSampler(len(ds), 4, 0, 3, seed=1, source_id=0)
    keys = [k for batch in sampler for k in batch]
    # 12 positions over a dataset of 5: epochs 0, 0.., 1.., 2; every epoch is a permutation of the indices
    assert [e for e, _ in keys] == [0] * 5 + [1] * 5 + [2] * 2
    assert sorted(i for e, i in keys if e == 0) == list(range(5))
    assert sorted(i for e, i in keys if e == 1) == list(range(5))
    b = collate([EpochKeyed(ds)[k] for k in sampler.keys_for(1)])
    assert b["key"].tolist() == [list(k) for k in sampler.keys_for(1)]
    assert b["category_label"].dtype == torch.int64 and b["category_label"].shape == (4,)
    assert b["name"] == [f"item{i}" for _, i in sampler.keys_for(1)]
