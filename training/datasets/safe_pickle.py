"""Restricted unpickler for dataset pickles (label files, object models, detection results).

The NOCS / DPDN / HouseCat6D tools write plain containers of numpy arrays. Only the globals that such files
need are admitted, so a tampered file cannot run code while being read.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# numpy moved its internals from numpy.core to numpy._core in 2.0; files written by either version must load.
_NUMPY_GLOBALS = {
    (mod, name)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}

_BUILTIN_GLOBALS = (
    {
        ("builtins", n)
        for n in ("set", "frozenset", "slice", "complex", "range", "bytearray", "list", "dict", "tuple")
    }
    | {("__builtin__", n) for n in ("set", "frozenset", "slice", "complex")}
    | {
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # protocol-2 pickles of bytes (numpy buffers written by Python 2 era tools)
    }
)


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle refers to a global outside the admitted set."""


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS or (module, name) in _BUILTIN_GLOBALS:
            return super().find_class(module, name)
        # numpy dtypes pickle as numpy.dtypes.<Name>DType in numpy >= 1.25
        if module == "numpy.dtypes" and name.endswith("DType") and hasattr(np.dtypes, name):
            return getattr(np.dtypes, name)
        raise UnsafePickleError(f"global '{module}.{name}' is not allowed in a dataset pickle")


def loads(data: bytes, encoding: str = "ASCII") -> Any:
    return SafeUnpickler(io.BytesIO(data), encoding=encoding).load()


def load(path: str | Path) -> Any:
    """Load a dataset pickle; Python-2 pickles (NOCS originals) are retried with latin1 encoding."""
    data = Path(path).read_bytes()
    try:
        return loads(data)
    except UnicodeDecodeError:
        return loads(data, encoding="latin1")


def dump(obj: Any, path: str | Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
