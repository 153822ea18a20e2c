"""The pose/size estimator's inference form (nn/fused_heads.py) computes the published module, and
fuse_for_inference swaps it (and the RGB gather switch) into the network's inference copy only."""

from __future__ import annotations

import pytest
import torch

from cleanpose_model import parity
from cleanpose_model.config import EstimatorConfig
from cleanpose_model.nn.fused_attention import fuse_for_inference
from cleanpose_model.nn.fused_heads import FusedPoseSizeEstimator
from cleanpose_model.nn.heads import PoseSizeEstimator
from cleanpose_model.nn.pointwise import fold_for_inference


def _inputs(bsz: int, seed: int, n_kpt: int = 96, d: int = 256):
    g = torch.Generator().manual_seed(seed)
    kpt_3d = torch.randn(bsz, n_kpt, 3, generator=g) * 0.1
    kpt_nocs = torch.rand(bsz, n_kpt, 3, generator=g) - 0.5
    kpt_feat = torch.randn(bsz, n_kpt, d, generator=g)
    return kpt_3d, kpt_nocs, kpt_feat


@pytest.fixture(scope="module")
def parity_net():
    return parity.build_parity_net("cleanpose", torch.device("cpu")).eval()


def _assert_outputs_close(got, ref):
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        # not vacuous: the outputs vary across objects and are far from zero
        assert r.abs().max() > 1e-2
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("bsz", [1, 3])
def test_fused_algebra_matches_published(parity_net, fold, bsz):
    est = parity_net.estimator
    if fold:
        est = fold_for_inference(est)
    fused = FusedPoseSizeEstimator(est)
    x = _inputs(bsz, seed=bsz)
    with torch.no_grad():
        _assert_outputs_close(fused.forward_fused(*x), est(*x))


def test_fused_algebra_other_widths():
    # Widths other than the published ones: deeper point MLPs, a different head.
    torch.manual_seed(0)
    cfg = EstimatorConfig(pts_mlp=[16, 32, 48], pose_mlp1=[128, 64], pose_mlp2=[96, 80], head_hidden=[64, 32])
    est = PoseSizeEstimator(cfg, 40).eval()
    with torch.no_grad():
        for p in est.parameters():  # default init leaves the heads' outputs ~1e-2: widen them
            p.mul_(2.0)
    x = _inputs(2, seed=7, n_kpt=20, d=40)
    with torch.no_grad():
        _assert_outputs_close(FusedPoseSizeEstimator(est).forward_fused(*x), est(*x))


def test_tolerance_catches_a_wrong_input_order(parity_net):
    # The comparison above fails for an algebra that is slightly wrong: here the point MLPs' inputs swapped.
    fused = FusedPoseSizeEstimator(parity_net.estimator)
    kpt_3d, kpt_nocs, feat = _inputs(2, seed=11)
    with torch.no_grad():
        ref = parity_net.estimator(kpt_3d, kpt_nocs, feat)
        bad = fused.forward_fused(kpt_nocs, kpt_3d, feat)
    with pytest.raises(AssertionError):
        _assert_outputs_close(bad, ref)


def test_cpu_forward_is_the_published_path_bit_for_bit(parity_net):
    est = fold_for_inference(parity_net.estimator)
    fused = FusedPoseSizeEstimator(est)
    x = _inputs(2, seed=5)
    with torch.no_grad():
        for g, r in zip(fused(*x), est(*x), strict=True):
            assert torch.equal(g, r)


def test_shares_published_weights_and_adds_no_state(parity_net):
    est = parity_net.estimator
    fused = FusedPoseSizeEstimator(est)
    assert fused.pose_mlp2 is est.pose_mlp2 and fused.rotation_estimator is est.rotation_estimator
    assert fused.state_dict().keys() == est.state_dict().keys()
    assert fused.head_w0.shape == (3 * 512, 512) and fused.head_w1.shape == (3 * 256, 3 * 512)
    assert fused.pts_w0.shape == (64, 6) and fused.pts_w1.shape == (128, 64)


def test_network_inference_copy(parity_net):
    fused = fuse_for_inference(fold_for_inference(parity_net))
    assert isinstance(fused.estimator, FusedPoseSizeEstimator) and fused.fused_rgb_gather
    # the published network is untouched; the estimator's state_dict layout is the copy's
    assert isinstance(parity_net.estimator, PoseSizeEstimator) and not parity_net.fused_rgb_gather
    assert fused.estimator.state_dict().keys() == parity_net.estimator.state_dict().keys()
    # fusing twice changes nothing
    again = fuse_for_inference(fused)
    assert again.estimator is fused.estimator and again.fused_rgb_gather


def test_network_fused_form_matches(parity_net, monkeypatch):
    """The whole inference copy with the estimator's fused algebra forced on (as on CUDA in the fast mode)
    against the published network, and the CPU path bit-identical to the fold-only copy."""
    folded = fold_for_inference(parity_net)
    fused = fuse_for_inference(folded)
    g = torch.Generator().manual_seed(0)
    n = 2
    rgb = torch.randn(n, 3, 224, 224, generator=g)
    pts = torch.rand(n, 1024, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])
    choose = torch.randint(0, 224 * 224, (n, 1024), generator=g)
    cat = torch.tensor([0, 3])
    queue = torch.randn(n, 80, 256, generator=g)
    with torch.inference_mode():
        tokens = parity_net.rgb_extractor(rgb)
        ref = parity_net(rgb, pts, choose, cat, queue_feats=queue, tokens=tokens)
        monkeypatch.setattr(FusedPoseSizeEstimator, "_fast", lambda self, *t: True)
        got = fused(rgb, pts, choose, cat, queue_feats=queue, tokens=tokens)
    for key in ("pred_rotation", "pred_translation", "pred_size"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-5)
