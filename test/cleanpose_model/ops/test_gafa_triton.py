"""GAFA's kernels (ops/triton/gafa.py) equal their torch references (ops/gafa.py), in full fp32 products
("ieee": held to fp32 tolerances against float64).

GPU tests, run where triton_env says (CUDA, or the CPU through Triton's interpreter).
"""

import pytest
import torch
from triton_env import DEVICE, needs_triton, randn

from cleanpose_model.ops import gafa as R
from cleanpose_model.ops.triton import gafa as G

pytestmark = [pytest.mark.gpu, needs_triton]


@pytest.mark.parametrize("bsz,k", [(1, 96), (3, 96), (2, 20)])
def test_pairwise_mlp_mean(bsz, k):
    g = torch.Generator().manual_seed(k + bsz)
    x = randn(bsz, k, 3, gen=g, scale=0.1)
    w1, b1 = randn(64, 3, gen=g, scale=3.0), randn(64, gen=g, scale=0.1)
    w2t, b2 = randn(64, 256, gen=g, scale=0.2), randn(256, gen=g, scale=0.1)
    got = G.pairwise_mlp_mean_triton(x, w1, b1, w2t, b2, "ieee")
    ref = R.pairwise_mlp_mean_torch(x.double(), w1.double(), b1.double(), w2t.double(), b2.double())
    assert got.shape == (bsz, k, 256)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bsz,knn", [(1, 16), (2, 32)])
def test_neighbour_aggregate(bsz, knn):
    g = torch.Generator().manual_seed(knn)
    n_kpt, n_pts, c = 24, 200, 256
    kpt = randn(bsz, n_kpt, 3, gen=g, scale=0.1)
    idx = torch.randint(0, n_pts, (bsz, n_kpt, knn), generator=g).to(DEVICE)
    pts = randn(bsz, n_pts, 3, gen=g, scale=0.1)
    knn_xyz = torch.gather(pts, 1, idx.reshape(bsz, -1, 1).expand(-1, -1, 3)).view(bsz, n_kpt, knn, 3)
    proj, q, pre = randn(bsz, n_pts, c, gen=g), randn(bsz, n_kpt, c, gen=g), randn(bsz, n_kpt, c, gen=g)
    weights = (
        randn(64, 3, gen=g, scale=3.0),
        randn(64, gen=g, scale=0.1),
        randn(64, c, gen=g, scale=0.2),
        randn(c, gen=g, scale=0.1),
        randn(c, c, gen=g, scale=0.06),
        randn(c, gen=g, scale=0.1),
        randn(c, c, gen=g, scale=0.06),
        randn(c, gen=g, scale=0.1),
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
