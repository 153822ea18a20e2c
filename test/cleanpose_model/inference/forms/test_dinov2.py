"""DINOv2's half-precision inference form (inference/forms/dinov2.py) computes what autocast computes.

Half-precision outputs cannot equal a float reference, so the CPU tests bound the inference form's error
against a float64 forward by the error autocast itself makes there (same dtype, same weights): a wrong
LayerScale, norm, bias or token order is orders of magnitude beyond that. The weights are perturbed away
from their initial values (non-trivial norms, LayerScales and biases) so each of them matters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops"))  # the Triton tests' shared markers
from triton_env import DEVICE, needs_triton

from cleanpose_model.config import DinoConfig
from cleanpose_model.inference.forms.dinov2 import ExactDinoV2, FastDinoV2
from cleanpose_model.nn.dinov2 import DinoVisionTransformer
from cleanpose_model.ops.triton import HAVE_TRITON


def _vit(depth: int = 3, seed: int = 0) -> DinoVisionTransformer:
    torch.manual_seed(seed)
    vit = DinoVisionTransformer(DinoConfig(depth=depth)).eval()
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("gamma"):
                p.copy_(0.5 * torch.rand_like(p))
            elif name.endswith("bias"):
                p.add_(0.02 * torch.randn_like(p))
            elif name == "cls_token":
                p.copy_(torch.randn_like(p))
    return vit


def _image(bsz: int, h: int = 224, w: int = 224, seed: int = 1) -> torch.Tensor:
    return torch.randn(bsz, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _errors(vit, x, dtype, use_triton=False):
    """(inference form, autocast) max and mean abs errors against the float64 forward, on x's device."""
    with torch.no_grad():
        ref = vit.double()(x.double())
        vit.float()
        fast = FastDinoV2(vit, dtype, use_triton=use_triton)(x)
        with torch.autocast(x.device.type, dtype=dtype):
            auto = vit(x).float()
    assert fast.dtype == torch.float32 and fast.shape == ref.shape
    d_fast, d_auto = (fast.double() - ref).abs(), (auto.double() - ref).abs()
    return (d_fast.max().item(), d_fast.mean().item()), (d_auto.max().item(), d_auto.mean().item())


@pytest.mark.parametrize("dtype,bsz", [(torch.bfloat16, 2), (torch.float16, 1)])
def test_matches_autocast_error(dtype, bsz):
    (f_max, f_mean), (a_max, a_mean) = _errors(_vit(), _image(bsz), dtype)
    # the same roundings in a different order: errors of the same size (measured: within 1%), not a bias
    assert f_mean < 1.1 * a_mean, (f_mean, a_mean)
    assert f_max < 1.5 * a_max, (f_max, a_max)


@pytest.mark.parametrize("h,w", [(126, 98), (518, 518)])  # a non-square grid; the stored grid (no resize)
def test_other_input_sizes(h, w):
    (f_max, f_mean), (a_max, a_mean) = _errors(_vit(depth=1), _image(1, h, w), torch.bfloat16)
    assert f_mean < 1.1 * a_mean and f_max < 1.5 * a_max, (f_max, a_max, f_mean, a_mean)


def test_weights_are_cast_once_and_the_vit_is_untouched():
    vit = _vit(depth=2)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    fast = FastDinoV2(vit, torch.float16, use_triton=False)
    for name in ("qkv_weight", "proj_weight", "fc1_weight", "fc2_weight", "patch_weight", "qkv_bias"):
        assert getattr(fast, name).dtype == torch.float16, name
    for name in ("norm1_weight", "norm2_bias", "ls1", "ls2", "cls_token"):
        assert getattr(fast, name).dtype == torch.float32, name
    assert fast.qkv_weight.shape == (2, 3 * 384, 384) and fast.patch_weight.shape == (384, 3 * 14 * 14)
    with torch.no_grad():
        fast(_image(1))
    for k, v in vit.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    # the cast copies are not part of any checkpoint
    assert set(fast.state_dict()) == {f"vit.{k}" for k in before}


def test_builds_from_a_folded_backbone():
    # The builder folds the network first: the patch embedding is then a PatchLinear, not a Conv2d.
    from cleanpose_model.inference.forms.pointwise import PatchLinear, fold_for_inference

    vit = _vit(depth=2)
    folded = fold_for_inference(vit)
    assert isinstance(folded.patch_embed.proj, PatchLinear)
    a, b = (FastDinoV2(v, torch.bfloat16, use_triton=False) for v in (vit, folded))
    assert torch.equal(a.patch_weight, b.patch_weight) and torch.equal(a.patch_bias, b.patch_bias)
    with torch.no_grad():
        x = _image(1)
        assert torch.equal(a(x), b(x))


def test_rejects_a_full_precision_dtype():
    with pytest.raises(ValueError, match="dtype"):
        FastDinoV2(_vit(depth=1), torch.float32, use_triton=False)


@pytest.mark.gpu
@needs_triton
def test_triton_kernels_match_torch_forms():
    """The whole module with its Triton kernels (CUDA, or the interpreter) against its torch forms."""
    vit = _vit(depth=2).to(DEVICE)
    x = _image(2, 112, 112).to(DEVICE)
    with torch.no_grad():
        ref = FastDinoV2(vit, torch.float16, use_triton=False)(x)
        got = FastDinoV2(vit, torch.float16, use_triton=True)(x)
    # the same products; the kernels' norms may round fp16 outputs one step apart (interpreter: 2e-4, 5e-6)
    torch.testing.assert_close(got, ref, rtol=0, atol=5e-3)
    assert (got - ref).abs().mean() < 5e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_matches_autocast(dtype):
    x = _image(6).cuda()
    (f_max, f_mean), (a_max, a_mean) = _errors(_vit(depth=12).cuda(), x, dtype, use_triton=HAVE_TRITON)
    assert f_mean < 1.3 * a_mean, (f_mean, a_mean)
    assert f_max < 2.0 * a_max, (f_max, a_max)


@pytest.mark.gpu
@needs_triton
def test_exact_form_matches_the_reference_at_float32_accuracy():
    """The exact mode's fp32 form (3xTF32 products and attention) against the float64 reference forward:
    float32 rounding level, far inside the parity bound (1e-4), where TF32 products alone are ~1e-2 off."""
    vit = _vit(depth=2).to(DEVICE)
    x = _image(2, 112, 112).to(DEVICE)
    with torch.no_grad():
        ref = vit.double()(x.double())
        vit.float()
        got = ExactDinoV2(vit)(x)
        fp32 = vit(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    err = (got.double() - ref).abs().max().item()
    err_fp32 = (fp32.double() - ref).abs().max().item()
    assert err < 1e-4, err
    assert err < 10 * err_fp32 + 1e-6, (err, err_fp32)  # no worse than fp32's own rounding, within 10x
