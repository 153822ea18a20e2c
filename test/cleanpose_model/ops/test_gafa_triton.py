"""GAFA's kernels (ops/triton/gafa.py) equal their torch references (ops/gafa.py), in full fp32 products
("ieee": held to fp32 tolerances against float64).

GPU tests; they also run on the CPU through Triton's interpreter
(`TRITON_INTERPRET=1 pytest -m gpu test/cleanpose_model/ops`) where Triton is installed.
"""

import pytest
import torch
from triton_env import DEVICE, needs_triton

from cleanpose_model.ops import gafa as R
from cleanpose_model.ops.triton import gafa as G

pytestmark = [pytest.mark.gpu, needs_triton]


def _r(*shape, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE)


@pytest.mark.parametrize("bsz,k", [(1, 96), (3, 96), (2, 20)])
def test_pairwise_mlp_mean(bsz, k):
    g = torch.Generator().manual_seed(k + bsz)
    x = _r(bsz, k, 3, gen=g, scale=0.1)
    w1, b1 = _r(64, 3, gen=g, scale=3.0), _r(64, gen=g, scale=0.1)
    w2t, b2 = _r(64, 256, gen=g, scale=0.2), _r(256, gen=g, scale=0.1)
    got = G.pairwise_mlp_mean_triton(x, w1, b1, w2t, b2, "ieee")
    ref = R.pairwise_mlp_mean_torch(x.double(), w1.double(), b1.double(), w2t.double(), b2.double())
    assert got.shape == (bsz, k, 256)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bsz,knn", [(1, 16), (2, 32)])
def test_neighbour_aggregate(bsz, knn):
    g = torch.Generator().manual_seed(knn)
    n_kpt, n_pts, c = 24, 200, 256
    kpt = _r(bsz, n_kpt, 3, gen=g, scale=0.1)
    idx = torch.randint(0, n_pts, (bsz, n_kpt, knn), generator=g).to(DEVICE)
    pts = _r(bsz, n_pts, 3, gen=g, scale=0.1)
    knn_xyz = torch.gather(pts, 1, idx.reshape(bsz, -1, 1).expand(-1, -1, 3)).view(bsz, n_kpt, knn, 3)
    proj, q, pre = _r(bsz, n_pts, c, gen=g), _r(bsz, n_kpt, c, gen=g), _r(bsz, n_kpt, c, gen=g)
    weights = (
        _r(64, 3, gen=g, scale=3.0),
        _r(64, gen=g, scale=0.1),
        _r(64, c, gen=g, scale=0.2),
        _r(c, gen=g, scale=0.1),
        _r(c, c, gen=g, scale=0.06),
        _r(c, gen=g, scale=0.1),
        _r(c, c, gen=g, scale=0.06),
        _r(c, gen=g, scale=0.1),
    )
    got = G.neighbour_aggregate_triton(kpt, knn_xyz, idx, proj, q, pre, weights, 5.0, "ieee")
    ref = R.neighbour_aggregate_torch(
        kpt.double(),
        knn_xyz.double(),
        idx,
        proj.double(),
        q.double(),
        pre.double(),
        tuple(w.double() for w in weights),
        5.0,
    )
    assert got.shape == (bsz, n_kpt, c)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
