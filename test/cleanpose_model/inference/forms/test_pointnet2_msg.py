"""The PointNet++ inference form (inference/forms/pointnet2_msg.py): what its kernels cover, and the
published module's result through them (CUDA, or the Triton interpreter)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cleanpose_model.config import PointNet2Config
from cleanpose_model.inference.forms import pointnet2_msg as FP
from cleanpose_model.inference.forms.pointwise import fold_for_inference
from cleanpose_model.inference.graphs import tf32_products
from cleanpose_model.nn.pointnet2_msg import PointNet2MSG
from cleanpose_model.ops import sa as sa_ref

SMALL = PointNet2Config(
    npoints=[64, 32, 16, 8],
    radii=[[0.05, 0.1], [0.1, 0.2], [0.2, 0.4], [0.4, 0.8]],
    nsamples=[[8, 16], [8, 16], [8, 16], [8, 16]],
    sa_mlps=[[16, 16, 32], [16, 32, 32], [32, 32, 64], [32, 64, 64]],
    fp_mlps=[[32, 32], [64, 64], [64, 64], [64, 64]],
)


def _randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _net(cfg: PointNet2Config, seed: int = 0) -> PointNet2MSG:
    torch.manual_seed(seed)
    net = PointNet2MSG(cfg).eval()
    _randomise_bn(net, torch.Generator().manual_seed(seed))
    return net


def _cloud(bsz: int, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(bsz, n, 3, generator=g) * 0.2 - 0.1
    return pts - pts.mean(dim=1, keepdim=True)


def test_published_config_is_covered_by_the_kernels():
    pn = FP.FusedPointNet2(
        fold_for_inference(_net(PointNet2Config())), geometry_kernels=True, precision="tf32"
    )
    assert all(sa.uses_kernel for sa in pn.SA_modules)
    assert all(fp.uses_kernel for fp in pn.FP_modules)
    assert [fp._default_mode for fp in pn.FP_modules] == ["fused", "fused", "split", "split"]
    assert [fp.channels_last for fp in pn.FP_modules] == [False, True, True, True]
    assert [fp._meta[:2] for fp in pn.FP_modules] == [(256, 0), (256, 64), (512, 128), (512, 256)]
    assert [sa._meta for sa in pn.SA_modules] == [(0, 32), (64, 64), (128, 128), (256, 256)]
    assert pn.FP_modules[3].k_w2t.numel() == 0  # 512 wide: split mode only, its second layer is not copied


def test_form_shares_weights_and_keeps_the_published_state_dict():
    folded = fold_for_inference(_net(SMALL))
    form = FP.FusedPointNet2(folded, geometry_kernels=False, precision="tf32")
    # the state_dict is the published one: the packed weights are non-persistent buffers
    assert list(form.state_dict()) == list(folded.state_dict())
    assert form.SA_modules[2].mlps is folded.SA_modules[2].mlps
    assert form.FP_modules[1].mlp is folded.FP_modules[1].mlp


def test_feature_kernels_only_with_a_precision():
    form = FP.FusedPointNet2(fold_for_inference(_net(SMALL)), geometry_kernels=True, precision=None)
    assert not any(sa.uses_kernel for sa in form.SA_modules) and not any(
        fp.uses_kernel for fp in form.FP_modules
    )
    assert all(sa.geometry_kernels and sa.ball_kernel for sa in form.SA_modules)


def test_unfolded_modules_keep_the_torch_path():
    fused = FP.FusedPointNet2(_net(SMALL), geometry_kernels=False, precision="tf32")
    assert not any(sa.uses_kernel for sa in fused.SA_modules)
    assert not any(fp.uses_kernel for fp in fused.FP_modules)


def test_torch_references_are_the_published_levels():
    """The kernels are checked against ops/sa.py's references; these are the published levels."""
    pn = fold_for_inference(_net(SMALL))
    xyz = _cloud(2, 128)
    with torch.no_grad():
        geo = pn.geometry(xyz)
        feats = [None]
        for lvl, sa in enumerate(pn.SA_modules):
            got = sa_ref.set_abstraction_torch(
                geo["xyz"][lvl],
                geo["xyz"][lvl + 1],
                geo["groups"][lvl],
                feats[-1],
                [[(lay.weight, lay.bias) for lay in FP._folded_layers(m)] for m in sa.mlps],
            )
            ref = sa.aggregate(geo["xyz"][lvl], geo["xyz"][lvl + 1], geo["groups"][lvl], feats[-1])
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
            feats.append(ref)
        for i in range(len(pn.FP_modules) - 1, -1, -1):
            fp = pn.FP_modules[i]
            idx, w = geo["interp"][i]
            layers = [(lay.weight, lay.bias) for lay in FP._folded_layers(fp.mlp)]
            got = sa_ref.feature_propagation_torch(feats[i + 1], idx, w, feats[i], layers)
            ref = fp(geo["xyz"][i], geo["xyz"][i + 1], feats[i], feats[i + 1], geo["interp"][i])
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
            feats[i] = ref


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops"))
from triton_env import needs_triton  # noqa: E402


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("split", [False, True])
def test_triton_kernels_match_the_published_network(split):
    """Whole PointNet++ through the kernels (index kernels, point-major hand-over between levels, both FP
    modes) in full fp32 products ("ieee", cuBLAS too) against the published torch network."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    assert dev == "cuda" or interpret
    folded = fold_for_inference(_net(SMALL)).to(dev)
    form = FP.FusedPointNet2(folded, geometry_kernels=True, precision="ieee")
    for fp in form.FP_modules:
        fp.mode = "split" if split else "fused"
    xyz = _cloud(2, 128).to(dev)
    with torch.no_grad(), tf32_products(False):
        geo = folded.geometry(xyz)
        assert all(torch.equal(a, b) for a, b in zip(form.geometry(xyz)["xyz"], geo["xyz"], strict=True))
        got = form(xyz)
        ref = folded(xyz, geometry=geo)
    assert got.shape == ref.shape == (2, 32, 128)
    if not split:
        assert got.is_contiguous()  # FP0 writes the head's (B, C, N) layout
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
