"""Where the Triton kernel tests run: on CUDA, or on the CPU through Triton's interpreter
(`TRITON_INTERPRET=1 pytest -m gpu test/cleanpose_model/ops`) where Triton is installed."""

import os

import pytest
import torch

from cleanpose_model.ops.triton import HAVE_TRITON

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not HAVE_TRITON or not (torch.cuda.is_available() or INTERPRET),
    reason="needs Triton and CUDA (or TRITON_INTERPRET=1)",
)


def randn(*shape: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Normal draws from ``gen`` (on the CPU, so a seed gives the same values on every device) times
    ``scale``, on DEVICE."""
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE)
