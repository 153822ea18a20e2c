"""cleanpose_training.distributed: the trainer's device follows the project's device policy."""

from __future__ import annotations

import pytest
import torch

from cleanpose_training import distributed as D


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without CUDA")
def test_unavailable_cuda_falls_back_to_the_cpu_with_a_reason():
    info = D.init("cuda")
    assert info.device == torch.device("cpu")
    assert "CUDA is not available" in info.device_fallback


def test_the_requested_cpu_is_no_fallback():
    info = D.init("cpu")
    assert info.device == torch.device("cpu") and info.device_fallback is None
