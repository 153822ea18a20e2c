"""Packed per-object dataset: what a pack stores comes back as the training sample's inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pack_fixture import pack_object, write_pack


def test_packed_dataset_round_trip(tmp_path):
    import cv2

    from cleanpose_model.preprocess.reference import remap_choose
    from cleanpose_training.datasets.packed import PackedDataset

    rng = np.random.default_rng(0)
    H, W = 48, 64
    K = (60.0, 60.0, 32.0, 24.0)
    objects, truth = [], []
    for i in range(3):
        window = (4, 44, 10, 50)
        v = rng.integers(4, 44, 30)
        u = rng.integers(10, 50, 30)
        d = rng.integers(400, 900, 30).astype(np.uint16)
        rgb = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
        _ok, enc = cv2.imencode(".png", rgb[:, :, ::-1])  # lossless for the test
        pix = (v * W + u).astype(np.uint32)
        objects.append(pack_object(i, i // 2, jpeg=enc.reshape(-1), depth_mm=d, pix=pix, window=list(window)))
        truth.append((v, u, d, rgb, window))
    shards = write_pack(tmp_path, objects, K, (H, W), per_shard=2, model_points=16)
    ds = PackedDataset(tmp_path, augment=False)
    assert len(ds) == 3 and len(shards) == 2
    for i, (v, u, d, rgb, window) in enumerate(truth):
        im, pts, choose = ds.object_arrays(i)
        z = d / 1000.0
        want = np.stack([(u - K[2]) * z / K[0], (v - K[3]) * z / K[1], z], 1)
        np.testing.assert_allclose(pts, want, rtol=1e-6)
        crop_choose = (v - window[0]) * (window[3] - window[2]) + (u - window[2])
        np.testing.assert_array_equal(choose, remap_choose(crop_choose, window[1] - window[0]))
        np.testing.assert_array_equal(im, rgb)
    s = ds[1]
    assert s["pts"].shape == (1024, 3) and s["rgb"].shape == (3, 224, 224) and int(s["category_label"]) == 1
    # bottle (0) is symmetric: its rotation is canonicalised; identity stays identity
    assert torch.allclose(ds[0]["rotation_label"], torch.eye(3))


def test_demo_packs_are_readable_where_the_demo_config_looks(tmp_path):
    """``packed demo`` writes train and test packs that the training and evaluation read, and its default
    folder is the one configs/demo.yaml names."""
    import yaml

    from cleanpose_training.datasets.packed import PackedDataset, main

    assert main(["demo", str(tmp_path), "--train-scenes", "1", "--test-scenes", "1", "--frames", "1"]) == 0
    train = PackedDataset(tmp_path / "train", seed=1)
    test = PackedDataset(tmp_path / "test", augment=False)
    assert (
        len(train) > 0 and len(test) > 0 and train.meta["split"] == "train" and test.meta["split"] == "test"
    )
    sample = train[0]
    assert sample["pts"].shape == (1024, 3) and torch.isfinite(sample["pts"]).all()
    repo = Path(__file__).resolve().parents[3]
    demo = yaml.safe_load((repo / "training" / "configs" / "demo.yaml").read_text())
    assert demo["data"]["sources"][0]["root"] == "outputs/demo_packed/train"
    assert demo["eval"]["packed_test"] == "outputs/demo_packed/test"
