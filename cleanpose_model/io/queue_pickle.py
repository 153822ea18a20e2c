"""Read the published confounder queue (``tensor_list.pkl``) without executing arbitrary pickle code.

The official training script writes the queue with a plain ``pickle.dump`` of a list (one entry per category)
of lists of (1, 256) CUDA tensors. A plain ``pickle.load`` would (a) run whatever callable the file names and
(b) need CUDA, because a pickled tensor stores its storage as ``torch.save`` bytes with the device recorded.
The unpickler below admits only the few globals that a pickled tensor needs, and replaces torch's storage
loader by one that uses ``torch.load(weights_only=True, map_location="cpu")``: the storage bytes are
themselves a pickle, and torch's own loader would read them with ``weights_only=False``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle

import torch

from cleanpose_model.errors import QueueError, UnsafePickleError


def _load_storage_from_bytes(data: bytes):
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError(f"storage payload must be bytes, got {type(data).__name__}")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(f"tensor storage payload refused by the weights-only loader: {exc}") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f"tensor storage payload is a {type(storage).__name__}, not a storage")
    return storage


# Everything a pickled dense torch tensor references (torch 1.x and 2.x); nothing else is admitted.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
}


class RestrictedTensorUnpickler(pickle.Unpickler):
    """Unpickler that admits lists, plain containers and torch tensors, and rejects every other global."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global '{module}.{name}': the queue file may only contain lists of "
                "tensors (this file is either not a confounder queue or has been tampered with)"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refusing persistent id {pid!r}: a queue pickle has none")


def load_tensor_list(path) -> list[list[torch.Tensor]]:
    """Load ``tensor_list.pkl`` as ``cat_num`` lists of float32 CPU tensors of shape (1, d).

    Raises ``UnsafePickleError`` for any pickle that names a non-tensor global and ``QueueError`` for
    unreadable files or a wrong structure.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            obj = RestrictedTensorUnpickler(fh).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"unsafe queue pickle: {path}: {exc}") from None
    except FileNotFoundError:
        raise QueueError(f"queue file not found: {path}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        RuntimeError,
        AttributeError,
        IndexError,
        KeyError,
        OSError,
    ) as exc:
        raise QueueError(f"not a valid queue pickle: {path}: {type(exc).__name__}: {exc}") from None
    return _validate(obj, path)


def _validate(obj, path: str) -> list[list[torch.Tensor]]:
    if not isinstance(obj, (list, tuple)) or not obj:
        raise QueueError(
            f"not a valid queue pickle: {path}: expected a non-empty list of per-category "
            f"lists, got {type(obj).__name__}"
        )
    out: list[list[torch.Tensor]] = []
    dim = None
    for c, entries in enumerate(obj):
        if not isinstance(entries, (list, tuple)) or not entries:
            raise QueueError(
                f"not a valid queue pickle: {path}: category {c} is a {type(entries).__name__} "
                "(expected a non-empty list of tensors)"
            )
        cat = []
        for j, t in enumerate(entries):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise QueueError(f"not a valid queue pickle: {path}: entry [{c}][{j}] is not a float tensor")
            t = t.detach().reshape(1, -1).to(device="cpu", dtype=torch.float32)
            if dim is None:
                dim = t.shape[1]
            if t.shape[1] != dim:
                raise QueueError(
                    f"not a valid queue pickle: {path}: entry [{c}][{j}] has {t.shape[1]} "
                    f"features, the others {dim}"
                )
            cat.append(t)
        out.append(cat)
    return out
