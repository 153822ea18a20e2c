"""The residual + LayerNorm kernels (ops/triton/layernorm.py) equal their torch forms (ops/layernorm.py).

The torch forms are checked against the formula on the CPU; the kernels are GPU tests that also run on the
CPU through Triton's interpreter (`TRITON_INTERPRET=1 pytest -m gpu test/cleanpose_model/ops`).
"""

import pytest
import torch
import torch.nn.functional as F
from triton_env import DEVICE, needs_triton

from cleanpose_model.ops import layernorm as R
from cleanpose_model.ops.triton import layernorm as L

EPS = 1e-6


def _rows(m: int, n: int, seed: int, dtype=torch.float16, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    res = torch.randn(m, n, generator=g) * 3.0 + torch.randn(n, generator=g)  # off-centre rows
    y = torch.randn(m, n, generator=g).to(dtype)
    gamma = torch.rand(n, generator=g) * 0.5
    w = 1.0 + 0.2 * torch.randn(n, generator=g)
    b = 0.1 * torch.randn(n, generator=g)
    return [t.to(device) for t in (res, y, gamma, w, b)]


def test_residual_math_is_the_autocast_formula():
    res, y, gamma, w, b = _rows(9, 384, seed=0)
    expect_res = res + gamma * y.float()
    expect = F.layer_norm(expect_res.double(), (384,), w.double(), b.double(), EPS)
    r = res.clone()
    got = R.residual_layer_norm_math(r, y, gamma, w, b, EPS, torch.float16)
    assert got.dtype == torch.float16 and got.shape == (9, 384)
    torch.testing.assert_close(r, expect_res, rtol=0, atol=0)
    # only the final rounding to fp16 (relative 2**-11) separates it from the float64 norm
    assert ((got.double() - expect) / expect.abs().clamp_min(1.0)).abs().max() < 2**-10
    # without a norm the residual is still updated and nothing else is returned
    r = res.clone()
    assert R.residual_layer_norm_math(r, y, gamma, None, None, EPS, torch.float16) is None
    torch.testing.assert_close(r, expect_res, rtol=0, atol=0)


def test_embed_math_adds_class_token_and_positions():
    g = torch.Generator().manual_seed(1)
    patches = torch.randn(2, 5, 384, generator=g).to(torch.bfloat16)
    cls, pos = torch.randn(384, generator=g), torch.randn(6, 384, generator=g)
    base = pos.clone()
    base[0] += cls
    w, b = torch.ones(384), torch.zeros(384)
    res, out = R.embed_layer_norm_math(patches, base, w, b, EPS, torch.bfloat16)
    tokens = torch.cat([cls.expand(2, 1, 384), patches.float()], dim=1) + pos  # the published order
    torch.testing.assert_close(res, tokens, rtol=0, atol=0)
    torch.testing.assert_close(out, F.layer_norm(tokens, (384,), eps=EPS).to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("m,n", [(257, 384), (1542, 384), (7, 384), (33, 100), (1, 64)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_residual_kernel_matches_math(m, n, dtype):
    res, y, gamma, w, b = _rows(m, n, seed=m + n, dtype=dtype, device=DEVICE)
    r_ref, r_got = res.clone(), res.clone()
    ref = R.residual_layer_norm_math(r_ref, y, gamma, w, b, EPS, dtype)
    got = L.residual_layer_norm_triton(r_got, y, gamma, w, b, EPS, dtype)
    assert got.dtype == dtype and got.shape == (m, n)
    # fp32 residual: a contracted multiply-add on the GPU may round once less
    torch.testing.assert_close(r_got, r_ref, rtol=1e-6, atol=1e-6)
    step = 2**-10 if dtype == torch.float16 else 2**-7  # one rounding step of the half output
    err = ((got.float() - ref.float()) / ref.float().abs().clamp_min(1.0)).abs().max().item()
    assert err <= step, err


@pytest.mark.gpu
@needs_triton
def test_residual_kernel_without_norm_and_strided_rows():
    res, y, gamma, _, _ = _rows(300, 384, seed=3, device=DEVICE)
    wide = torch.zeros(300, 512, device=DEVICE, dtype=torch.float16)
    wide[:, :384] = y
    r_ref, r_got = res.clone(), res.clone()
    R.residual_layer_norm_math(r_ref, y, gamma, None, None, EPS, torch.float16)
    out = L.residual_layer_norm_triton(r_got, wide[:, :384], gamma, None, None, EPS, torch.float16)
    assert out is None
    torch.testing.assert_close(r_got, r_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("bsz,p", [(1, 256), (6, 256), (2, 9)])
def test_embed_kernel_matches_math(bsz, p):
    g = torch.Generator().manual_seed(bsz * p)
    patches = torch.randn(bsz, p, 384, generator=g).to(DEVICE, torch.float16)
    base = torch.randn(p + 1, 384, generator=g).to(DEVICE)
    w = (1.0 + 0.2 * torch.randn(384, generator=g)).to(DEVICE)
    b = (0.1 * torch.randn(384, generator=g)).to(DEVICE)
    res_ref, ref = R.embed_layer_norm_math(patches, base, w, b, EPS, torch.float16)
    res, got = L.embed_layer_norm_triton(patches, base, w, b, EPS, torch.float16)
    assert res.shape == (bsz, p + 1, 384) and res.dtype == torch.float32 and got.dtype == torch.float16
    torch.testing.assert_close(res, res_ref, rtol=0, atol=0)
    err = ((got.float() - ref.float()) / ref.float().abs().clamp_min(1.0)).abs().max().item()
    assert err <= 2**-10, err


@pytest.mark.gpu
@needs_triton
def test_rejects_bad_inputs():
    res, y, gamma, w, b = _rows(4, 384, seed=4, device=DEVICE)
    with pytest.raises(ValueError, match="float32"):
        L.residual_layer_norm_triton(res.half(), y, gamma, w, b, EPS, torch.float16)
    with pytest.raises(ValueError, match="unit stride"):
        L.residual_layer_norm_triton(res.t().contiguous().t(), y, gamma, w, b, EPS, torch.float16)
    with pytest.raises(ValueError, match="base"):
        L.embed_layer_norm_triton(y.view(1, 4, 384), res, w, b, EPS, torch.float16)
