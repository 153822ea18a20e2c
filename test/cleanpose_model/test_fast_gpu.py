"""The estimator's modes on CUDA through the public API (GPU only): CUDA-graph replay gives the eager
outputs, the fast precision stays close to the exact one, and the caller's global precision switches are
neither read nor changed by a forward."""

import pytest
import torch

from cleanpose_model.estimator import PoseEstimator
from cleanpose_model.parity import build_parity_net
from cleanpose_model.types import ObjectBatch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _batch(n: int) -> ObjectBatch:
    g = torch.Generator().manual_seed(n)
    return ObjectBatch(
        rgb=torch.randn(n, 3, 224, 224, generator=g),
        pts=torch.rand(n, 1024, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7]),
        choose=torch.randint(0, 224 * 224, (n, 1024), generator=g),
        category=torch.randint(0, 6, (n,), generator=g),
    )


def _switches() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture(params=[False, True], ids=["tf32-off", "tf32-on"])
def caller_tf32(request):
    """The caller's TF32 switches set either way (a mode must not depend on them), restored afterwards."""
    old = _switches()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = request.param
    try:
        yield (request.param, request.param)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("n", [1, 3, 9, 40])  # exact bucket, padding, padding, chunking past 32
def test_graphed_estimator_equals_eager(n, caller_tf32):
    net = build_parity_net("cleanpose", "cuda")
    queue = torch.randn(6, 80, 256, generator=torch.Generator().manual_seed(1))
    eager = PoseEstimator(net, queue=queue, device="cuda", cuda_graphs=False)
    graphed = PoseEstimator(net, queue=queue, device="cuda", cuda_graphs=True)
    a, b = eager.predict(_batch(n)), graphed.predict(_batch(n))
    assert _switches() == caller_tf32
    assert torch.allclose(a.rotation, b.rotation, atol=1e-5)
    assert torch.allclose(a.translation, b.translation, atol=1e-6)
    assert torch.allclose(a.size, b.size, atol=1e-6)


def test_fast_precision_stays_close(caller_tf32):
    net = build_parity_net("cleanpose", "cuda")
    queue = torch.randn(6, 80, 256, generator=torch.Generator().manual_seed(1))
    ref = PoseEstimator(net, queue=queue, device="cuda", cuda_graphs=False).predict(_batch(6))
    fast = PoseEstimator(net, queue=queue, device="cuda", mode="fast").predict(_batch(6))
    assert _switches() == caller_tf32
    cos = ((ref.rotation.transpose(1, 2) @ fast.rotation).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    assert torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).max() < 2.0
    assert (ref.translation - fast.translation).norm(dim=1).max() < 5e-3
