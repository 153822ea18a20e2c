"""ops/cuda_stack.py: a smaller per-thread stack limit takes effect and kernels still compute the same."""

import pytest
import torch

from cleanpose_model.ops import cuda_stack as S


def test_without_cuda_it_is_a_no_op():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the GPU test")
    assert S.set_thread_stack_limit(256) is None
    assert S.thread_stack_limit() is None
    with pytest.raises(ValueError):
        S.set_thread_stack_limit(0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_smaller_stack_limit_keeps_results():
    from cleanpose_model.ops import pointnet2 as P

    old = S.thread_stack_limit()
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(2, 1024, 3, generator=g) * 0.1
    a = torch.randn(64, 256, generator=g)
    try:
        assert S.set_thread_stack_limit(256) >= 256
        assert S.thread_stack_limit() < old
        new = P.sample_centres(xyz.cuda(), 512)
        got = P.ball_query_multi(new, xyz.cuda(), [0.01, 0.02], [16, 32])
        ref = P.ball_query_multi(new.cpu(), xyz, [0.01, 0.02], [16, 32])
        assert all(torch.equal(x.cpu(), y) for x, y in zip(got, ref, strict=True))
        assert torch.allclose((a.cuda() @ a.cuda().T).cpu(), a @ a.T, rtol=1e-2, atol=1e-2)
    finally:
        S.set_thread_stack_limit(old)
