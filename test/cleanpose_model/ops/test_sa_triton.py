"""PointNet++ SA / FP kernels (ops/triton/sa.py) equal their torch references (ops/sa.py).

GPU tests, run where triton_env says (CUDA, or the CPU through Triton's interpreter).
"""

import itertools

import pytest
import torch
from triton_env import DEVICE, needs_triton

from cleanpose_model.inference.graphs import tf32_products
from cleanpose_model.ops import sa as R
from cleanpose_model.ops.triton import sa as S

pytestmark = [pytest.mark.gpu, needs_triton]


@pytest.fixture
def precision(request):
    """The kernels' product precision; cuBLAS (the split FP mode's later layers) follows it, as in the mode
    that binds it, so the "ieee" case holds the whole chain to fp32."""
    with tf32_products(request.param == "tf32"):
        yield request.param


def _layers(widths, gen, scale=1.0):
    out = []
    for c_in, c_out in itertools.pairwise(widths):
        w = torch.randn(c_out, c_in, generator=gen) * (scale * (2.0 / c_in) ** 0.5)
        out.append((w.to(DEVICE), (torch.randn(c_out, generator=gen) * 0.1).to(DEVICE)))
    return out


def _double(layers):
    return [(w.double(), b.double()) for w, b in layers]


def _check(got, ref, prec):
    if prec == "ieee":
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    else:  # TF32 keeps 10 mantissa bits per product input
        err = ((got.double() - ref).abs().max() / ref.abs().max()).item()
        assert err < 1e-2, err


SA_CASES = [
    # (bsz, n, m, nsamples, c_in, widths, rows, features point-major)
    (2, 64, 16, (8, 16), 0, (16, 16, 32), 64, False),
    (2, 64, 16, (16, 32), 32, (32, 32, 64), 128, True),
    (1, 40, 10, (8, 16), 40, (20, 24, 40), 32, False),  # partial tiles, padded widths and channels
    (1, 48, 6, (16, 32), 256, (128, 128, 256), 64, True),  # the deepest level's widths (chunked K / C3)
    (2, 32, 8, (16,), 24, (16, 32, 48), 64, True),  # one radius
]


@pytest.mark.parametrize("precision", ["ieee", "tf32"], indirect=True)
@pytest.mark.parametrize("case", SA_CASES)
def test_set_abstraction(precision, case):
    bsz, n, m, nsamples, c_in, widths, rows, point_major = case
    g = torch.Generator().manual_seed(n + m + c_in)
    xyz = (torch.rand(bsz, n, 3, generator=g) * 0.2).to(DEVICE)
    new_xyz = xyz[:, :m].contiguous()
    groups = [torch.randint(0, n, (bsz, m, s), generator=g).to(DEVICE) for s in nsamples]
    feats = None
    if c_in:
        f = torch.randn(bsz, n, c_in, generator=g).to(DEVICE)
        feats = f.transpose(1, 2) if point_major else f.transpose(1, 2).contiguous()
    layers = [_layers((3 + c_in, *widths), g) for _ in nsamples]
    w = S.pack_sa_weights(layers, c_in)
    got = S.set_abstraction(xyz, new_xyz, groups, feats, w, precision, S.Launch(rows, 4, 1))
    ref = R.set_abstraction_torch(
        xyz.double(),
        new_xyz.double(),
        groups,
        None if feats is None else feats.double(),
        [_double(ls) for ls in layers],
    )
    assert got.shape == (bsz, widths[-1] * len(nsamples), m)
    assert got.stride(1) == 1  # a view of a point-major buffer
    _check(got, ref, precision)


def test_set_abstraction_rejects_bad_nsample():
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(1, 32, 3, generator=g).to(DEVICE)
    layers = [_layers((3, 16, 16, 16), g)]
    w = S.pack_sa_weights(layers, 0)
    with pytest.raises(ValueError, match="power of two"):
        S.set_abstraction(
            xyz, xyz[:, :4].contiguous(), [torch.zeros(1, 4, 12, dtype=torch.long)], None, w, "ieee"
        )


FP_CASES = [
    # (bsz, n, m, c_known, c_skip, widths, mode, channels_last)
    (2, 64, 16, 64, 32, (64, 32), "fused", True),
    (2, 64, 16, 64, 0, (32, 32), "fused", False),  # no skip features, (B, C, N) output
    (1, 50, 13, 48, 20, (40, 24), "fused", True),  # partial tiles, padded widths and channels
    (2, 40, 16, 128, 64, (128, 96), "split", True),
    (1, 30, 8, 72, 0, (80, 48, 16), "split", True),  # three layers: one kernel, then two products
]


@pytest.mark.parametrize("precision", ["ieee", "tf32"], indirect=True)
@pytest.mark.parametrize("case", FP_CASES)
def test_feature_propagation(precision, case):
    bsz, n, m, c_known, c_skip, widths, mode, channels_last = case
    g = torch.Generator().manual_seed(n + m + c_known)
    known = torch.randn(bsz, m, c_known, generator=g).to(DEVICE).transpose(1, 2)  # point-major view
    skip = torch.randn(bsz, c_skip, n, generator=g).to(DEVICE) if c_skip else None
    idx = torch.randint(0, m, (bsz, n, 3), generator=g).to(DEVICE)
    weight = torch.rand(bsz, n, 3, generator=g) + 0.1
    weight = (weight / weight.sum(-1, keepdim=True)).to(DEVICE)
    layers = _layers((c_known + c_skip, *widths), g)
    w = S.pack_fp_weights(layers[:2], c_known, c_skip)
    got = S.feature_propagation(
        known,
        idx,
        weight,
        skip,
        w,
        precision,
        later_layers=layers[1:],
        mode=mode,
        channels_last=channels_last,
    )
    ref = R.feature_propagation_torch(
        known.double(), idx, weight.double(), None if skip is None else skip.double(), _double(layers)
    )
    assert got.shape == (bsz, widths[-1], n)
    _check(got, ref, precision)


def test_fp_default_modes_for_the_published_widths():
    g = torch.Generator().manual_seed(0)
    # (known + skip, widths) of FP levels 0..3 of the published configuration
    levels = [(256, (128, 128)), (320, (256, 256)), (640, (256, 256)), (768, (512, 512))]
    modes = [S.fp_default_mode(_layers((c, *w), g)) for c, w in levels]
    assert modes == ["fused", "fused", "split", "split"]
