"""The one-kernel RGB gather (ops/triton/gather.py) equals the torch form (ops/gather.py), and the torch
form is the network's own.

The kernel tests are GPU tests; they also run on the CPU through Triton's interpreter
(`TRITON_INTERPRET=1 pytest -m gpu test/cleanpose_model/ops`) where Triton is installed.
"""

import pytest
import torch
from triton_env import DEVICE, needs_triton

from cleanpose_model import parity
from cleanpose_model.ops.gather import bilinear_gather_torch
from cleanpose_model.ops.triton import gather as G

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
    """bilinear_gather_torch is the net's sparse gather: bit for bit."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, GRID * GRID, 384, generator=g).to(DEVICE)
    choose = _choose(2, 700, seed=2).to(DEVICE)
    with torch.no_grad():
        got = net.rgb_features(tokens, choose)
        feat = net.feature_mlp(tokens.transpose(1, 2))
        ref = bilinear_gather_torch(feat, choose, GRID, SIZE)
    assert torch.equal(got, ref)


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
    ref = bilinear_gather_torch(feat, choose, GRID, SIZE)
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
    ref = bilinear_gather_torch(feat + bias[:, None], choose, GRID, SIZE)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
