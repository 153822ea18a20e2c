"""Iteration-addressed batching shared by the trainer and the queue initialisation: every sample of a run is
named by a key (epoch, index) that is a pure function of (seed, iteration, rank, position), so a resumed or
re-sharded run reads the same samples, whatever the DataLoader worker count.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger("cleanpose.train")


class EpochKeyed(Dataset):
    """Adapter: item key (epoch, index) → ``ds.set_epoch(epoch); ds[index]``. The datasets key their
    randomness on (seed, epoch, index), so a key fully determines the sample in any worker."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key):
        epoch, index = key
        if getattr(self.ds, "epoch", None) != epoch and hasattr(self.ds, "set_epoch"):
            self.ds.set_epoch(int(epoch))
        return self.ds[int(index)]


class IterationBatchSampler(Sampler):
    """Batches of (epoch, index) keys for iterations [start, stop) of one rank.

    Global sample position p = it·bs·W + rank·bs + j walks through per-epoch permutations of the dataset, so
    the W ranks read disjoint shards of the same global sequence, and the sequence does not depend on W·bs
    splits other than through p."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        start: int,
        stop: int,
        seed: int,
        source_id: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if n <= 0:
            raise ValueError("empty training dataset")
        self.n, self.bs, self.start, self.stop = n, batch_size, start, stop
        self.seed, self.source_id, self.rank, self.world = seed, source_id, rank, world_size
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        p = self._perm_cache.get(epoch)
        if p is None:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            p = np.random.default_rng([self.seed, epoch, 0xDA7A, self.source_id]).permutation(self.n)
            self._perm_cache[epoch] = p
        return p

    def keys_for(self, it: int) -> list[tuple[int, int]]:
        base = it * self.bs * self.world + self.rank * self.bs
        out = []
        for j in range(self.bs):
            p = base + j
            epoch, off = divmod(p, self.n)
            out.append((epoch, int(self._perm(epoch)[off])))
        return out

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        for it in range(self.start, self.stop):
            yield self.keys_for(it)


def collate(samples: list[dict]) -> dict:
    """Stack tensors, arrays and numbers of the samples' dicts; anything else (names) stays a list."""
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        if torch.is_tensor(vals[0]):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], np.ndarray) or (np.isscalar(vals[0]) and not isinstance(vals[0], str)):
            out[k] = torch.from_numpy(np.stack([np.asarray(v) for v in vals]))
        else:
            out[k] = vals
    if "category_label" in out:
        out["category_label"] = out["category_label"].reshape(len(samples)).long()
    return out


def loader_workers(configured: int, cpu_count: int | None = None) -> int:
    """DataLoader worker processes for this machine: the configured count, capped at one less than the CPU
    count (the training process itself needs a core; on a 2-core machine that means one worker)."""
    cpus = os.cpu_count() if cpu_count is None else cpu_count
    cap = max(0, (cpus or 1) - 1)
    return max(0, min(int(configured), cap))


def _worker_init(_worker_id: int) -> None:
    # N workers x (OpenCV's own thread pool) oversubscribes the cores; the workers are the parallelism.
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def iteration_loader(
    ds: Dataset, sampler: IterationBatchSampler, workers: int, start_method: str, pin_memory: bool
) -> DataLoader:
    """The DataLoader of one training source: keyed items, ``workers`` processes started by
    ``start_method`` (0 = in this process)."""
    # Prefetching and a start method only mean something with worker processes.
    more = {"prefetch_factor": 4, "multiprocessing_context": start_method} if workers > 0 else {}
    return DataLoader(
        EpochKeyed(ds),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=_worker_init,
        pin_memory=pin_memory,
        **more,
    )
