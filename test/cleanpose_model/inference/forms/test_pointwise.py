"""Folding of 1x1 conv + BN + ReLU chains and the patch embedding into matrix products
(inference/forms/pointwise.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cleanpose_model import parity
from cleanpose_model.inference.forms.pointwise import PatchLinear, PointwiseLinear, fold_for_inference
from cleanpose_model.nn.pointnet2_msg import SharedMLP

PARITY_DIR = Path(__file__).resolve().parents[3] / "data" / "parity"


def _randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


def test_sequential_conv_bn_relu_folds_and_matches():
    g = torch.Generator().manual_seed(0)
    seq = nn.Sequential(
        nn.Conv1d(8, 16, 1), nn.BatchNorm1d(16), nn.ReLU(inplace=True), nn.Conv1d(16, 4, 1), nn.BatchNorm1d(4)
    ).eval()
    _randomise_bn(seq, g)
    folded = fold_for_inference(seq)
    kinds = [type(m) for m in folded]
    # Indices stay valid: the BN / ReLU slots are Identity.
    assert kinds == [PointwiseLinear, nn.Identity, nn.Identity, PointwiseLinear, nn.Identity]
    assert folded[0].relu and not folded[3].relu
    x = torch.randn(3, 8, 50, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), seq(x), rtol=1e-5, atol=1e-5)
        # A transposed view of a channels-last tensor takes the F.linear path; same values.
        xt = x.transpose(1, 2).contiguous().transpose(1, 2)
        torch.testing.assert_close(folded(xt), seq(x), rtol=1e-5, atol=1e-5)
    # The original is untouched.
    assert isinstance(seq[0], nn.Conv1d) and isinstance(seq[1], nn.BatchNorm1d)


def test_pointnet2_shared_mlp_folds_4d():
    g = torch.Generator().manual_seed(1)
    mlp = SharedMLP([6, 32, 64]).eval()
    _randomise_bn(mlp, g)
    folded = fold_for_inference(mlp)
    assert sum(isinstance(m, PointwiseLinear) for m in folded.modules()) == 2
    assert not any(isinstance(m, nn.Conv2d | nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 6, 16, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), mlp(x), rtol=1e-5, atol=1e-5)


def test_patch_linear_equals_strided_conv():
    g = torch.Generator().manual_seed(2)
    conv = nn.Conv2d(3, 12, kernel_size=14, stride=14)
    patch = PatchLinear(conv)
    for size in (56, 60):  # 60: a partial trailing patch is dropped, as by the convolution
        x = torch.randn(2, 3, size, size, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(patch(x), conv(x), rtol=1e-5, atol=1e-5)


def test_fold_needs_eval_statistics():
    seq = nn.Sequential(nn.Conv1d(4, 4, 1), nn.BatchNorm1d(4)).train()
    with pytest.raises(ValueError, match="eval"):
        fold_for_inference(seq)


def test_children_not_in_sequence_are_not_chained():
    class TwoPaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 1)
            self.bn = nn.BatchNorm1d(4)  # applied to the input, not to the conv output

        def forward(self, x):
            return self.conv(x) + self.bn(x)

    g = torch.Generator().manual_seed(3)
    m = TwoPaths().eval()
    _randomise_bn(m, g)
    folded = fold_for_inference(m)
    assert isinstance(folded.conv, PointwiseLinear) and isinstance(folded.bn, nn.BatchNorm1d)
    x = torch.randn(2, 4, 10, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["cleanpose", "agpose"])
def test_folded_network_keeps_parity_and_shares_weights(variant):
    net = parity.build_parity_net(variant)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_for_inference(net)
    unfolded = (nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm)
    assert not any(isinstance(m, unfolded) for m in folded.modules())
    # Unfolded parts are shared, not copied; the source network is unchanged.
    assert folded.rgb_extractor.blocks[0].attn.qkv.weight is net.rgb_extractor.blocks[0].attn.qkv.weight
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())

    def forward(*args, queue_feats=None):
        return folded(*args, queue_feats=queue_feats, return_intermediates=True)

    report = parity.run_parity(variant, PARITY_DIR / f"{variant}_parity_v1.npz", net=folded, forward=forward)
    assert parity.failures(report) == []
    assert len(report) > 3


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["channels_first", "channels_last_view", "4d"])
def test_pointwise_kernel_matches_torch_products(layout):
    """``use_kernel("tf32x3")`` (the exact mode on CUDA, or Triton's interpreter): the same layer as its torch
    products, at float32 accuracy, for every input layout the network hands it."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops"))
    from triton_env import DEVICE, needs_triton

    if needs_triton.args[0]:
        pytest.skip(needs_triton.kwargs["reason"])
    g = torch.Generator().manual_seed(3)
    layer = PointwiseLinear(torch.randn(48, 32, generator=g) * 0.2, torch.randn(48, generator=g), relu=True)
    layer = layer.to(DEVICE)
    shape = {"channels_first": (2, 32, 300), "channels_last_view": (2, 300, 32), "4d": (2, 32, 64, 16)}[
        layout
    ]
    x = torch.randn(*shape, generator=g).to(DEVICE)
    if layout == "channels_last_view":
        x = x.transpose(1, 2)  # (B, C, N) whose memory is (B, N, C)
    with torch.no_grad():
        ref = torch.relu(
            torch.einsum("oc,bc...->bo...", layer.weight.double(), x.double())
            + layer.bias.double().view(1, -1, *([1] * (x.dim() - 2)))
        )
        layer.use_kernel("tf32x3")
        got = layer(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-5)
