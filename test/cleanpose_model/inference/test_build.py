"""The inference builder (inference/build.py): one mode in, the bound network with the forms and
precisions of that mode out; the reference modules import no inference form or kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))  # the Triton tests' shared markers
from triton_env import needs_triton

from cleanpose_model import parity
from cleanpose_model.inference import DEFAULT_BUCKETS, InferenceMode, build_inference
from cleanpose_model.inference.build import EagerInference, bind_forms
from cleanpose_model.inference.forms.attention import FusedAttnLayer, FusedSelfAttnLayer
from cleanpose_model.inference.forms.cpu import CpuDinoV2
from cleanpose_model.inference.forms.dinov2 import AutocastBackbone, ExactDinoV2, FastDinoV2
from cleanpose_model.inference.forms.front_door import FusedFrontDoor
from cleanpose_model.inference.forms.gafa import FusedGAFA
from cleanpose_model.inference.forms.heads import FusedNOCSPredictor, FusedPoseSizeEstimator
from cleanpose_model.inference.forms.pointnet2_msg import FusedPointNet2
from cleanpose_model.inference.forms.pointwise import PointwiseLinear
from cleanpose_model.inference.graphs import GraphedForward
from cleanpose_model.nn.heads import NOCSPredictor, PoseSizeEstimator

REPO = Path(__file__).resolve().parents[3]


def _inputs(n: int, device="cpu", entries: int = 80):
    g = torch.Generator().manual_seed(n)
    rgb = torch.randn(n, 3, 224, 224, generator=g)
    pts = torch.rand(n, 1024, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])
    choose = torch.randint(0, 224 * 224, (n, 1024), generator=g)
    cat = torch.arange(n) % 6
    queue = torch.randn(n, entries, 256, generator=g)
    return [t.to(device) for t in (rgb, pts, choose, cat, queue)]


@pytest.fixture(scope="module")
def net():
    return parity.build_parity_net("cleanpose", torch.device("cpu")).eval()


def test_reference_modules_import_no_inference_form_or_kernel():
    refs = ["net", "ops.pointnet2", "ops.gather", "ops.attention", "ops.gafa", "ops.sa", "ops.knn"]
    refs += [f"nn.{m}" for m in ("dinov2", "pointnet2_msg", "attention", "keypoints", "gafa", "front_door")]
    refs += ["nn.heads", "ops.head_tails", "ops.layernorm"]
    code = (
        f"import sys; import {', '.join('cleanpose_model.' + m for m in refs)}\n"
        "kernels = ('cleanpose_model.inference', 'cleanpose_model.ops.triton')\n"
        "print(','.join(m for m in sys.modules if m.startswith(kernels)))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""


def test_mode_is_validated():
    assert InferenceMode() == InferenceMode("exact", cuda_graphs=False, compile=False)
    with pytest.raises(ValueError, match="precision"):
        InferenceMode("fp32")
    with pytest.raises(ValueError, match="compile"):
        InferenceMode("exact", cuda_graphs=False, compile=True)
    with pytest.raises(TypeError, match="cuda_graphs"):
        InferenceMode("exact", cuda_graphs="yes")
    with pytest.raises(AttributeError):
        InferenceMode().precision = "fast"  # frozen


def test_cpu_refuses_cuda_only_modes(net):
    for mode in (InferenceMode("fast"), InferenceMode("exact", cuda_graphs=True)):
        with pytest.raises(ValueError, match="CUDA"):
            build_inference(net, mode)
    with pytest.raises(TypeError, match="InferenceMode"):
        build_inference(net, "exact")


def test_cpu_exact_binds_the_torch_forms_and_leaves_the_reference_untouched(net):
    fwd = build_inference(net, InferenceMode("exact"))
    assert isinstance(fwd, EagerInference) and not fwd.tf32
    copy = fwd.model.net
    # oneDNN forms (forms/cpu.py): DINOv2 and every other linear layer with packed weights
    assert isinstance(copy.rgb_extractor, CpuDinoV2)
    rest = [m for name, m in copy.named_children() if name != "rgb_extractor"]
    assert not any(type(m) is torch.nn.Linear for r in rest for m in r.modules())
    assert any(type(m) is torch.nn.Linear for m in net.IAKD.modules())
    assert isinstance(copy.IAKD.attn_layer, FusedAttnLayer) and copy.IAKD.attn_layer.precision is None
    assert isinstance(copy.FD_Encoder, FusedFrontDoor) and not copy.FD_Encoder.gate_kernel
    assert isinstance(copy.nocs_predictor, NOCSPredictor)
    assert isinstance(copy.nocs_predictor.self_attn_layer, FusedSelfAttnLayer)
    assert isinstance(copy.estimator, PoseSizeEstimator)
    assert isinstance(copy.pts_extractor, FusedPointNet2)
    assert not copy.pts_extractor.SA_modules[0].geometry_kernels
    assert isinstance(copy.feature_mlp[0], PointwiseLinear) and not fwd.model.gather_kernel
    # weights shared, the reference's modules as they were
    assert copy.IAKD.kpt_query is net.IAKD.kpt_query
    assert type(net.IAKD.attn_layer).__name__ == "AttnLayer" and type(net.GAFA).__name__ == "GAFA"
    assert isinstance(net.feature_mlp[0], torch.nn.Conv1d)
    fwd.capture(DEFAULT_BUCKETS)  # nothing to capture eagerly


def test_cpu_exact_equals_the_reference(net):
    rgb, pts, choose, cat, queue = _inputs(2)
    with torch.inference_mode():
        ref = net(rgb, pts, choose, cat, queue_feats=queue)
        got = build_inference(net, InferenceMode())(rgb, pts, choose, cat, queue)
    for k in ("pred_rotation", "pred_translation", "pred_size", "pred_kpt_3d", "kpt_nocs"):
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_cuda_modes_bind_their_kernels_and_precisions(net, precision):
    """What each CUDA mode binds (built on the CPU: forms choose their kernels at construction and launch
    nothing until called)."""
    model = bind_forms(net, InferenceMode(precision, cuda_graphs=True), kernels=True)
    copy, fast = model.net, precision == "fast"
    kernel_precision = "tf32" if fast else "tf32x3"  # exact: float32 accuracy on tensor cores
    assert copy.IAKD.attn_layer.precision == kernel_precision
    gafa = copy.GAFA.GAFA_blocks[0]
    assert gafa.knn_kernel and gafa.precision == kernel_precision
    assert copy.FD_Encoder.gate_kernel
    sa = copy.pts_extractor.SA_modules
    assert all(m.geometry_kernels for m in sa) and all(m.uses_kernel for m in sa)
    assert all(m.precision == kernel_precision for m in sa)
    assert isinstance(copy.nocs_predictor, FusedNOCSPredictor)
    assert copy.nocs_predictor.precision == kernel_precision
    assert isinstance(copy.estimator, FusedPoseSizeEstimator)
    assert type(copy.rgb_extractor) is (FastDinoV2 if fast else ExactDinoV2)
    assert model.gather_kernel
    pointwise = [m for m in copy.modules() if isinstance(m, PointwiseLinear)]
    assert pointwise and all(m.precision == (None if fast else "tf32x3") for m in pointwise)


def test_compile_binds_only_the_pointnet2_form(net):
    model = bind_forms(net, InferenceMode("fast", cuda_graphs=True, compile=True), kernels=True)
    copy = model.net
    assert isinstance(copy.rgb_extractor, AutocastBackbone)
    assert isinstance(copy.pts_extractor, FusedPointNet2) and not copy.pts_extractor.SA_modules[0].uses_kernel
    assert type(copy.GAFA).__name__ == "GAFA" and not isinstance(copy.GAFA, FusedGAFA)
    assert not model.gather_kernel


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_triton
@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("n", [3, 40])  # padding into a bucket; chunking past the largest
def test_graphed_equals_eager(precision, n):
    """CUDA graphs replay the eager bound network of the same mode."""
    net = parity.build_parity_net("cleanpose", torch.device("cuda")).eval()
    graphed = build_inference(net, InferenceMode(precision, cuda_graphs=True), queue_entries=12)
    eager = build_inference(net, InferenceMode(precision))
    assert isinstance(graphed, GraphedForward)
    inputs = _inputs(n, "cuda", entries=12)
    with torch.inference_mode():
        ref, got = eager(*inputs), graphed(*inputs)
    # exact: the same fp32 arithmetic; fast: TF32 / fp16 products whose kernels (so roundings) depend on the
    # batch size, and a graph batch is a padded bucket or a chunk (measured: 1.5e-3 at 40 objects, H200)
    atol = 1e-5 if precision == "exact" else 1e-2
    for k in ("pred_rotation", "pred_translation", "pred_size"):
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=atol)
