"""CPU inference forms (inference/forms/cpu.py) against the references: the packed linear layer and the
oneDNN DINOv2 equal the reference within fp32 rounding, and the whole CPU exact network passes the
parity check on the vectors recorded with the published code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cleanpose_model import parity
from cleanpose_model.config import DinoConfig
from cleanpose_model.inference import InferenceMode, build_inference
from cleanpose_model.inference.forms.cpu import CpuDinoV2, PackedLinear, have_onednn, pack_linears
from cleanpose_model.nn.dinov2 import DinoVisionTransformer

pytestmark = pytest.mark.skipif(not have_onednn(), reason="this torch build has no oneDNN")
PARITY = Path(__file__).resolve().parents[3] / "data" / "parity" / "cleanpose_parity_v1.npz"


def test_packed_linear_equals_linear_and_leaves_the_module_tree_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Sequential(nn.Linear(48, 8)))
    packed = pack_linears(model)
    assert type(model[0]) is nn.Linear and type(model[2][0]) is nn.Linear  # the reference as it was
    assert isinstance(packed[0], PackedLinear) and isinstance(packed[2][0], PackedLinear)
    assert packed[0].bias is model[0].bias  # parameters shared
    for shape in [(5, 24), (2, 7, 24)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-6)
    assert pack_linears(nn.ReLU()) is not None


def test_cpu_dinov2_matches_the_reference_vit():
    torch.manual_seed(0)
    vit = DinoVisionTransformer(DinoConfig(depth=2)).eval()
    x = torch.randn(2, 3, 112, 98)  # a non-square size: the positional table is resized
    with torch.inference_mode():
        ref = vit(x)
        got = CpuDinoV2(vit)(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def net():
    return parity.build_parity_net("cleanpose", "cpu").eval()


def test_cpu_exact_passes_the_published_parity_check(net):
    fwd = build_inference(net, InferenceMode("exact"))
    report = parity.run_parity("cleanpose", PARITY, net=net, forward=fwd)
    assert set(report) >= set(parity.ABS_CHECKED)
    assert parity.failures(report) == [], "\n" + parity.format_report(report)
