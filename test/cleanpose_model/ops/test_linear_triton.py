"""The 3xTF32 linear kernel (ops/triton/linear.py) equals its torch reference (ops/linear.py).

GPU tests, run where triton_env says (CUDA, or the CPU through Triton's interpreter)."""

import pytest
import torch
from triton_env import DEVICE, needs_triton

from cleanpose_model.ops.linear import linear_math
from cleanpose_model.ops.triton.linear import linear_triton

pytestmark = [pytest.mark.gpu, needs_triton]


def _operands(m: int, n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) * k**-0.5
    b = torch.randn(n, generator=g)
    return x.to(DEVICE), w.to(DEVICE), b.to(DEVICE)


# DINOv2-S shapes at 1 and 6 objects (257 tokens each), a ragged one, and a tiny one
@pytest.mark.parametrize(
    "m,n,k", [(257, 1152, 384), (1542, 384, 1536), (1542, 1536, 384), (37, 70, 50), (1, 8, 3)]
)
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_tf32x3_matches_float64_reference_at_float32_accuracy(m, n, k, activation):
    x, w, b = _operands(m, n, k, seed=m + n + k)
    got = linear_triton(x, w, b, activation=activation, precision="tf32x3")
    ref = linear_math(x.double(), w.double(), b.double(), activation=activation)
    assert got.shape == (m, n) and got.dtype == torch.float32
    # float32 rounding of a k-term sum of O(1) terms: a few 1e-6; TF32 alone would be ~1e-3
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-5 * max(1.0, k / 384) ** 0.5)


def test_no_bias_and_strided_input():
    x, w, _ = _operands(300, 64, 96, seed=5)
    xs = torch.cat([x, x], dim=1)[:, :96]  # row stride 192: read in place
    got = linear_triton(xs, w, None, precision="ieee")
    torch.testing.assert_close(got, linear_math(x, w, None), rtol=0, atol=1e-4)


def test_batched_channels_first_in_and_out():
    """A (B, C, N) channels-first tensor through its transposed views, written into a channels-first
    output: the per-point layers' layout."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 40, 130, generator=g).to(DEVICE)  # (B, C, N)
    w = (torch.randn(24, 40, generator=g) * 0.2).to(DEVICE)
    b = torch.randn(24, generator=g).to(DEVICE)
    out = torch.empty(3, 24, 130, device=DEVICE)
    got = linear_triton(x.transpose(1, 2), w, b, activation="relu", out=out.transpose(1, 2))
    ref = linear_math(x.transpose(1, 2).double(), w.double(), b.double(), activation="relu").transpose(1, 2)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)


def test_rejects_bad_operands():
    x, w, b = _operands(4, 8, 16, seed=6)
    with pytest.raises(ValueError, match="precision"):
        linear_triton(x, w, b, precision="fp32")
    with pytest.raises(ValueError, match="expected"):
        linear_triton(x[:, :15], w, b)
    with pytest.raises(ValueError, match="activation"):
        linear_triton(x, w, b, activation="tanh")
    with pytest.raises(ValueError, match="float32"):
        linear_triton(x.half(), w.half(), b)
