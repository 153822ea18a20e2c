"""The heads' inference forms (inference/forms/heads.py) compute the published modules."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops"))  # the Triton tests' shared markers
from triton_env import DEVICE, needs_triton

from cleanpose_model import parity
from cleanpose_model.config import EstimatorConfig
from cleanpose_model.inference.build import InferenceMode, bind_forms
from cleanpose_model.inference.forms.heads import FusedNOCSPredictor, FusedPoseSizeEstimator
from cleanpose_model.inference.forms.pointwise import fold_for_inference
from cleanpose_model.inference.graphs import tf32_products
from cleanpose_model.nn.heads import PoseSizeEstimator


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
        _assert_outputs_close(fused(*x), est(*x))


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
        _assert_outputs_close(FusedPoseSizeEstimator(est)(*x), est(*x))


def test_tolerance_catches_a_wrong_input_order(parity_net):
    # The comparison above fails for an algebra that is slightly wrong: here the point MLPs' inputs swapped.
    fused = FusedPoseSizeEstimator(parity_net.estimator)
    kpt_3d, kpt_nocs, feat = _inputs(2, seed=11)
    with torch.no_grad():
        ref = parity_net.estimator(kpt_3d, kpt_nocs, feat)
        bad = fused(kpt_nocs, kpt_3d, feat)
    with pytest.raises(AssertionError):
        _assert_outputs_close(bad, ref)


def test_shares_published_weights_and_adds_no_state(parity_net):
    est = parity_net.estimator
    fused = FusedPoseSizeEstimator(est)
    assert fused.pose_mlp2 is est.pose_mlp2 and fused.rotation_estimator is est.rotation_estimator
    assert fused.state_dict().keys() == est.state_dict().keys()
    assert fused.head_w0.shape == (3 * 512, 512) and fused.head_w1.shape == (3 * 256, 3 * 512)
    assert fused.pts_w0.shape == (64, 6) and fused.pts_w1.shape == (128, 64)


def test_network_with_the_estimator_form_matches(parity_net):
    """The exact mode's inference network with the fast mode's estimator form swapped in, against the
    published network."""
    model = bind_forms(parity_net, InferenceMode("exact"), kernels=False)
    model.net._modules["estimator"] = FusedPoseSizeEstimator(model.net.estimator)
    g = torch.Generator().manual_seed(0)
    n = 2
    rgb = torch.randn(n, 3, 224, 224, generator=g)
    pts = torch.rand(n, 1024, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])
    choose = torch.randint(0, 224 * 224, (n, 1024), generator=g)
    cat = torch.tensor([0, 3])
    queue = torch.randn(n, 80, 256, generator=g)
    with torch.inference_mode():
        ref = parity_net(rgb, pts, choose, cat, queue_feats=queue)
        got = model(rgb, pts, choose, cat, queue)
    assert isinstance(parity_net.estimator, PoseSizeEstimator)
    for key in ("pred_rotation", "pred_translation", "pred_size"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-5)


def test_nocs_form_needs_a_folded_head(parity_net):
    assert not FusedNOCSPredictor.supports(parity_net.nocs_predictor)
    assert FusedNOCSPredictor.supports(fold_for_inference(parity_net.nocs_predictor))
    with pytest.raises(ValueError, match="folded"):
        FusedNOCSPredictor(parity_net.nocs_predictor, "tf32")


@pytest.mark.gpu
@needs_triton
def test_nocs_form_matches_the_published_head(parity_net):
    """The NOCS head's form (folded MLPs on rows, the tail kernel) in full fp32 products against the
    published head."""
    pred = parity_net.nocs_predictor.to(DEVICE)
    form = FusedNOCSPredictor(fold_for_inference(pred), "ieee")
    g = torch.Generator().manual_seed(2)
    kf = torch.randn(3, 96, 256, generator=g).to(DEVICE)
    cat = torch.tensor([1, 4, 0]).to(DEVICE)
    with torch.inference_mode(), tf32_products(False):
        got, ref = form(kf, cat), pred(kf, cat)
    parity_net.cpu()
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
