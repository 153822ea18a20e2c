"""The Triton FPS kernel picks exactly the indices of the torch reference (GPU only)."""

import pytest
import torch

from cleanpose_model.ops import fps_triton
from cleanpose_model.ops import pointnet2 as P

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or not fps_triton.HAVE_TRITON, reason="needs CUDA + Triton"
    ),
]


def _reference(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    # The torch loop, forced by running it on the CPU copy.
    return P.furthest_point_sample(xyz.cpu(), npoint)


@pytest.mark.parametrize("n,m", [(1024, 512), (512, 256), (256, 128), (128, 64), (100, 37)])
def test_triton_fps_matches_torch(n, m):
    g = torch.Generator().manual_seed(n)
    xyz = torch.randn(4, n, 3, generator=g) * 0.05
    xyz[0, : n // 8] *= 0.1  # inside the 1e-3 skip radius
    xyz[1, 10:30] = xyz[1, 5]  # exact duplicates: ties
    xyz[2] = torch.round(xyz[2] * 50) / 50  # a lattice: many equal distances
    got = P.furthest_point_sample(xyz.cuda(), m).cpu()
    assert torch.equal(got, _reference(xyz, m))


def test_graphed_forward_matches_eager():
    from cleanpose_model.fast import GraphedForward
    from cleanpose_model.parity import build_parity_net

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    net = build_parity_net("cleanpose", "cuda")
    g = torch.Generator().manual_seed(0)
    n = 3
    rgb = torch.randn(n, 3, 224, 224, generator=g).cuda()
    pts = (torch.rand(n, 1024, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])).cuda()
    choose = torch.randint(0, 224 * 224, (n, 1024), generator=g).cuda()
    cat = torch.tensor([0, 5, 2]).cuda()
    queue = torch.randn(n, 12, 256, generator=g).cuda()
    with torch.inference_mode():
        ref = net(rgb, pts, choose, cat, queue_feats=queue)
        got = GraphedForward(net, precision="fp32", queue_entries=12)(rgb, pts, choose, cat, queue)
    for k in ("pred_rotation", "pred_translation", "pred_size"):
        assert torch.allclose(got[k], ref[k], atol=1e-5, rtol=1e-5), k
