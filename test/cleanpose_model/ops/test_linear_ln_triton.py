"""The residual-step kernel (product + bias + residual + next LayerNorm, and the whole-FFN variant)
equals its torch reference (ops/linear_ln_triton.py).

GPU tests; they also run on the CPU through Triton's interpreter
(`TRITON_INTERPRET=1 pytest -m gpu test/cleanpose_model/ops`) where Triton is installed.
"""

import pytest
import torch
from triton_env import DEVICE, INTERPRET, needs_triton

from cleanpose_model.ops import linear_ln_triton as L

pytestmark = [pytest.mark.gpu, needs_triton]


@pytest.fixture(autouse=True)
def _fp32_products(monkeypatch):
    # The kernel runs in the fast mode (TF32 allowed); its "ieee" variant is the one a test can hold to
    # fp32 tolerances against a float64 reference.
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    monkeypatch.setattr(L, "_precision", lambda: "ieee")
    if INTERPRET and DEVICE == "cpu":  # the interpreter's tensors live on the CPU
        monkeypatch.setattr(L, "use_kernel", lambda *t: True)
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _r(*shape, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE)


def _params(n, k, gen, hidden=None):
    w, b = _r(n, hidden or k, gen=gen, scale=(hidden or k) ** -0.5), _r(n, gen=gen, scale=0.1)
    norm = (1.0 + _r(n, gen=gen, scale=0.1), _r(n, gen=gen, scale=0.1), 1e-5)
    first = (_r(hidden, k, gen=gen, scale=k**-0.5), _r(hidden, gen=gen, scale=0.1)) if hidden else None
    return w, b, norm, first


def _double(t):
    return None if t is None else tuple(x.double() if torch.is_tensor(x) else x for x in t)


@pytest.mark.parametrize("bsz,rows", [(1, 96), (6, 96), (2, 7), (3, 33)])
@pytest.mark.parametrize("ffn", [False, True])
def test_matches_reference(bsz, rows, ffn):
    g = torch.Generator().manual_seed(rows + bsz + ffn)
    w, b, norm, first = _params(256, 256, g, hidden=256 if ffn else None)
    x, res = _r(bsz, rows, 256, gen=g), _r(bsz, rows, 256, gen=g, scale=3.0)
    y, h = L.residual_linear_ln(x, w, b, res, norm, first)
    ry, rh = L.residual_linear_ln_torch(
        x.double(), w.double(), b.double(), res.double(), _double(norm), _double(first)
    )
    assert y.shape == h.shape == (bsz, rows, 256) and y.is_contiguous() and h.is_contiguous()
    torch.testing.assert_close(y.double(), ry, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(h.double(), rh, rtol=1e-5, atol=2e-5)


def test_without_norm_and_other_widths():
    # the last block of a stack: no next LayerNorm; a hidden width other than the model width
    g = torch.Generator().manual_seed(5)
    w, b, _, first = _params(128, 64, g, hidden=96)
    x, res = _r(2, 40, 64, gen=g), _r(2, 40, 128, gen=g)
    y, h = L.residual_linear_ln(x, w, b, res, None, first)
    ry, _ = L.residual_linear_ln_torch(x.double(), w.double(), b.double(), res.double(), None, _double(first))
    assert h is None
    torch.testing.assert_close(y.double(), ry, rtol=1e-5, atol=2e-5)


def test_without_residual():
    # a plain layer whose output is the start of a residual stream (the NOCS head's MLP into its first norm)
    g = torch.Generator().manual_seed(9)
    w, b, norm, _ = _params(256, 512, g)
    x = _r(2, 96, 512, gen=g)
    y, h = L.residual_linear_ln(x.view(-1, 512), w, b, None, norm)
    ry, rh = L.residual_linear_ln_torch(x.view(-1, 512).double(), w.double(), b.double(), None, _double(norm))
    assert y.shape == (192, 256)
    torch.testing.assert_close(y.double(), ry, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(h.double(), rh, rtol=1e-5, atol=2e-5)


def test_strided_and_expanded_residuals():
    g = torch.Generator().manual_seed(6)
    w, b, norm, _ = _params(256, 256, g)
    x = _r(3, 96, 256, gen=g)
    both = _r(3, 96, 512, gen=g)
    query = _r(96, 256, gen=g)
    for res in (both[..., 256:], query.unsqueeze(0).expand(3, -1, -1), both[..., ::2]):
        y, h = L.residual_linear_ln(x, w, b, res, norm)
        ry, rh = L.residual_linear_ln_torch(x.double(), w.double(), b.double(), res.double(), _double(norm))
        torch.testing.assert_close(y.double(), ry, rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(h.double(), rh, rtol=1e-5, atol=2e-5)


def test_tf32_within_tf32_rounding(monkeypatch):
    monkeypatch.setattr(L, "_precision", lambda: "tf32")
    g = torch.Generator().manual_seed(7)
    w, b, norm, first = _params(256, 256, g, hidden=256)
    x, res = _r(2, 96, 256, gen=g), _r(2, 96, 256, gen=g)
    _, h = L.residual_linear_ln(x, w, b, res, norm, first)
    _, rh = L.residual_linear_ln_torch(
        x.double(), w.double(), b.double(), res.double(), _double(norm), _double(first)
    )
    err = (h.double() - rh).abs().max().item()
    assert err < 2e-2, err  # two TF32 products (10 mantissa bits) of 256 terms, then normalised


def test_rejects_and_falls_back():
    g = torch.Generator().manual_seed(8)
    w, b, norm, _ = _params(100, 256, g)  # output width not a power of two
    x, res = _r(1, 8, 256, gen=g), _r(1, 8, 100, gen=g)
    assert not L.supported(256, w)
    with pytest.raises(ValueError, match="unsupported"):
        L.residual_linear_ln_triton(x, w, b, res, norm)
    y, h = L.residual_linear_ln(x, w, b, res, norm)  # the torch form
    assert y.shape == h.shape == (1, 8, 100)
    w, b, norm, _ = _params(256, 256, g)
    with pytest.raises(ValueError, match="residual"):
        L.residual_linear_ln_triton(x, w, b, _r(1, 9, 256, gen=g), norm)
