"""The restricted unpickler for the published confounder queue (tensor_list.pkl)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.serialization

from cleanpose_model.errors import QueueError, UnsafePickleError
from cleanpose_model.io.queue_pickle import load_tensor_list


def _queue(cat_num=3, n=5, d=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, d, generator=g) for _ in range(n)] for _ in range(cat_num)]


def test_loads_list_of_lists_of_tensors(tmp_path):
    q = _queue()
    path = tmp_path / "tensor_list.pkl"
    path.write_bytes(pickle.dumps(q))
    loaded = load_tensor_list(path)
    assert len(loaded) == 3 and all(len(c) == 5 for c in loaded)
    for a, b in zip(q, loaded):
        for x, y in zip(a, b):
            assert y.shape == (1, 256) and y.dtype == torch.float32 and y.device.type == "cpu"
            assert torch.equal(x, y)


def test_cuda_storage_is_redirected_to_cpu(tmp_path, monkeypatch):
    # The published file records its storages on 'cuda:0'; writing one needs no GPU: pickling a tensor
    # asks torch.serialization.location_tag for the device string it records.
    q = _queue(2, 3)
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    data = pickle.dumps(q)
    monkeypatch.undo()
    assert b"cuda:0" in data
    path = tmp_path / "tensor_list.pkl"
    path.write_bytes(data)
    loaded = load_tensor_list(path)
    assert all(t.device.type == "cpu" for c in loaded for t in c)
    assert torch.equal(loaded[1][2], q[1][2])


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_rejects_pickle_that_would_run_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "tensor_list.pkl"
    path.write_bytes(pickle.dumps([[torch.zeros(1, 4)], [_RunsShell(marker)]]))
    with pytest.raises(UnsafePickleError) as err:
        load_tensor_list(path)
    assert "system" in str(err.value) and str(path) in str(err.value)
    assert "refusing to unpickle global" in str(err.value)
    assert not marker.exists()


class _EvilStorage:
    """A 'storage' whose payload is itself a pickle that runs a shell command (torch's own storage loader
    would read it with weights_only=False)."""

    def __init__(self, marker):
        self.payload = pickle.dumps(_RunsShell(marker), protocol=2)

    def __reduce__(self):
        import torch.storage

        return (torch.storage._load_from_bytes, (self.payload,))


def test_rejects_malicious_storage_payload(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "tensor_list.pkl"
    path.write_bytes(pickle.dumps([[_EvilStorage(marker)]]))
    with pytest.raises(UnsafePickleError) as err:
        load_tensor_list(path)
    assert "storage payload" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"a": 1}, "expected a non-empty list"),
        ([[1.0, 2.0]], "is not a float tensor"),
        ([[torch.zeros(1, 4)], [torch.zeros(1, 5)]], "has 5 features"),
    ],
)
def test_wrong_structure_is_named(tmp_path, obj, message):
    path = tmp_path / "q.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(QueueError, match=message):
        load_tensor_list(path)


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "q.pkl"
    data = pickle.dumps(_queue(2, 2))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(QueueError, match="not a valid queue pickle"):
        load_tensor_list(path)
    with pytest.raises(QueueError, match="queue file not found"):
        load_tensor_list(tmp_path / "nope.pkl")
