"""The one-kernel RGB gather (ops/gather_triton.py) equals the torch form, and the torch form is the
network's own.

The kernel tests are GPU tests; they also run on the CPU through Triton's interpreter
(`TRITON_INTERPRET=1 pytest -m gpu test/cleanpose_model/ops`) where Triton is installed.
"""

import pytest
import torch
from triton_env import DEVICE, INTERPRET, needs_triton

from cleanpose_model import parity
from cleanpose_model.ops import gather_triton as G

SIZE, GRID = 224, 16


def _choose(bsz: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    choose = torch.randint(0, SIZE * SIZE, (bsz, n), generator=g)
    # the crop's corners and edges, where the source coordinates clamp
    edges = [0, SIZE - 1, SIZE * SIZE - 1, SIZE * (SIZE - 1), SIZE * 7 + 3, SIZE * 100 + 223, 6, SIZE * 6]
    k = min(n, len(edges))
    choose[0, :k] = torch.tensor(edges[:k])
    return choose


@pytest.fixture(scope="module")
def net():
    return parity.build_parity_net("cleanpose", torch.device(DEVICE)).eval()


def test_reference_is_the_network_form(net):
    """bilinear_gather_torch is the net's sparse gather (the fused switch off, the default): bit for bit."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, GRID * GRID, 384, generator=g).to(DEVICE)
    choose = _choose(2, 700, seed=2).to(DEVICE)
    with torch.no_grad():
        got = net.rgb_features(tokens, choose)
        feat = net.feature_mlp(tokens.transpose(1, 2))
        ref = G.bilinear_gather_torch(feat, choose, GRID, SIZE)
    assert not net.fused_rgb_gather
    assert torch.equal(got, ref)


def _on_kernel_device(monkeypatch):
    # Under the interpreter the tensors live on the CPU: let the kernel path take them.
    if INTERPRET and DEVICE == "cpu":
        monkeypatch.setattr(G, "use_kernel", lambda *t: True)  # the net calls it through the module


@pytest.mark.parametrize(
    "bsz,n_ch,n_pts,channels_last", [(1, 128, 1024, True), (3, 128, 500, False), (2, 40, 77, True)]
)
@pytest.mark.gpu
@needs_triton
def test_kernel_equals_reference_bit_for_bit(bsz, n_ch, n_pts, channels_last):
    g = torch.Generator().manual_seed(n_pts)
    if channels_last:  # as the product writes it: (B, P, C), read through its transposed view
        feat = torch.randn(bsz, GRID * GRID, n_ch, generator=g).to(DEVICE).transpose(1, 2)
    else:
        feat = torch.randn(bsz, n_ch, GRID * GRID, generator=g).to(DEVICE)
    choose = _choose(bsz, n_pts, seed=n_pts).to(DEVICE)
    got = G.bilinear_gather_triton(feat, choose, GRID, SIZE)
    ref = G.bilinear_gather_torch(feat, choose, GRID, SIZE)
    assert got.shape == (bsz, n_ch, n_pts)
    # The same float32 operations in the same order, no FMA contraction: equal, not merely close.
    assert torch.equal(got, ref), (got - ref).abs().max().item()


@pytest.mark.gpu
@needs_triton
def test_kernel_bias_passes_through():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 128, GRID * GRID, generator=g).to(DEVICE)
    bias = torch.randn(128, generator=g).to(DEVICE)
    choose = _choose(2, 300, seed=3).to(DEVICE)
    got = G.bilinear_gather_triton(feat, choose, GRID, SIZE, bias=bias)
    ref = G.bilinear_gather_torch(feat + bias[:, None], choose, GRID, SIZE)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@needs_triton
def test_network_switch_matches(net, monkeypatch):
    """The net's fused switch (product + kernel, as fuse_for_inference sets it) against the default form in
    float64, on DINOv2-shaped tokens read in place after the class token."""
    _on_kernel_device(monkeypatch)
    g = torch.Generator().manual_seed(4)
    tokens = torch.randn(3, 1 + GRID * GRID, 384, generator=g).to(DEVICE)
    choose = _choose(3, 1024, seed=5).to(DEVICE)
    conv = net.feature_mlp[0]
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.inference_mode():
            net.fused_rgb_gather = True
            try:
                assert G.use_kernel(tokens, conv.weight)
                got = net.rgb_features(tokens[:, 1:], choose)
            finally:
                del net.fused_rgb_gather  # back to the class default
            w, b = conv.weight.double().flatten(1), conv.bias.double()
            feat = (tokens[:, 1:].double() @ w.T + b).transpose(1, 2)
            ref = G.bilinear_gather_torch(feat, choose, GRID, SIZE)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert got.shape == ref.shape == (3, 128, 1024) and got.dtype == torch.float32
    assert ref.abs().max() > 1.0
    # fp32 (the interpreter): reassociated sums of 384 products; TF32 on a GPU keeps 10 mantissa bits
    # (measured against float64 with TF32-rounded inputs: 1.3e-3 at most).
    tol = 1e-5 if DEVICE == "cpu" else 5e-3
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=tol)
