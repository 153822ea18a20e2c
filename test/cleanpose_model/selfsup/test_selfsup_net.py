"""SelfSupNet.forward: the correspondence outputs treat the reconstruction as a constant, so stage 2's
correspondence losses cannot reshape the decoded object through the straight-through estimator."""

from __future__ import annotations

import torch

from cleanpose_model.selfsup import SelfSupNet, load_selfsup_config


def _inputs(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    side = cfg.image_size
    rgb = torch.randn(b, 3, side, side, generator=g)
    choose = torch.randint(0, side * side, (b, cfg.n_points), generator=g)
    pts = torch.rand(b, cfg.n_points, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])
    return rgb, choose, pts, torch.tensor([0, 4])


def _trained_forward():
    """A seeded tiny network in training mode, its outputs on seeded inputs, and the observed points."""
    torch.manual_seed(0)
    cfg = load_selfsup_config("selfsup_tiny")
    net = SelfSupNet(cfg).train()
    rgb, choose, pts, cat = _inputs(cfg)
    return cfg, net, net(rgb, choose, cat), pts


def test_correspondence_terms_send_no_gradient_into_the_shape_code():
    cfg, net, out, pts = _trained_forward()
    from cleanpose_model.selfsup.correspondence import cycle_loss

    l_pix, l_pt = cycle_loss(out["s_pix"], out["corr_pts"], pts, cfg.tau)
    (out["s_c"].sum() + out["s_f"].sum() + l_pix + l_pt).backward()
    # z_e's projection gets nothing: the shape path is cut
    assert net.to_code.weight.grad is None or not net.to_code.weight.grad.any()
    # while the image features and the point features still learn
    assert net.backbone.head3.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.pointnet.parameters())
    assert not out["corr_pts"].requires_grad


def test_stage1_chamfer_still_reaches_the_encoder():
    _, net, out, _ = _trained_forward()
    out["shape"].pow(2).sum().backward()
    assert net.to_code.weight.grad.abs().sum() > 0
