"""The Triton PointNet++ kernels (ops/triton/pointnet2.py) make exactly the choices of the torch references
(ops/pointnet2.py).

GPU tests, run where triton_env says (CUDA, or the CPU through Triton's interpreter).
"""

import pytest
import torch
from triton_env import DEVICE, needs_triton

from cleanpose_model.ops import pointnet2 as P
from cleanpose_model.ops.triton import pointnet2 as T

pytestmark = [pytest.mark.gpu, needs_triton]


def _cloud(n: int, seed: int, batch: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randn(batch, n, 3, generator=g) * 0.05
    xyz[0, : n // 8] *= 0.1  # inside the FPS 1e-3 skip radius
    xyz[1, 10:30] = xyz[1, 5]  # exact duplicates: ties
    xyz[2] = torch.round(xyz[2] * 50) / 50  # a lattice: many equal distances
    return xyz


@pytest.mark.parametrize("n,m", [(1024, 512), (512, 256), (256, 128), (128, 64), (100, 37)])
def test_triton_fps_matches_torch(n, m):
    xyz = _cloud(n, n)
    ref = P.furthest_point_sample(xyz, m)  # CPU: the torch loop
    dev = torch.device(DEVICE)
    for warps in (None, 1, 4):  # every launch width makes the same choices
        idx, centres = T.fps_triton(xyz.to(dev), T.fps_tie_rank(n, dev), m, num_warps=warps)
        assert torch.equal(idx.cpu(), ref)
        assert torch.equal(centres.cpu(), P.gather_points(xyz, ref))


@pytest.mark.parametrize("block_m", [8, 32])
@pytest.mark.parametrize(
    "n,m,radii,ns", [(1024, 512, (0.01, 0.02), (16, 32)), (300, 70, (0.04, 0.08), (16, 32))]
)
def test_triton_ball_query_matches_torch(n, m, radii, ns, block_m):
    xyz = _cloud(n, n + 1)
    new = xyz[:, :m].clone()
    new[3, :5] = 10.0  # no neighbour at all: all-zero rows
    got = T.ball_query2_triton(new.to(DEVICE), xyz.to(DEVICE), radii, ns, block_m=block_m)
    for r, k, g in zip(radii, ns, got, strict=True):
        assert torch.equal(g.cpu(), P.ball_query(r, k, xyz, new))


@pytest.mark.parametrize("n,m", [(1024, 512), (512, 256), (128, 64), (50, 3)])
def test_triton_three_nn_matches_torch(n, m):
    unknown = _cloud(n, n + 2)
    known = unknown[:, :m].clone()
    known[2, 1] = known[2, 0]  # equal distances: the earlier index must win
    dist, idx = T.three_nn_triton(unknown.to(DEVICE), known.to(DEVICE))
    rd, ri = P.three_nn(unknown, known)  # CPU tensors: the torch reference
    assert torch.equal(idx.cpu(), ri)
    assert torch.equal(dist.cpu(), rd)
