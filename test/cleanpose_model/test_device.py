"""The one device policy: strict by default, CPU with a stated reason when the caller allows a fallback."""

from __future__ import annotations

import pytest
import torch

from cleanpose_model.device import resolve_device
from cleanpose_model.errors import DeviceUnavailableError


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _cuda_devices(monkeypatch, n: int):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_cpu_is_always_available(monkeypatch):
    _no_cuda(monkeypatch)
    assert resolve_device("cpu") == (torch.device("cpu"), None)
    assert resolve_device(torch.device("cpu"), fallback=True) == (torch.device("cpu"), None)


def test_cuda_without_cuda_is_an_error_unless_fallback(monkeypatch):
    _no_cuda(monkeypatch)
    with pytest.raises(
        DeviceUnavailableError, match=r"'cuda' requested but CUDA is not available.*use device='cpu'"
    ):
        resolve_device("cuda")
    device, reason = resolve_device("cuda:0", fallback=True)
    assert device == torch.device("cpu")
    assert "'cuda:0' requested but CUDA is not available" in reason and reason.endswith("running on the CPU")


def test_cuda_index_beyond_the_visible_devices(monkeypatch):
    _cuda_devices(monkeypatch, 2)
    assert resolve_device("cuda:1") == (torch.device("cuda:1"), None)
    with pytest.raises(
        DeviceUnavailableError, match=r"'cuda:2' requested but only 2 CUDA device\(s\) are visible"
    ):
        resolve_device("cuda:2")
    assert resolve_device("cuda:2", fallback=True).device == torch.device("cpu")


def test_auto_is_a_choice_not_a_fallback(monkeypatch):
    _no_cuda(monkeypatch)
    assert resolve_device("auto") == (torch.device("cpu"), None)
    assert resolve_device(None) == (torch.device("cpu"), None)
    _cuda_devices(monkeypatch, 1)
    assert resolve_device("auto") == (torch.device("cuda"), None)
