"""ULIP encoders: checkpoint loading (ULIP release layout, weights_only), distillation and ULIP queue init
in the
trainer, and the NOCS 30+10 mixed sources through the trainer (tiny sizes)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pytest
import torch
from _tiny import tiny_config
from _toy import ToyObjects

from cleanpose_training.losses import LossWeights
from cleanpose_training.trainer import Trainer, build_model
from cleanpose_training.ulip import (
    PointBertConfig,
    Pointnet2Ssg,
    PointTransformer,
    UlipCheckpointError,
    load_pointbert_teacher,
    load_pointnet2_ssg,
)

TINY_BERT = {
    "trans_dim": 16,
    "depth": 2,
    "num_heads": 2,
    "group_size": 8,
    "num_group": 16,
    "encoder_dims": 32,
}


def _ulip_file(path: Path, encoder: torch.nn.Module, extra_keys: bool = True) -> Path:
    """The ULIP release layout: DDP 'module.' prefixes, towers besides the point encoder, an argparse
    Namespace."""
    sd = {f"module.point_encoder.{k}": v for k, v in encoder.state_dict().items()}
    if extra_keys:
        sd["module.pc_projection"] = torch.randn(2 * getattr(encoder, "cfg", PointBertConfig()).trans_dim, 4)
        sd["module.logit_scale"] = torch.tensor(1.0)
    torch.save({"state_dict": sd, "epoch": 3, "args": argparse.Namespace(model="ULIP2_PointBERT")}, path)
    return path


def test_pointbert_structure_and_strict_loading(tmp_path):
    full = PointTransformer()
    keys = set(full.state_dict())
    assert {
        "cls_token",
        "cls_pos",
        "reduce_dim.weight",
        "pos_embed.2.weight",
        "norm.weight",
        "encoder.first_conv.0.weight",
        "encoder.second_conv.3.weight",
        "blocks.blocks.11.attn.qkv.weight",
        "blocks.blocks.11.mlp.fc2.bias",
    } <= keys
    assert "blocks.blocks.0.attn.qkv.bias" not in keys  # qkv without bias
    cfg = PointBertConfig(**TINY_BERT)
    src = PointTransformer(cfg)
    path = _ulip_file(tmp_path / "pointbert_ULIP-2.pt", src)
    teacher = load_pointbert_teacher(path, cfg)
    assert not any(p.requires_grad for p in teacher.parameters())
    pts = torch.randn(3, 128, 3) * 0.1
    teacher.eval()
    src.eval()
    out = teacher(pts)
    assert out.shape == (3, 2 * cfg.trans_dim)
    assert torch.equal(out, src(pts))
    with pytest.raises(UlipCheckpointError, match="missing"):
        load_pointbert_teacher(path, PointBertConfig(**{**TINY_BERT, "depth": 3}))


def test_ulip_file_with_foreign_pickled_objects_gives_clear_error(tmp_path):
    class Foreign:  # not an allowed global for weights_only loading
        pass

    sys.modules[__name__].Foreign = Foreign
    Foreign.__module__ = __name__
    Foreign.__qualname__ = "Foreign"
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": {}, "optimizer_thing": Foreign()}, path)
    with pytest.raises(UlipCheckpointError, match="weights_only"):
        load_pointbert_teacher(path)


def test_pointnet2_ssg_loads_and_is_nonnegative(tmp_path):
    src = Pointnet2Ssg()
    path = _ulip_file(tmp_path / "checkpoint_pointnet2_ssg.pt", src, extra_keys=False)
    enc = load_pointnet2_ssg(path)
    feats = enc(
        torch.randn(2, 600, 3) * 0.1 + torch.tensor([0.0, 0.0, 0.7]), torch.Generator().manual_seed(0)
    )
    assert feats.shape == (2, 256) and (feats >= 0).all()


def test_trainer_with_distillation(tmp_path, caplog):
    torch.set_num_threads(1)
    bert_cfg = PointBertConfig(**TINY_BERT)  # out dim 32 = the tiny student's distill.feat_dim
    bert = _ulip_file(tmp_path / "pointbert.pt", PointTransformer(bert_cfg))
    pn2 = _ulip_file(tmp_path / "pn2.pt", Pointnet2Ssg(), extra_keys=False)
    cfg = tiny_config(tmp_path / "run", iterations=2)
    cfg.distillation.ulip_pointbert = str(bert)
    cfg.distillation.pointbert = bert_cfg
    cfg.queue.init, cfg.queue.ulip_pointnet2 = "ulip", str(pn2)
    torch.manual_seed(0)
    net, mcfg = build_model(cfg)
    tr = Trainer(cfg, net=net, model_cfg=mcfg, sources=[("toy", ToyObjects(12, n_points=256), 4)])
    assert tr.teacher is not None and tr.teacher.training  # published quirk: the teacher runs in train mode
    with caplog.at_level(logging.WARNING, logger="cleanpose.train"):
        tr.fit()
    assert all(h["distillation"] > 0 for h in tr.history)
    # the tiny network's features are 32-d, the ULIP PointNet++ ones 256-d: logged fallback
    assert any("queue init FALLBACK" in r.message and "256-d" in r.message for r in caplog.records)


def test_ulip_queue_init_fills_each_category_in_sample_order(tmp_path):
    from cleanpose_training.batching import EpochKeyed, IterationBatchSampler
    from cleanpose_training.queue_init import ulip_queue

    enc = Pointnet2Ssg().eval()
    ds = ToyObjects(20, n_points=256, cat_num=3)
    q = ulip_queue(enc, [("toy", ds, 4)], cat_num=3, length=2, seed=5)
    assert q.shape == (3, 2, 256)
    # the first two objects of category 0 in loader order, encoded from their raw (uncentered) points
    sampler = IterationBatchSampler(len(ds), 4, 0, 100, 5, 0)
    keys = [k for it in range(5) for k in sampler.keys_for(it)]
    items = [EpochKeyed(ds)[k] for k in keys]
    first0 = [s for s in items if int(s["category_label"]) == 0][:2]
    assert len(first0) == 2
    with torch.no_grad():
        direct = enc(torch.stack([s["pts"] for s in first0]), torch.Generator().manual_seed(0))
    assert direct.shape == (2, 256)
    assert (q[0] >= 0).all() and q[0].abs().sum() > 0


def test_nocs_sources_mixed_batches_through_the_trainer(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent / "datasets"))
    from nocs_fixture import make_nocs_root

    root = make_nocs_root(tmp_path / "nocs")
    cfg = tiny_config(tmp_path / "run", iterations=1)
    cfg.data = {
        "sources": [
            {
                "name": "camera",
                "type": "nocs",
                "data_dir": str(root),
                "data_type": "syn",
                "batch_size": 3,
                "num_img_per_epoch": 6,
            },
            {
                "name": "real",
                "type": "nocs",
                "data_dir": str(root),
                "data_type": "real_withLabel",
                "batch_size": 1,
                "num_img_per_epoch": 2,
            },
        ]
    }
    torch.manual_seed(0)
    net, mcfg = build_model(cfg)
    tr = Trainer(cfg, net=net, model_cfg=mcfg)
    assert tr.splits == [3, 1]
    tr.fit()
    assert tr.iteration == 1 and tr.history[0]["total"] > 0


def test_housecat6d_source_through_the_trainer(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent / "datasets"))
    from nocs_fixture import make_housecat_root

    root = make_housecat_root(tmp_path / "hc")
    cfg = tiny_config(tmp_path / "run", iterations=1)
    cfg.model_overrides["categories"] = [
        "box",
        "bottle",
        "can",
        "cup",
        "remote",
        "teapot",
        "cutlery",
        "glass",
        "shoe",
        "tube",
    ]
    cfg.model_overrides["symmetric_categories"] = ["bottle", "can", "glass"]
    cfg.loss = LossWeights(obj_aware=False)  # HouseCat6D: full-cloud reconstruction loss, no outlier masks
    cfg.data = {
        "sources": [{"name": "housecat6d", "type": "housecat6d", "data_dir": str(root), "batch_size": 2}]
    }
    torch.manual_seed(0)
    net, mcfg = build_model(cfg)
    tr = Trainer(cfg, net=net, model_cfg=mcfg)
    tr.fit()
    assert tr.iteration == 1 and tr.queue.shape[0] == 10 and tr.history[0]["recon"] > 0
