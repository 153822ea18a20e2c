"""The CPU PointNet++ form (inference/forms/cpu_pointnet2.py) against the torch references: the same
neighbour and three-NN picks bit for bit (duplicates, empty and overfull neighbourhoods included) and the
same features within fp32 rounding."""

from __future__ import annotations

import pytest
import torch

from cleanpose_model.config import ModelConfig
from cleanpose_model.inference.forms.cpu import have_onednn
from cleanpose_model.inference.forms.cpu_pointnet2 import (
    CpuPointNet2,
    ball_query_sparse,
    furthest_point_sample,
    sq_dist,
    three_nn,
)
from cleanpose_model.inference.forms.pointwise import fold_for_inference
from cleanpose_model.nn.pointnet2_msg import PointNet2MSG
from cleanpose_model.ops import pointnet2 as ops

pytestmark = pytest.mark.skipif(not have_onednn(), reason="this torch build has no oneDNN")


def _cloud(bsz: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(bsz, n, 3, generator=g) * 0.05
    pts[:, n // 2 : n // 2 + 40] = pts[:, :40]  # duplicated points (sampling with replacement)
    pts[0, -30:] = torch.tensor([0.5, 0.5, 0.5])  # a far cluster: centres with few or no neighbours
    return pts


def test_geometry_equals_the_reference_bit_for_bit():
    xyz = _cloud(3, 700, 0)
    xyz[1, :5] = 0.0  # points at the origin: never picked
    assert torch.equal(furthest_point_sample(xyz, 200), ops.furthest_point_sample(xyz, 200))
    centres = ops.sample_centres(xyz, 200)
    torch.testing.assert_close(sq_dist(centres, xyz), ops.pairwise_sq_dist(centres, xyz), rtol=0, atol=0)
    for radii, ns in [([0.01, 0.02], [16, 32]), ([0.04, 0.08], [16, 32]), ([0.3, 0.1], [64, 8])]:
        got = ball_query_sparse(centres, xyz, radii, ns)
        ref = ops.ball_query_multi(centres, xyz, radii, ns)
        for g, r in zip(got, ref, strict=True):
            assert torch.equal(g, r)
    for got, ref in zip(three_nn(xyz, centres), ops.three_nn(xyz, centres), strict=True):
        assert torch.equal(got, ref)


def test_cpu_pointnet2_matches_the_reference():
    torch.manual_seed(0)
    pn = PointNet2MSG(ModelConfig.named("cleanpose_nocs").pointnet2).eval()
    for m in pn.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    xyz = _cloud(2, 1024, 1)
    with torch.inference_mode():
        ref = pn(xyz)
        got = CpuPointNet2(fold_for_inference(pn))(xyz)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
