"""CleanPoseNet structure (published state_dict layout), config handling, forward shapes, train mode."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cleanpose_model.config import ModelConfig
from cleanpose_model.net import CleanPoseNet
from cleanpose_model.parity import official_keys


@pytest.mark.parametrize("name", ["cleanpose_nocs", "cleanpose_housecat6d", "agpose_nocs"])
def test_state_dict_equals_official_key_list(name: str) -> None:
    net = CleanPoseNet(ModelConfig.named(name))
    sd = net.state_dict()
    official = {s.name: s for s in official_keys(name)}
    assert sorted(set(official) - set(sd)) == []
    assert sorted(set(sd) - set(official)) == []
    for key, spec in official.items():
        assert tuple(sd[key].shape) == spec.shape, key
        assert sd[key].dtype == spec.dtype, key


def test_published_counts() -> None:
    cp = CleanPoseNet(ModelConfig.named("cleanpose_nocs"))
    assert sum(p.numel() for p in cp.parameters()) == 36_776_268
    frozen = sum(p.numel() for p in cp.parameters() if not p.requires_grad)
    assert frozen == 22_056_576
    hc = CleanPoseNet(ModelConfig.named("cleanpose_housecat6d"))
    assert sum(p.numel() for p in hc.parameters()) == 37_170_252


def test_demo_config_same_structure_and_small() -> None:
    demo = CleanPoseNet(ModelConfig.named("demo"))
    sd = demo.state_dict()
    n_values = sum(v.numel() for v in sd.values() if v.is_floating_point())
    assert n_values <= 4_500_000  # fp32 checkpoint <= 20 MB
    # Same module tree; only block counts and widths shrink.
    full = {s.name for s in official_keys("cleanpose_nocs")}
    assert set(sd) <= full
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {k.split(".")[0] for k in full}
    assert all(p.requires_grad for p in demo.rgb_extractor.parameters())


def test_config_yaml_roundtrip_and_errors(tmp_path) -> None:
    cfg = ModelConfig.named("demo")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.cat_num == 6 and cfg.symmetric_ids == [0, 1, 3]
    assert ModelConfig.named("cleanpose_housecat6d").cat_num == 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("variant: cleanpose\nbogus: 1\n")
    with pytest.raises(ValueError, match=r"unknown keys.*bogus"):
        ModelConfig.from_yaml(bad)
    with pytest.raises(ValueError, match="d_model"):
        ModelConfig(d_model=200)
    with pytest.raises(ValueError, match="no shipped config"):
        ModelConfig.named("nope")


def _inputs(cfg: ModelConfig, bsz: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    rgb = torch.randn(bsz, 3, s, s, generator=gen)
    pts = torch.randn(bsz, cfg.n_points, 3, generator=gen) * 0.05 + torch.tensor([0.0, 0.0, 0.7])
    choose = torch.randint(0, s * s, (bsz, cfg.n_points), generator=gen)
    cat = torch.arange(bsz) % cfg.cat_num
    queue = torch.randn(bsz, cfg.select_num, cfg.d_model, generator=gen)
    return rgb, pts, choose, cat, queue


def _tiny_config() -> ModelConfig:
    """Demo structure with every size cut down, so train-mode tests stay fast on a busy CPU.

    image_size 112 with a 224 positional table also exercises the pos-embed interpolation.
    """
    demo = ModelConfig.named("demo")
    return dataclasses.replace(
        demo,
        n_points=256,
        image_size=112,
        d_model=64,
        pts_feat_dim=32,
        rgb_feat_dim=32,
        dino=dataclasses.replace(demo.dino, embed_dim=64, depth=2, num_heads=2),
        pointnet2=dataclasses.replace(
            demo.pointnet2,
            npoints=[128, 64, 32, 16],
            sa_mlps=[[8, 8, 16], [16, 16, 32], [32, 32, 32], [32, 32, 64]],
            fp_mlps=[[32, 32], [64, 64], [64, 64], [64, 64]],
        ),
        attention=dataclasses.replace(demo.attention, num_heads=2, dim_ffn=64),
        keypoints=dataclasses.replace(demo.keypoints, kpt_num=16, block_num=2),
        nocs=dataclasses.replace(demo.nocs, mlp=[64, 64], atten_hidden=64),
        estimator=dataclasses.replace(
            demo.estimator, pose_mlp1=[64, 64], pose_mlp2=[64, 64], head_hidden=[64, 32]
        ),
        reconstructor=dataclasses.replace(demo.reconstructor, decoder_hidden=[64, 64]),
    )


@pytest.fixture(scope="module")
def demo_net() -> CleanPoseNet:
    torch.manual_seed(0)
    return CleanPoseNet(_tiny_config()).eval()


def test_demo_eval_forward() -> None:
    torch.manual_seed(0)
    net = CleanPoseNet(ModelConfig.named("demo")).eval()
    rgb, pts, choose, cat, queue = _inputs(net.cfg, 1)
    with torch.no_grad():
        out = net(rgb, pts, choose, cat, queue_feats=queue)
    assert out["pred_kpt_3d"].shape == (1, 48, 3) and torch.isfinite(out["pred_rotation"]).all()


@pytest.mark.parametrize("bsz", [1, 3])
def test_eval_forward_shapes(demo_net: CleanPoseNet, bsz: int) -> None:
    cfg = demo_net.cfg
    rgb, pts, choose, cat, queue = _inputs(cfg, bsz)
    with torch.no_grad():
        out = demo_net(rgb, pts, choose, cat.view(-1, 1), queue_feats=queue, return_intermediates=True)
    k = cfg.kpt_num
    assert out["pred_rotation"].shape == (bsz, 3, 3)
    assert out["pred_translation"].shape == (bsz, 3)
    assert out["pred_size"].shape == (bsz, 3)
    assert out["pred_kpt_3d"].shape == (bsz, k, 3)
    assert out["kpt_nocs"].shape == (bsz, k, 3)
    assert out["iakd_heatmap"].shape == (bsz, k, cfg.n_points)
    assert out["dino_x_prenorm"].shape == (bsz, 1 + (cfg.image_size // 14) ** 2, cfg.dino.embed_dim)
    assert out["iakd_rgb_local"].shape == (bsz, cfg.rgb_feat_dim, cfg.n_points)
    assert out["fd_out"].shape == (bsz, k, cfg.d_model)
    assert "recon_model" not in out
    rot = out["pred_rotation"]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(bsz, 3, 3), atol=1e-5, rtol=0)
    assert out["kpt_nocs"].abs().max() < 0.5
    # Batch independence in eval mode: object 0 alone gives the same answer.
    with torch.no_grad():
        solo = demo_net(rgb[:1], pts[:1], choose[:1], cat[:1], queue_feats=queue[:1])
    torch.testing.assert_close(solo["pred_translation"], out["pred_translation"][:1], atol=1e-5, rtol=1e-4)


def test_compute_recon_and_queue_errors(demo_net: CleanPoseNet) -> None:
    cfg = demo_net.cfg
    rgb, pts, choose, cat, queue = _inputs(cfg, 2)
    with torch.no_grad():
        out = demo_net(rgb, pts, choose, cat, queue_feats=queue, compute_recon=True)
    p = cfg.reconstructor.pts_per_kpt
    assert out["recon_model"].shape == (2, cfg.kpt_num * p, 3)
    assert out["recon_delta"].shape == (2, cfg.kpt_num * p, 3)
    with pytest.raises(ValueError, match="queue_feats"):
        demo_net(rgb, pts, choose, cat)
    with pytest.raises(ValueError, match="queue_feats must be"):
        demo_net(rgb, pts, choose, cat, queue_feats=queue[..., :7])
    # Any number of entries works (keys/values of a cross-attention): the deterministic mode uses all.
    with torch.no_grad():
        demo_net(rgb, pts, choose, cat, queue_feats=queue[:, :5])


def test_sparse_rgb_gather_equals_full_upsampling(demo_net: CleanPoseNet) -> None:
    cfg = demo_net.cfg
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, (cfg.image_size // 14) ** 2, cfg.dino.embed_dim, generator=gen)
    choose = torch.randint(0, cfg.image_size**2, (2, 500), generator=gen)
    choose[0, :4] = torch.tensor([0, cfg.image_size - 1, cfg.image_size**2 - 1, cfg.image_size * 7 + 3])
    sparse = demo_net.rgb_features(tokens, choose)
    literal = CleanPoseNet(dataclasses.replace(cfg, rgb_sparse_gather=False))
    literal.load_state_dict(demo_net.state_dict())
    full = literal.rgb_features(tokens, choose)
    torch.testing.assert_close(sparse, full, atol=1e-5, rtol=1e-5)


def test_train_forward_maps_augmentation_back(demo_net: CleanPoseNet) -> None:
    """Train-mode outputs with augmentation (dR, 0, ds) equal, mapped back, a run on the augmented
    cloud without augmentation: the network sees the same centred points in both runs."""
    net = CleanPoseNet(demo_net.cfg)
    net.load_state_dict(demo_net.state_dict())
    net.train()
    cfg = net.cfg
    rgb, pts, choose, cat, queue = _inputs(cfg, 3, seed=4)
    from cleanpose_model.geometry import euler_xyz_to_matrix

    d_rot = euler_xyz_to_matrix(torch.tensor([[0.2, -0.3, 0.1], [0.0, 0.1, 0.3], [-0.3, 0.2, 0.0]]))
    d_t = torch.zeros(3, 1, 3)
    d_s = torch.tensor([[0.9], [1.1], [1.2]])
    out = net(rgb, pts, choose, cat, queue_feats=queue, augmentation=(d_rot, d_t, d_s))
    c = pts.mean(1, keepdim=True)
    pts_aug = ((pts - c) / d_s[:, :, None]) @ d_rot
    ident = (torch.eye(3).expand(3, 3, 3), torch.zeros(3, 1, 3), torch.ones(3, 1))
    ref = net(rgb, pts_aug, choose, cat, queue_feats=queue, augmentation=ident)
    torch.testing.assert_close(out["pts_input"], ref["pts_input"], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["pred_rotation"], d_rot @ ref["pred_rotation"], atol=1e-4, rtol=1e-4)
    t_back = d_s * (d_rot @ (ref["pred_translation"] - ref["centroid"]).unsqueeze(-1)).squeeze(-1) + c[:, 0]
    torch.testing.assert_close(out["pred_translation"], t_back, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["pred_size"], ref["pred_size"] * d_s, atol=1e-4, rtol=1e-4)
    k_back = ((ref["pred_kpt_3d"] - ref["centroid"][:, None]) @ d_rot.transpose(1, 2)) * d_s[:, :, None] + c
    torch.testing.assert_close(out["pred_kpt_3d"], k_back, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["recon_delta"], ref["recon_delta"], atol=1e-4, rtol=1e-4)
    assert out["queue_feat"].shape == (3, cfg.d_model) and not out["queue_feat"].requires_grad
    assert out["distill_student"].shape == (3, cfg.distill.feat_dim)
    assert out["recon_model"].shape == (3, cfg.kpt_num * cfg.reconstructor.pts_per_kpt, 3)
    # Gradients reach the trainable heads, not a frozen part.
    loss = out["pred_translation"].sum() + out["distill_student"].sum() + out["recon_model"].sum()
    loss.backward()
    assert net.estimator.translation_estimator[0].weight.grad is not None
    assert net.pointnet2ulip.grad is not None


def test_train_forward_generator_is_deterministic(demo_net: CleanPoseNet) -> None:
    net = CleanPoseNet(demo_net.cfg)
    net.load_state_dict(demo_net.state_dict())
    net.train()
    rgb, pts, choose, cat, queue = _inputs(net.cfg, 2, seed=5)
    with torch.no_grad():
        a = net(rgb, pts, choose, cat, queue_feats=queue, generator=torch.Generator().manual_seed(11))
        b = net(rgb, pts, choose, cat, queue_feats=queue, generator=torch.Generator().manual_seed(11))
    for key in ("aug_rotation", "aug_translation", "aug_scale", "pred_rotation", "pred_translation"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.allclose(a["aug_rotation"], torch.eye(3).expand(2, 3, 3))
