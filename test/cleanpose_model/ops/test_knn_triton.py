"""The k-nearest kernel (ops/triton/knn.py) selects the neighbour sets of its reference, ops/knn.py (GAFA's
topk).

The Triton tests are GPU tests that also run on the CPU through Triton's interpreter
(`TRITON_INTERPRET=1 pytest -m gpu test/cleanpose_model/ops`); the fallback test runs everywhere.
"""

import pytest
import torch
from triton_env import DEVICE, needs_triton

from cleanpose_model.ops import knn as R
from cleanpose_model.ops.triton import knn as K


def _gafa_dist(bsz: int, n_kpt: int, n: int, seed: int) -> torch.Tensor:
    """Keypoint-to-point distances as GAFA forms them, on a cloud like the network's inputs."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(bsz, n, 3, generator=g) * 0.2 - 0.1
    kpt = pts[:, torch.randperm(n, generator=g)[:n_kpt]] + 0.01 * torch.randn(bsz, n_kpt, 3, generator=g)
    return torch.linalg.vector_norm(kpt.unsqueeze(2) - pts.unsqueeze(1), dim=-1)


def _sets(idx: torch.Tensor) -> torch.Tensor:
    return idx.sort(dim=-1).values


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("n_kpt,n,k", [(96, 1024, 16), (96, 1024, 32), (7, 100, 5), (3, 16, 16)])
def test_triton_knn_matches_topk(n_kpt, n, k):
    dist = _gafa_dist(2, n_kpt, n, seed=n + k)
    ref = dist.topk(k, dim=2, largest=False)
    got = K.knn_indices_triton(dist.to(DEVICE), k).cpu()
    assert got.shape == (2, n_kpt, k) and got.dtype == torch.int64
    assert torch.equal(_sets(got), _sets(ref.indices))
    # Smallest first, like topk's sorted output.
    assert torch.equal(torch.gather(dist, 2, got), ref.values)


@pytest.mark.gpu
@needs_triton
def test_triton_knn_ties_keep_the_lower_index():
    dist = torch.tensor([[[0.5, 0.1, 0.3, 0.1, 0.3, 0.3, float("inf"), 0.0]]])
    got = K.knn_indices_triton(dist.to(DEVICE), 6).cpu()
    assert got.tolist() == [[[7, 1, 3, 2, 4, 5]]]
    # Every entry, infinite ones included, is picked exactly once.
    assert sorted(K.knn_indices_triton(dist.to(DEVICE), 8).cpu().flatten().tolist()) == list(range(8))


def test_reference_is_topk_and_checks_k():
    dist = _gafa_dist(2, 9, 50, seed=1)
    assert torch.equal(R.knn_indices(dist, 4), dist.topk(4, dim=2, largest=False).indices)
    with pytest.raises(ValueError):
        R.knn_indices(dist, 51)
