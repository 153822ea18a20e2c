"""The network's inference form (inference/forms/net.py): the backbones + head split is the reference eval
forward, and the fast mode's one-kernel RGB gather computes the network's gather."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops"))  # the Triton tests' shared markers
from triton_env import DEVICE, needs_triton

from cleanpose_model import parity
from cleanpose_model.inference.forms.net import InferenceNet
from cleanpose_model.inference.graphs import tf32_products
from cleanpose_model.net import centre_points
from cleanpose_model.ops.gather import bilinear_gather_torch


def _inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randn(n, 3, 224, 224, generator=g)
    pts = torch.rand(n, 1024, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])
    choose = torch.randint(0, 224 * 224, (n, 1024), generator=g)
    cat = torch.tensor([0, 3, 5])[:n]
    queue = torch.randn(n, 80, 256, generator=g)
    return rgb, pts, choose, cat, queue


@pytest.fixture(scope="module")
def net():
    return parity.build_parity_net("cleanpose", torch.device("cpu")).eval()


def test_form_over_the_reference_modules_is_the_reference_forward(net):
    """With the reference modules as its children, the form's forward and its backbones + head split give
    the reference outputs bit for bit (only the layout of the computation differs)."""
    model = InferenceNet(net)
    rgb, pts, choose, cat, queue = _inputs(2)
    with torch.inference_mode():
        ref = net(rgb, pts, choose, cat, queue_feats=queue)
        got = model(rgb, pts, choose, cat, queue)
        tokens, pts_local = net.rgb_extractor(rgb), net.pts_extractor(centre_points(pts)[0])
        split = model.head(pts, choose, cat, queue, tokens, pts_local)
    keys = ["pred_rotation", "pred_translation", "pred_size", "pred_kpt_3d", "kpt_nocs", "centroid"]
    assert list(got) == list(split) == keys
    for k in got:
        assert torch.equal(got[k], ref[k]), k
        assert torch.equal(split[k], ref[k]), k


def test_checks_inputs(net):
    rgb, pts, choose, cat, _ = _inputs(1)
    with pytest.raises(ValueError, match="queue_feats"):
        InferenceNet(net)(rgb, pts, choose, cat)


@pytest.mark.gpu
@needs_triton
def test_gather_kernel_matches_the_network_gather(net):
    """The fast mode's product + gather kernel against the network's own gather in float64, on DINOv2-shaped
    tokens read in place after the class token."""
    net = net.to(DEVICE)
    try:
        g = torch.Generator().manual_seed(4)
        tokens = torch.randn(3, 1 + 16 * 16, 384, generator=g).to(DEVICE)
        choose = torch.randint(0, 224 * 224, (3, 1024), generator=g).to(DEVICE)
        with torch.inference_mode(), tf32_products(True):
            got = InferenceNet(net, gather_kernel=True).rgb_features(tokens[:, 1:], choose)
        conv = net.feature_mlp[0]
        w, b = conv.weight.double().flatten(1), conv.bias.double()
        feat = (tokens[:, 1:].double() @ w.T + b).transpose(1, 2)
        ref = bilinear_gather_torch(feat, choose, 16, 224)
    finally:
        net.cpu()
    assert got.shape == ref.shape == (3, 128, 1024) and got.dtype == torch.float32
    assert ref.abs().max() > 1.0
    # fp32 (the interpreter): reassociated sums of 384 products; TF32 on a GPU keeps 10 mantissa bits
    # (measured against float64 with TF32-rounded inputs: 1.3e-3 at most).
    tol = 1e-5 if DEVICE == "cpu" else 5e-3
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=tol)
