import math

import torch

from cleanpose_model.geometry import euler_xyz_to_matrix
from cleanpose_model.selfsup.pose import cycle_pairs, umeyama


def _similarity(batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    rot = euler_xyz_to_matrix((torch.rand(batch, 3, generator=g).double() - 0.5) * 2 * math.pi)
    s = 0.1 + torch.rand(batch, generator=g).double()
    t = torch.randn(batch, 3, generator=g).double()
    src = torch.rand(batch, 200, 3, generator=g).double() - 0.5
    dst = s[:, None, None] * src @ rot.transpose(1, 2) + t[:, None]
    return src, dst, s, rot, t


def test_umeyama_recovers_a_known_similarity_exactly():
    src, dst, s, rot, t = _similarity(8, 0)
    s_hat, r_hat, t_hat = umeyama(src, dst)
    torch.testing.assert_close(s_hat, s, atol=1e-12, rtol=0)
    torch.testing.assert_close(r_hat, rot, atol=1e-12, rtol=0)
    torch.testing.assert_close(t_hat, t, atol=1e-12, rtol=0)
    dets = torch.linalg.det(r_hat)
    torch.testing.assert_close(dets, torch.ones_like(dets))


def test_umeyama_weights_exclude_outliers():
    src, dst, s, rot, t = _similarity(2, 1)
    dst = dst.clone()
    dst[:, :50] += 5.0  # corrupted pairs
    w = torch.ones(src.shape[:2])
    w[:, :50] = 0
    s_hat, r_hat, t_hat = umeyama(src, dst, w)
    torch.testing.assert_close(r_hat, rot, atol=1e-10, rtol=0)
    torch.testing.assert_close(s_hat, s, atol=1e-10, rtol=0)
    torch.testing.assert_close(t_hat, t, atol=1e-10, rtol=0)
    _, r_bad, _ = umeyama(src, dst)
    assert (r_bad - rot).abs().max() > 1e-3  # without the weights the fit is off: the weights do the work


def test_umeyama_returns_a_rotation_for_a_reflected_input():
    src, dst, *_ = _similarity(1, 2)
    dst = dst * torch.tensor([1.0, 1.0, -1.0], dtype=dst.dtype)  # a mirror image: no rotation fits exactly
    _, r_hat, _ = umeyama(src, dst)
    assert torch.linalg.det(r_hat).item() > 0


def test_cycle_pairs_keep_the_consistent_pixels():
    n, m = 40, 40
    sim = torch.eye(n, m)[None].clone()
    # Pixels 0..9 point to point 0, whose best pixel is 0: for pixels 1..9 the cycle does not close.
    sim[0, 1:10] = 0
    sim[0, 1:10, 0] = 0.9
    obs = torch.arange(n, dtype=torch.float32)[None, :, None].expand(1, n, 3).clone()
    j, w = cycle_pairs(sim, obs, keep=0.75, min_pairs=8)
    assert j[0, :10].tolist() == [0] * 10
    assert w[0, 1:10].sum() == 0
    assert w[0, 0] == 1 and w.sum() == 30


def test_read_out_recovers_pose_and_metric_size_from_exact_correspondences():
    """The read-out with the true correspondences: observed = s R x + t of canonical (unit-diagonal) points;
    rotation, translation and the metric size (extents x s) come back exactly."""
    from cleanpose_model.selfsup.pose import read_out

    src, dst, s, rot, t = _similarity(3, 3)
    shape = src / (src.amax(1) - src.amin(1)).norm(dim=1)[:, None, None]  # NOCS: diagonal 1
    dst = s[:, None, None] * shape @ rot.transpose(1, 2) + t[:, None]
    sim = -torch.cdist(shape, shape)  # pixel i of point i: the nearest point is itself
    out = read_out(sim, shape, shape, dst, keep=0.5, min_pairs=8, n_keypoints=16)
    torch.testing.assert_close(out["rotation"], rot, atol=1e-9, rtol=0)
    torch.testing.assert_close(out["translation"], t, atol=1e-9, rtol=0)
    extents = shape.amax(1) - shape.amin(1)
    torch.testing.assert_close(out["size"], extents * s[:, None], atol=1e-9, rtol=0)
    torch.testing.assert_close(out["keypoints"], dst[:, ::12][:, :16], atol=1e-9, rtol=0)


def test_read_out_size_is_never_zero_when_all_pixels_pick_one_point():
    """A collapsed similarity (every pixel's best point the same) gives Umeyama no source spread: s = 0 and a
    zero size, which the evaluator turns into NaN. The read-out falls back to the RMS-radius scale."""
    from cleanpose_model.selfsup.pose import read_out

    src, dst, s, _, _ = _similarity(2, 4)
    sim = torch.zeros(2, 200, 200, dtype=torch.float64)
    sim[:, :, 7] = 1.0
    out = read_out(sim, src, src, dst, keep=0.5, min_pairs=8, n_keypoints=16)
    assert torch.isfinite(out["size"]).all() and (out["size"] > 0).all()
    assert torch.isfinite(out["translation"]).all()
    torch.testing.assert_close(out["scale"], s, rtol=0.05, atol=0)  # uniform cloud: RMS ratio ~ s
