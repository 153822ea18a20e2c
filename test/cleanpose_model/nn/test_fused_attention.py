"""Inference forms of the transformer layers (nn/fused_attention.py) compute the published layers."""

from __future__ import annotations

import pytest
import torch

from cleanpose_model import parity
from cleanpose_model.nn.attention import AttnLayer, SelfAttnLayer
from cleanpose_model.nn.front_door import FrontDoorEncoder
from cleanpose_model.nn.fused_attention import (
    FusedAttnLayer,
    FusedFrontDoor,
    FusedSelfAttnLayer,
    fuse_for_inference,
)
from cleanpose_model.nn.pointwise import fold_for_inference
from cleanpose_model.ops.attention_triton import attention_math


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
    fused = FusedAttnLayer(layer)
    q, mem = _rand(3, 96, 256, seed=3), _rand(3, 120, 256, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(fused(q, mem), layer(q, mem), rtol=1e-5, atol=1e-5)
    # the blocks (and so every trained weight) are shared, not copied
    assert fused.attn_blocks is layer.attn_blocks
    assert fused.kv_weight.shape == (2 * 256 * blocks, 256)


def test_self_layer_and_front_door_match():
    torch.manual_seed(0)
    layer = SelfAttnLayer(2, 256, 4, 256).eval()
    x = _rand(2, 96, 256, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(FusedSelfAttnLayer(layer)(x), layer(x), rtol=1e-5, atol=1e-5)
    fd = FrontDoorEncoder(256, 4, 256).eval()
    glob = _rand(2, 80, 256, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(FusedFrontDoor(fd)(x, glob), fd(x, glob), rtol=1e-5, atol=1e-5)


def test_network_copy_is_fused_and_original_untouched():
    net = parity.build_parity_net("cleanpose", torch.device("cpu")).eval()
    fused = fuse_for_inference(fold_for_inference(net))
    assert isinstance(fused.IAKD.attn_layer, FusedAttnLayer)
    assert isinstance(fused.FD_Encoder, FusedFrontDoor)
    assert isinstance(fused.nocs_predictor.self_attn_layer, FusedSelfAttnLayer)
    assert isinstance(net.IAKD.attn_layer, AttnLayer) and isinstance(net.FD_Encoder, FrontDoorEncoder)
    g = torch.Generator().manual_seed(0)
    n = 2
    rgb = torch.randn(n, 3, 224, 224, generator=g)
    pts = torch.rand(n, 1024, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])
    choose = torch.randint(0, 224 * 224, (n, 1024), generator=g)
    cat = torch.tensor([0, 3])
    queue = torch.randn(n, 80, 256, generator=g)
    with torch.inference_mode():
        ref = net(rgb, pts, choose, cat, queue_feats=queue)
        got = fused(rgb, pts, choose, cat, queue_feats=queue)
    for k in ("pred_rotation", "pred_translation", "pred_size", "kpt_nocs"):
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5)


def test_gafa_inference_form_matches():
    from cleanpose_model.nn.fused_gafa import FusedGAFA
    from cleanpose_model.nn.gafa import GAFA

    torch.manual_seed(0)
    gafa = GAFA(256, [16, 32]).eval()
    bsz, n_kpt, n = 2, 96, 300
    kf, kpt = _rand(bsz, n_kpt, 256, seed=7), _rand(bsz, n_kpt, 3, seed=8) * 0.1
    feats, pts = _rand(bsz, n, 256, seed=9), _rand(bsz, n, 3, seed=10) * 0.1
    with torch.no_grad():
        ref = gafa(kf, kpt, feats, pts)
        got = FusedGAFA(fold_for_inference(gafa))(kf, kpt, feats, pts)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
