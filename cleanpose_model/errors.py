"""Exception types of cleanpose_model: loading weights, queues and checkpoints, and device availability.

Every loader in ``cleanpose_model.io`` turns low-level failures (torch/pickle/safetensors tracebacks) into one
of these, so a user sees which file is wrong and why, not a stack from deep inside torch. A leaf module: the
queue, the device policy and the loaders all raise these without importing each other.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of all weight/queue/checkpoint loading failures."""


class InvalidCheckpointFile(CheckpointError):
    """The file cannot be read at all (missing, truncated, corrupt, not a checkpoint)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"not a valid checkpoint: {self.path}: {reason}")


class StateDictMismatch(CheckpointError):
    """Key names or shapes of a state_dict do not match the network they are loaded into."""

    def __init__(self, message: str, missing=(), unexpected=(), shape_mismatches=()):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        # (key, expected shape, got shape)
        self.shape_mismatches = list(shape_mismatches)
        super().__init__(message)


class WrongVariantError(StateDictMismatch):
    """The file holds another network variant or dataset configuration than the one requested."""


class CheckpointFormatError(CheckpointError):
    """A safetensors file that is readable but is not (this version of) our checkpoint format."""


class QueueError(CheckpointError):
    """The confounder queue is missing or has the wrong structure."""


class UnsafePickleError(QueueError):
    """A pickle asked for a global that the restricted unpickler does not admit."""


class DeviceUnavailableError(RuntimeError):
    """The requested device (e.g. ``cuda``) is not available in this process."""
