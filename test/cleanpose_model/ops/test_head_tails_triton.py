"""The IAKD heatmap tail and the NOCS bin expectation kernels equal their torch references
(ops/head_tails_triton.py).

GPU tests; they also run on the CPU through Triton's interpreter
(`TRITON_INTERPRET=1 pytest -m gpu test/cleanpose_model/ops`) where Triton is installed.
"""

import pytest
import torch
from triton_env import DEVICE, needs_triton

from cleanpose_model.ops import head_tails_triton as T

pytestmark = [pytest.mark.gpu, needs_triton]


@pytest.fixture(autouse=True)
def _fp32_products(monkeypatch):
    # full-fp32 products, so the kernels can be held to fp32 tolerances against a float64 reference
    monkeypatch.setattr(T, "_precision", lambda: "ieee")


def _r(*shape, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE)


@pytest.mark.parametrize("bsz,n_kpt,n_pts", [(1, 96, 1024), (2, 96, 300), (1, 7, 50)])
def test_keypoint_heatmap(bsz, n_kpt, n_pts):
    g = torch.Generator().manual_seed(n_pts)
    q = _r(bsz, n_kpt, 256, gen=g)
    feats_t = _r(bsz, n_pts, 256, gen=g)
    feats = feats_t.transpose(1, 2)  # (B, C, N) as a strided view, as well as contiguous below
    pts = _r(bsz, n_pts, 3, gen=g, scale=0.1)
    for f in (feats, feats.contiguous()):
        heat, kpt, kfeat = T.keypoint_heatmap_triton(q, f, pts, 0.1)
        ref = T.keypoint_heatmap_torch(q.double(), f.double(), pts.double(), 0.1)
        for got, want in zip((heat, kpt, kfeat), ref, strict=True):
            assert got.shape == want.shape
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bsz,n_kpt", [(1, 96), (4, 96), (3, 10)])
def test_nocs_expectation(bsz, n_kpt):
    g = torch.Generator().manual_seed(bsz + n_kpt)
    cats, bins, c_in = 6, 64, 512
    h = torch.relu(_r(bsz, n_kpt, c_in, gen=g))
    w, b = _r(cats * 3 * bins, c_in, gen=g, scale=0.2), _r(cats * 3 * bins, gen=g)
    category = torch.randint(0, cats, (bsz,), generator=g).to(DEVICE)
    got = T.nocs_expectation_triton(h, w, b, category, bins)
    ref = T.nocs_expectation_torch(h.double(), w.double(), b.double(), category, cats, bins)
    assert got.shape == (bsz, n_kpt, 3)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    # rows input, as the fused head passes it
    torch.testing.assert_close(T.nocs_expectation_triton(h.view(-1, c_in), w, b, category, bins), got)


@pytest.mark.parametrize("bsz,n_kpt", [(1, 96), (6, 96), (2, 5)])
def test_front_door_gate(bsz, n_kpt):
    g = torch.Generator().manual_seed(bsz * n_kpt)
    torch.manual_seed(bsz)
    ln, aug, ori = torch.nn.LayerNorm(256), torch.nn.Linear(256, 1), torch.nn.Linear(256, 1)
    with torch.no_grad():
        ln.weight.add_(0.1 * torch.randn(256, generator=g))
        ln.bias.add_(0.1 * torch.randn(256, generator=g))
    ln, aug, ori = (m.to(DEVICE) for m in (ln, aug, ori))
    s, x, loc = (_r(bsz, n_kpt, 256, gen=g) for _ in range(3))
    with torch.no_grad():
        got = T.front_door_gate_triton(s, x, loc, ln, aug, ori)
        ref = T.front_door_gate_torch(
            *(t.double() for t in (s, x, loc)), *(m.double() for m in (ln, aug, ori))
        )
    assert got.shape == (bsz, n_kpt, 256)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_rejects_bad_shapes():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="unsupported"):
        T.keypoint_heatmap_triton(_r(1, 8, 100, gen=g), _r(1, 100, 20, gen=g), _r(1, 20, 3, gen=g), 0.1)
    with pytest.raises(ValueError, match="unsupported"):
        T.nocs_expectation_triton(
            _r(1, 8, 64, gen=g), _r(3 * 10, 64, gen=g), _r(30, gen=g), torch.zeros(1), 10
        )
    both = _r(1, 8, 512, gen=g)
    assert T.gate_supported(both[..., :256], both[..., 256:])  # row-strided slices are read in place
    assert not T.gate_supported(both[..., ::2], both[..., 256:])
