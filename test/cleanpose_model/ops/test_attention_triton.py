"""The one-kernel attention core (ops/triton/attention.py) equals the torch form (ops/attention.py).

GPU tests, run where triton_env says (CUDA, or the CPU through Triton's interpreter).
"""

import pytest
import torch
from triton_env import DEVICE, needs_triton

from cleanpose_model.ops.attention import attention_math
from cleanpose_model.ops.triton import attention as A

pytestmark = [pytest.mark.gpu, needs_triton]


def _qkv(bsz: int, lq: int, s: int, c: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(bsz, lq, c, generator=g) * 2.0
    kv = torch.randn(bsz, s, 2 * c, generator=g)
    return q.to(DEVICE, dtype), kv.to(DEVICE, dtype)


@pytest.mark.parametrize("bsz,lq,s", [(1, 96, 1024), (3, 96, 96), (2, 96, 80), (1, 7, 13), (2, 33, 65)])
def test_fp32_matches_math(bsz, lq, s):
    q, kv = _qkv(bsz, lq, s, 256, seed=lq + s)
    k, v = kv[..., :256], kv[..., 256:]  # strided slices of one product, read in place
    got = A.attention_triton(q, k, v, heads=4, precision="ieee")
    ref = attention_math(q.double(), k.double(), v.double(), heads=4)
    assert got.shape == (bsz, lq, 256) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-5)


def test_tf32_within_tf32_rounding():
    q, kv = _qkv(2, 96, 300, 256, seed=1)
    k, v = kv[..., :256], kv[..., 256:]
    got = A.attention_triton(q, k, v, heads=4, precision="tf32")
    ref = attention_math(q.double(), k.double(), v.double(), heads=4)
    err = (got.double() - ref).abs().max().item()
    assert err < 2e-2, err  # TF32 keeps 10 mantissa bits; scores of magnitude ~30 before the softmax


def test_fp16_inputs_give_fp16_output():
    q, kv = _qkv(2, 96, 96, 256, seed=2, dtype=torch.float16)
    got = A.attention_triton(q, kv[..., :256], kv[..., 256:], heads=4, precision="ieee")
    ref = attention_math(q.double(), kv[..., :256].double(), kv[..., 256:].double(), heads=4)
    assert got.dtype == torch.float16
    assert (got.double() - ref).abs().max().item() < 2e-2


def test_rejects_bad_layouts():
    q, kv = _qkv(1, 8, 8, 256, seed=3)
    with pytest.raises(ValueError, match="head dim"):
        A.attention_triton(q[..., :252], kv[..., :252], kv[..., 256:508], heads=4, precision="ieee")
    with pytest.raises(ValueError, match="unit stride"):
        A.attention_triton(kv[..., ::2], kv[..., :256], kv[..., 256:], heads=4, precision="ieee")
    with pytest.raises(ValueError, match="precision"):
        A.attention_triton(q, kv[..., :256], kv[..., 256:], heads=4, precision="fp32")
