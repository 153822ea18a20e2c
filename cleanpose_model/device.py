"""The one device policy of the project: a requested device either exists or fails loudly."""

from __future__ import annotations

import torch

from cleanpose_model.io.errors import DeviceUnavailableError


def resolve_device(device) -> torch.device:
    """``torch.device`` for ``device``; raises ``DeviceUnavailableError`` instead of silently falling back."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {str(device)!r} requested but CUDA is not available in this process "
            "(torch.cuda.is_available() is False); use device='cpu'"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"device {str(device)!r} requested but only {torch.cuda.device_count()} "
            "CUDA device(s) are visible"
        )
    return dev
