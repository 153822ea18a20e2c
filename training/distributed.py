"""torch.distributed helpers: the same command runs on the CPU, one GPU, or N GPUs under torchrun.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them the run is a single process and nothing is
initialised.
Backend: NCCL when the device is CUDA, gloo otherwise (the CPU tests run 2 gloo processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from cleanpose_model.device import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Why ``device`` is not the one asked for (the trainer logs it); None when it is.
    device_fallback: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str = "auto", local_rank: int = 0) -> tuple[torch.device, str | None]:
    """The device of this rank and, when it is not the one asked for, why (the project's one policy,
    ``cleanpose_model.device.resolve_device``: an unavailable CUDA device falls back to the CPU)."""
    device, reason = resolve_device(requested, fallback=True)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count()), reason
    return device, reason


def init(requested_device: str = "auto") -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device, reason = pick_device(requested_device, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, device, reason)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_cat(info: DistInfo, t: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors of all ranks in rank order (dim 0)."""
    if not info.enabled:
        return t
    out = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, 0)


def all_reduce_mean(info: DistInfo, t: torch.Tensor) -> torch.Tensor:
    if not info.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world_size


def broadcast_(info: DistInfo, t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if info.enabled:
        dist.broadcast(t, src)
    return t
