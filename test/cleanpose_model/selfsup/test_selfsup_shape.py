import time

import pytest
import torch

from cleanpose_model.selfsup import SelfSupConfig, SelfSupNet
from cleanpose_model.selfsup.shape import ShapeMemory
from cleanpose_training.selfsup.losses import stage2_losses

STAGE2_WEIGHTS = {
    "coarse": 1.0,
    "fine": 1.0,
    "cycle_pix": 1.0,
    "cycle_pt": 1.0,
    "commit": 1.0,
    "cycle_topk": 0.5,
}


def test_nearest_code_and_straight_through_gradient():
    torch.manual_seed(0)
    mem = ShapeMemory(8, 4)
    z_e = torch.randn(3, 5, 4, requires_grad=True)
    q = mem(z_e)
    d = torch.cdist(z_e.detach().reshape(-1, 4), mem.codes)
    assert torch.equal(q.index.reshape(-1), d.argmin(1))
    torch.testing.assert_close(q.z_q, mem.codes[q.index])
    upstream = torch.randn_like(q.z_q)
    (q.z_q * upstream).sum().backward()
    # Straight-through: the gradient of the quantised value reaches the descriptors unchanged.
    torch.testing.assert_close(z_e.grad, upstream)
    assert not mem.codes.requires_grad


def test_commitment_term_pulls_descriptors_toward_their_codes():
    torch.manual_seed(1)
    mem = ShapeMemory(4, 2)
    z_e = torch.randn(1, 6, 2, requires_grad=True)
    mem(z_e).commit_loss.backward()
    e = mem.codes[mem.nearest(z_e.detach())]
    step = -z_e.grad
    assert ((step * (e - z_e.detach())).sum(-1) > 0).all()


def test_ema_moves_codes_toward_assigned_features():
    torch.manual_seed(2)
    mem = ShapeMemory(6, 3, decay=0.9)
    z_e = torch.randn(1, 40, 3) * 3
    idx = mem.nearest(z_e)
    before = mem.codes.clone()
    for _ in range(5):
        mem(z_e, update=True)
    used = idx.unique()
    for k in used.tolist():
        target = z_e[idx == k].mean(0)
        assert (mem.codes[k] - target).norm() < (before[k] - target).norm()
    unused = [k for k in range(6) if k not in used.tolist()]
    for k in unused:  # no descriptor: the code keeps its place (up to the smoothing's rescale)
        assert torch.allclose(mem.codes[k] / mem.codes[k].norm(), before[k] / before[k].norm(), atol=1e-5)
    snapshot = (mem.codes.clone(), mem.cluster_size.clone(), mem.code_sum.clone())
    q = mem(z_e)  # no update without update=True
    assert all(torch.equal(a, b) for a, b in zip(snapshot, (mem.codes, mem.cluster_size, mem.code_sum)))
    assert q.index.shape == (1, 40)


def _tiny_batch(cfg, b=2, seed=0, margin=4):
    """Random crops whose object pixels lie in the central (1 - 2/margin) of the crop (margin 0: all of
    it, every region foreground: the Hungarian step's worst case), depth points around 0.7 m."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randn(b, 3, cfg.image_size, cfg.image_size, generator=g)
    side = cfg.image_size
    lo, hi = (side // margin, side - side // margin) if margin else (0, side)
    rows = torch.randint(lo, hi, (b, cfg.n_points), generator=g)
    cols = torch.randint(lo, hi, (b, cfg.n_points), generator=g)
    pts = torch.rand(b, cfg.n_points, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])
    return rgb, pts, rows * side + cols, torch.arange(b) % len(cfg.categories)


def test_network_shapes_and_all_losses_reach_the_encoder():
    cfg = SelfSupConfig.named("selfsup_tiny")
    torch.manual_seed(0)
    net = SelfSupNet(cfg)
    rgb, pts, choose, cat = _tiny_batch(cfg)
    out = net(rgb, choose, cat)
    assert out["shape"].shape == (2, cfg.shape_points, 3)
    assert out["s_c"].shape == (2, cfg.region_grid**2, cfg.corr_points)
    assert out["s_f"].shape == (2, cfg.pixel_grid**2, cfg.corr_points)
    terms = stage2_losses(out, pts, cfg, STAGE2_WEIGHTS)
    assert all(bool(torch.isfinite(v)) for v in terms.values()) and terms["coarse"] > 0
    for name in ("coarse", "fine", "cycle_pix", "cycle_pt"):
        net.zero_grad()
        terms = stage2_losses(net(rgb, choose, cat), pts, cfg, STAGE2_WEIGHTS)
        terms[name].backward()
        g = net.backbone.encoder.stem[0].weight.grad
        assert g is not None and g.abs().sum() > 0, name


@pytest.mark.parametrize("name", ["selfsup_tiny", "selfsup"])
def test_hungarian_share_of_a_cpu_training_step(name):
    """Measures the assignment's share of one stage-2 CPU step (forward + losses + backward); printed, and
    bounded so it cannot come to dominate the step unnoticed."""
    cfg = SelfSupConfig.named(name)
    torch.manual_seed(0)
    net = SelfSupNet(cfg)
    b = 2 if name == "selfsup" else 8
    rgb, pts, choose, cat = _tiny_batch(cfg, b, margin=0)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    shares = []
    for _ in range(2):
        t0 = time.perf_counter()
        terms = stage2_losses(net(rgb, choose, cat, update_memory=True), pts, cfg, STAGE2_WEIGHTS)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        step = time.perf_counter() - t0
        shares.append(float(terms["hungarian_s"]) / step)
    fg = int(net(rgb, choose, cat)["region_fg"].sum(1).min())
    print(
        f"\n{name}: batch {b}, {fg} regions x {cfg.corr_points} points per object, step {step * 1e3:.0f} ms,"
    )
    print(f"Hungarian {float(terms['hungarian_s']) * 1e3:.1f} ms = {shares[-1] * 100:.1f}% of the step")
    assert min(shares) < 0.5
