"""CPU head forms (inference/forms/cpu_gafa.py) against the reference modules on seeded inputs and weights."""

from __future__ import annotations

import pytest
import torch

from cleanpose_model.inference.forms.cpu import have_onednn
from cleanpose_model.inference.forms.cpu_gafa import CpuGAFA
from cleanpose_model.inference.forms.pointwise import fold_for_inference
from cleanpose_model.nn.gafa import GAFA

pytestmark = pytest.mark.skipif(not have_onednn(), reason="this torch build has no oneDNN")


def _randomise_norms(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)


def test_cpu_gafa_matches_the_reference():
    torch.manual_seed(0)
    gafa = GAFA(64, [8, 16], delta_hidden=32).eval()
    _randomise_norms(gafa)
    bsz, n_kpt, n = 3, 24, 200
    pts = torch.randn(bsz, n, 3) * 0.1
    kpt_3d = torch.randn(bsz, n_kpt, 3) * 0.1
    kpt_feat = torch.randn(bsz, n_kpt, 64)
    pts_feat = torch.randn(bsz, 64, n).transpose(1, 2)  # as the head passes it: a transposed view
    with torch.inference_mode():
        ref = gafa(kpt_feat, kpt_3d, pts_feat, pts)
        got = CpuGAFA(fold_for_inference(gafa))(kpt_feat, kpt_3d, pts_feat.reshape(-1, 64), pts)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_cpu_network_matches_the_reference_network():
    """The whole CPU form (forms/cpu_net.py: the head on point-major rows, the keypoint detector, front-door
    and NOCS forms, the estimator) against the reference network on three seeded objects."""
    from cleanpose_model import parity
    from cleanpose_model.inference.build import EagerInference, InferenceMode, bind_forms
    from cleanpose_model.inference.forms.cpu_net import cpu_inference_net

    net = parity.build_parity_net("cleanpose", "cpu").eval()
    g = torch.Generator().manual_seed(3)
    bsz, n = 3, net.cfg.n_points
    rgb = torch.randn(bsz, 3, net.cfg.image_size, net.cfg.image_size, generator=g)
    pts = torch.randn(bsz, n, 3, generator=g) * 0.06 + torch.tensor([0.0, 0.0, 0.7])
    choose = torch.randint(0, net.cfg.image_size**2, (bsz, n), generator=g)
    category = torch.tensor([0, 3, 5])
    queue = torch.randn(bsz, 12, net.cfg.d_model, generator=g)
    # bound here, not by build_inference: the builder does not bind this form yet (inference/build.py)
    fwd = EagerInference(
        cpu_inference_net(bind_forms(net, InferenceMode("exact"), kernels=False).net), tf32=False
    )
    with torch.inference_mode():
        ref = net(rgb, pts, choose, category, queue_feats=queue)
        got = fwd(rgb, pts, choose, category, queue_feats=queue)
    for key in ("pred_rotation", "pred_translation", "pred_size", "pred_kpt_3d", "kpt_nocs"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
