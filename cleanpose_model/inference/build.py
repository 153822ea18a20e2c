"""The one place an inference mode is decided: `build_inference` binds a reference `CleanPoseNet` and an
`InferenceMode` into the network that runs.

Per mode, what it binds (each form and kernel receives its precision here, as a constructor argument):

- every mode: the per-point layers folded into matrix products (forms/pointwise.py) and the inference forms
  of the transformer stacks, GAFA, front-door encoder and PointNet++ (forms/*.py), in the layout of
  forms/net.py;
- CPU (``"exact"``): their torch paths (the attention core, neighbour choice and PointNet++ index work as
  in ``ops/*.py``), and where oneDNN is in the build (forms/cpu.py) every linear layer with its weight
  packed once for oneDNN and DINOv2 as `CpuDinoV2` (fp32 products, GELU in the product); there is no CPU
  ``"fast"`` (bf16 leaves its pose budget: forms/cpu.py). The point-major CPU forms (forms/cpu_net.py) are
  not bound yet: see `bind_cpu_forms`;
- CUDA ``"exact"``: the fast mode's forms and Triton kernels (below) with every product at float32
  accuracy on tensor cores (three TF32 products, "tf32x3": ops/triton/linear.py), DINOv2 as `ExactDinoV2`
  and the per-point layers left to torch as one 3xTF32 launch each; cuBLAS products in full fp32 (TF32 off);
- CUDA ``"fast"``: DINOv2 in fp16 (forms/dinov2.py), TF32 products everywhere else and every Triton kernel
  in "tf32": PointNet++'s feature work, GAFA's MLP chains, the front-door gate, the NOCS tail, the RGB
  gather, and the pose/size estimator's concatenated products; both CUDA modes run PointNet++'s furthest
  point sampling, ball query and three-NN and GAFA's neighbour choice as Triton index kernels (the same
  picks as the torch references);
- ``cuda_graphs``: the forward replayed from CUDA graphs per batch bucket (graphs.py), ``compile``: the
  backbone and head through ``torch.compile`` before capture (then only PointNet++'s form is bound: the
  compiler fuses the rest).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from cleanpose_model.inference.forms.attention import FusedAttnLayer, FusedSelfAttnLayer
from cleanpose_model.inference.forms.cpu import CpuDinoV2, have_onednn, pack_linears
from cleanpose_model.inference.forms.dinov2 import AutocastBackbone, ExactDinoV2, FastDinoV2
from cleanpose_model.inference.forms.front_door import FusedFrontDoor
from cleanpose_model.inference.forms.gafa import FusedGAFA
from cleanpose_model.inference.forms.heads import FusedNOCSPredictor, FusedPoseSizeEstimator
from cleanpose_model.inference.forms.net import InferenceNet
from cleanpose_model.inference.forms.pointnet2_msg import FusedPointNet2
from cleanpose_model.inference.forms.pointwise import PointwiseLinear, fold_for_inference
from cleanpose_model.inference.graphs import GraphedForward, tf32_products
from cleanpose_model.net import CleanPoseNet
from cleanpose_model.ops.triton import HAVE_TRITON
from cleanpose_model.types import MODES

PRECISIONS = MODES  # the estimator modes are the inference precisions
# The fast mode's DINOv2 dtype: as fast as bf16 on an H100, 8x finer mantissa, and DINOv2-S activations
# stay far inside fp16 range.
FAST_DTYPE = torch.float16


@dataclass(frozen=True)
class InferenceMode:
    """``precision``: "exact" (fp32 products; the parity path) or "fast" (CUDA only: DINOv2 in fp16, TF32
    products, every Triton kernel); ``cuda_graphs``: replay per batch bucket (CUDA only); ``compile``:
    ``torch.compile`` before capture (needs ``cuda_graphs``)."""

    precision: str = "exact"
    cuda_graphs: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("cuda_graphs", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.compile and not self.cuda_graphs:
            raise ValueError("compile needs cuda_graphs")


class EagerInference:
    """A bound inference network run eagerly; float32 products in the mode's precision around each call."""

    def __init__(self, model: InferenceNet, tf32: bool) -> None:
        self.model = model
        self.tf32 = tf32

    def __call__(self, *inputs: torch.Tensor | None, **named: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """rgb, pts, choose, category, queue_feats=None, as `InferenceNet.forward` takes them."""
        with tf32_products(self.tf32):
            return self.model(*inputs, **named)

    def capture(self, sizes=None) -> None:
        """Nothing to capture: the eager network has no per-size state."""


def _replace(module: nn.Module, **children: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` with some children replaced (``module`` itself is untouched)."""
    clone = copy.copy(module)
    clone._modules = {**module._modules, **children}
    return clone


def bind_forms(net: CleanPoseNet, mode: InferenceMode, kernels: bool) -> InferenceNet:
    """The inference copy of ``net`` for ``mode``; ``kernels``: Triton may run (a CUDA device, Triton
    installed). Parameters are shared with ``net``."""
    fast = mode.precision == "fast"
    # The product precision of every Triton kernel: TF32 (fast) or float32 accuracy on tensor cores by three
    # TF32 products (exact, "tf32x3": ops/triton/linear.py); None without kernels (torch forms).
    precision = ("tf32" if fast else "tf32x3") if kernels else None
    folded = fold_for_inference(net.eval())
    if precision == "tf32x3":  # the per-point layers left to torch run as one 3xTF32 launch each
        for m in folded.modules():
            if isinstance(m, PointwiseLinear):
                m.use_kernel(precision)
    forms: dict[str, nn.Module] = {
        "pts_extractor": FusedPointNet2(folded.pts_extractor, kernels, None if mode.compile else precision)
    }
    vit = folded.rgb_extractor
    if fast:
        dinov2 = (
            AutocastBackbone(vit, FAST_DTYPE)
            if mode.compile
            else FastDinoV2(vit, FAST_DTYPE, use_triton=kernels)
        )
        forms["rgb_extractor"] = dinov2
    elif kernels and not mode.compile:
        forms["rgb_extractor"] = ExactDinoV2(vit)
    if mode.compile:  # the compiler does its own fusion of the rest
        return InferenceNet(_replace(folded, **forms))
    iakd = folded.IAKD
    forms["IAKD"] = _replace(iakd, attn_layer=FusedAttnLayer(iakd.attn_layer, precision))
    forms["GAFA"] = FusedGAFA(folded.GAFA, knn_kernel=kernels, precision=precision)
    if net.cfg.use_front_door:
        forms["FD_Encoder"] = FusedFrontDoor(folded.FD_Encoder, precision, gate_kernel=precision is not None)
    nocs = folded.nocs_predictor
    if precision and FusedNOCSPredictor.supports(nocs):
        forms["nocs_predictor"] = FusedNOCSPredictor(nocs, precision)
    else:
        forms["nocs_predictor"] = _replace(
            nocs, self_attn_layer=FusedSelfAttnLayer(nocs.self_attn_layer, precision)
        )
    if precision:
        forms["estimator"] = FusedPoseSizeEstimator(folded.estimator)
    return InferenceNet(_replace(folded, **forms), gather_kernel=precision is not None)


def bind_cpu_forms(net: CleanPoseNet) -> InferenceNet:
    """The CPU (exact) inference copy of ``net``: the exact torch forms, then DINOv2 as `CpuDinoV2` and
    every other linear layer packed for oneDNN (forms/cpu.py). Parameters shared with ``net``, whose
    modules are untouched.

    The point-major CPU forms (forms/cpu_net.py, cpu_pointnet2.py, cpu_gafa.py: 1.55x at 6 objects, one
    thread) are not bound: with them the node left the last frame of a 40-frame burst unanswered for 60 s in
    test/cleanpose_ros/test_faults_dds.py (passes with this binding); to be found before they are bound."""
    inner = bind_forms(net, InferenceMode("exact"), kernels=False).net
    return InferenceNet(pack_linears(_replace(inner, rgb_extractor=CpuDinoV2(inner.rgb_extractor))))


def build_inference(
    net: CleanPoseNet, mode: InferenceMode, queue_entries: int | None = None
) -> GraphedForward | EagerInference:
    """The network that runs ``net`` (a reference `CleanPoseNet` on its device) in ``mode``:
    ``fwd(rgb, pts, choose, category, queue_feats=None)`` returns `CleanPoseNet.forward`'s eval dict, and
    ``fwd.capture(sizes)`` captures CUDA graphs for those batch sizes ahead of use (a no-op without graphs).
    ``queue_entries``: the confounder-queue width a graphed CleanPose network replays with."""
    if not isinstance(mode, InferenceMode):
        raise TypeError(f"mode must be an InferenceMode, got {type(mode).__name__}")
    device = next(net.parameters()).device
    cuda = device.type == "cuda"
    if not cuda and (mode.precision == "fast" or mode.cuda_graphs):
        raise ValueError(f"{mode} needs the network on a CUDA device, it is on {device}")
    float32 = next(net.parameters()).dtype == torch.float32
    if mode.cuda_graphs and not float32:
        raise ValueError("CUDA graphs replay a float32 network")
    if device.type == "cpu" and float32 and have_onednn():
        model = bind_cpu_forms(net)
    else:
        model = bind_forms(net, mode, kernels=cuda and HAVE_TRITON)
    tf32 = mode.precision == "fast"
    if not mode.cuda_graphs:
        return EagerInference(model, tf32)
    return GraphedForward(model, tf32=tf32, compile=mode.compile, queue_entries=queue_entries)
