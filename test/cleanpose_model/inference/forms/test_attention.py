"""Inference forms of the transformer layers (inference/forms/attention.py) compute the published layers;
the torch attention core (ops/attention.py) is the module formula."""

from __future__ import annotations

import pytest
import torch

from cleanpose_model.inference.forms.attention import FusedAttnLayer, FusedSelfAttnLayer, attention_core
from cleanpose_model.nn.attention import AttnLayer, SelfAttnLayer
from cleanpose_model.ops.attention import attention_math


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_attention_math_is_the_module_formula():
    mha = torch.nn.MultiheadAttention(256, 4, batch_first=True).eval()
    q, mem = _rand(2, 96, 256, seed=1), _rand(2, 50, 256, seed=2)
    c = 256
    w, b = mha.in_proj_weight, mha.in_proj_bias
    with torch.no_grad():
        core = attention_math(
            q @ w[:c].T + b[:c], mem @ w[c : 2 * c].T + b[c : 2 * c], mem @ w[2 * c :].T + b[2 * c :], 4
        )
        got = mha.out_proj(core)
        ref = mha(q, mem, mem, need_weights=False)[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blocks", [1, 4])
def test_cross_layer_matches(blocks):
    torch.manual_seed(blocks)
    layer = AttnLayer(blocks, 256, 4, 256).eval()
    fused = FusedAttnLayer(layer, None)
    q, mem = _rand(3, 96, 256, seed=3), _rand(3, 120, 256, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(fused(q, mem), layer(q, mem), rtol=1e-5, atol=1e-5)
    # the blocks (and so every trained weight) are shared, not copied
    assert fused.attn_blocks is layer.attn_blocks
    assert fused.kv_weight.shape == (2 * 256 * blocks, 256)


def test_self_layer_matches():
    torch.manual_seed(0)
    layer = SelfAttnLayer(2, 256, 4, 256).eval()
    x = _rand(2, 96, 256, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(FusedSelfAttnLayer(layer, None)(x), layer(x), rtol=1e-5, atol=1e-5)


def test_attention_core_per_precision():
    assert attention_core(None) is attention_math
    assert attention_core("ieee") is not attention_math
    with pytest.raises(ValueError, match="precision"):
        attention_core("fp32")


@pytest.mark.gpu
def test_exact_kernel_forms_match_the_layers_at_float32_accuracy():
    """ "tf32x3" (the exact mode on CUDA, or Triton's interpreter): every product and the attention core as
    kernels, against the published layers in float64."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops"))
    from triton_env import DEVICE, needs_triton

    if needs_triton.args[0]:
        pytest.skip(needs_triton.kwargs["reason"])
    torch.manual_seed(0)
    cross, self_layer = AttnLayer(2, 256, 4, 256).eval(), SelfAttnLayer(2, 256, 4, 256).eval()
    q, mem = _rand(2, 96, 256, seed=6), _rand(2, 120, 256, seed=7)
    with torch.no_grad():
        ref_cross = cross.double()(q.double(), mem.double())
        ref_self = self_layer.double()(q.double())
        cross.float().to(DEVICE)
        self_layer.float().to(DEVICE)
        got_cross = FusedAttnLayer(cross, "tf32x3")(q.to(DEVICE), mem.to(DEVICE))
        got_self = FusedSelfAttnLayer(self_layer, "tf32x3")(q.to(DEVICE))
    torch.testing.assert_close(got_cross.double().cpu(), ref_cross, rtol=0, atol=5e-5)
    torch.testing.assert_close(got_self.double().cpu(), ref_self, rtol=0, atol=5e-5)
