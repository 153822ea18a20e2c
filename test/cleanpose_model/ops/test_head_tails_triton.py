"""The NOCS bin expectation and front-door gate kernels (ops/triton/head_tails.py) equal their torch
references (ops/head_tails.py), in full fp32 products ("ieee") against float64.

GPU tests, run where triton_env says (CUDA, or the CPU through Triton's interpreter).
"""

import pytest
import torch
from triton_env import DEVICE, needs_triton, randn

from cleanpose_model.ops import head_tails as R
from cleanpose_model.ops.triton import head_tails as T

pytestmark = [pytest.mark.gpu, needs_triton]


@pytest.mark.parametrize("bsz,n_kpt", [(1, 96), (4, 96), (3, 10)])
def test_nocs_expectation(bsz, n_kpt):
    g = torch.Generator().manual_seed(bsz + n_kpt)
    cats, bins, c_in = 6, 64, 512
    h = torch.relu(randn(bsz, n_kpt, c_in, gen=g))
    w, b = randn(cats * 3 * bins, c_in, gen=g, scale=0.2), randn(cats * 3 * bins, gen=g)
    category = torch.randint(0, cats, (bsz,), generator=g).to(DEVICE)
    got = T.nocs_expectation_triton(h, w, b, category, bins, "ieee")
    ref = R.nocs_expectation_torch(h.double(), w.double(), b.double(), category, cats, bins)
    assert got.shape == (bsz, n_kpt, 3)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    # rows input, as the fused head passes it
    torch.testing.assert_close(T.nocs_expectation_triton(h.view(-1, c_in), w, b, category, bins, "ieee"), got)


@pytest.mark.parametrize("bsz,n_kpt", [(1, 96), (6, 96), (2, 5)])
def test_front_door_gate(bsz, n_kpt):
    g = torch.Generator().manual_seed(bsz * n_kpt)
    torch.manual_seed(bsz)
    ln, aug, ori = torch.nn.LayerNorm(256), torch.nn.Linear(256, 1), torch.nn.Linear(256, 1)
    with torch.no_grad():
        ln.weight.add_(0.1 * torch.randn(256, generator=g))
        ln.bias.add_(0.1 * torch.randn(256, generator=g))
    ln, aug, ori = (m.to(DEVICE) for m in (ln, aug, ori))
    s, x, loc = (randn(bsz, n_kpt, 256, gen=g) for _ in range(3))
    with torch.no_grad():
        got = T.front_door_gate_triton(s, x, loc, ln, aug, ori)
        ref = R.front_door_gate_torch(
            *(t.double() for t in (s, x, loc)), *(m.double() for m in (ln, aug, ori))
        )
    assert got.shape == (bsz, n_kpt, 256)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_rejects_bad_shapes():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="unsupported"):
        T.nocs_expectation_triton(
            randn(1, 8, 64, gen=g), randn(3 * 10, 64, gen=g), randn(30, gen=g), torch.zeros(1), 10, "ieee"
        )
    both = randn(1, 8, 512, gen=g)
    assert T.gate_supported(both[..., :256], both[..., 256:])  # row-strided slices are read in place
    assert not T.gate_supported(both[..., ::2], both[..., 256:])
