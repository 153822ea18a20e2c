"""The CUDA context's per-thread stack reservation, which is most of what an idle context costs.

The driver backs every thread the GPU can hold (an H100: 132 SMs x 2048) with local memory for
``CU_LIMIT_STACK_SIZE`` bytes (1 KB by default) from the moment the context exists: ~200 MB of the
~530 MB an inference process's context takes on an H100. A kernel whose frame needs more makes the
driver grow the reservation at launch (and never shrink it again), so a smaller limit only gives back
what no launched kernel uses. The network's kernels need far less: the largest frame among the
forward's Triton kernels is 136 bytes (bench/module_memory.py lists them), and the H100 run of
bench/module_memory.py's session measured the fast forward's outputs bit-identical with a 256-byte limit.
"""

from __future__ import annotations

import ctypes

import torch

_CU_LIMIT_STACK_SIZE = 0


def _libcuda():
    return ctypes.CDLL("libcuda.so.1")


def thread_stack_limit(device: torch.device | str | int | None = None) -> int | None:
    """The context's per-thread stack limit in bytes (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    with torch.cuda.device(device):
        torch.empty(0, device="cuda")  # makes the primary context current on this thread
        val = ctypes.c_size_t()
        rc = _libcuda().cuCtxGetLimit(ctypes.byref(val), _CU_LIMIT_STACK_SIZE)
    if rc:
        raise RuntimeError(f"cuCtxGetLimit failed with CUresult {rc}")
    return int(val.value)


def set_thread_stack_limit(nbytes: int = 256, device: torch.device | str | int | None = None) -> int | None:
    """Set the per-thread stack limit of ``device``'s context; returns the limit now in effect (the
    driver may round it up), None without CUDA. Call it once at start-up, before capturing CUDA graphs:
    the driver waits for the device to be idle to resize."""
    if nbytes <= 0:
        raise ValueError(f"nbytes must be positive, got {nbytes}")
    if not torch.cuda.is_available():
        return None
    with torch.cuda.device(device):
        torch.empty(0, device="cuda")
        torch.cuda.synchronize()
        rc = _libcuda().cuCtxSetLimit(_CU_LIMIT_STACK_SIZE, ctypes.c_size_t(nbytes))
    if rc:
        raise RuntimeError(f"cuCtxSetLimit failed with CUresult {rc}")
    return thread_stack_limit(device)
