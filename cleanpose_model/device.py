"""The one device policy of the project: a requested device either exists, or the caller said it may fall back
and is told why it did.

    device, reason = resolve_device("cuda", fallback=True)  # the node: run anyway, log the reason
    device = resolve_device("cuda").device                  # tools and the model API: fail loudly

``"auto"`` means CUDA when this process has it, else the CPU (a choice, not a fallback: no reason given).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cleanpose_model.errors import DeviceUnavailableError


class DeviceChoice(NamedTuple):
    device: torch.device
    # Why ``device`` is not what was asked for (for the caller's log); None when it is.
    fallback_reason: str | None = None


def _unavailable(requested: str) -> str | None:
    """Why ``requested`` cannot be used in this process, or None when it can."""
    dev = torch.device(requested)
    if dev.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return (
            f"device {requested!r} requested but CUDA is not available in this process "
            "(torch.cuda.is_available() is False)"
        )
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        return (
            f"device {requested!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return None


def resolve_device(requested="auto", fallback: bool = False) -> DeviceChoice:
    """The ``torch.device`` to run on for ``requested`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
    ``torch.device``). An unavailable device raises ``DeviceUnavailableError``, or with ``fallback`` gives
    the CPU and the reason in ``fallback_reason``."""
    if requested is None or str(requested) in ("", "auto"):
        return DeviceChoice(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    requested = str(requested)
    problem = _unavailable(requested)
    if problem is None:
        return DeviceChoice(torch.device(requested))
    if not fallback:
        raise DeviceUnavailableError(f"{problem}; use device='cpu'")
    return DeviceChoice(torch.device("cpu"), f"{problem}: running on the CPU")
