"""Training and serving build an object the same way: a training sample (no augmentation) and the node's
inputs for the same frame + mask + generator state have the same crop window, pixels, points and RGB, through
both serving forms (numpy reference and the fixed-shape torch form)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from nocs_fixture import make_nocs_root, write_image_set

from cleanpose_model.preprocess import GraphedInputBuilder, build_object_inputs_np
from cleanpose_training.datasets import NOCSTrainingDataset, common
from cleanpose_training.datasets.common import (
    REAL_INTRINSICS,
    load_pickle,
    read_mask_channel,
    read_rgb,
    worker_rng,
)
from cleanpose_training.datasets.depth_fill import fill_missing, load_depth


def _served(ds: NOCSTrainingDataset, index: int):
    """The frame, mask and generator state the dataset uses for item `index`, through the serving entry
    points. Hole filling is the dataset protocol's option, applied before serving as a caller would."""
    rng = worker_rng(ds.seed, ds.epoch, index)
    prefix = ds.img_root / ds.img_list[int(ds.img_index[index])]
    depth_m = fill_missing(load_depth(prefix), 1000.0, 1) / 1000.0
    gts = load_pickle(f"{prefix}_label.pkl", "label pickle")
    ids = read_mask_channel(f"{prefix}_mask.png")
    idx = int(rng.integers(len(gts["instance_ids"])))  # the dataset's instance draw, same generator
    fx, fy, cx, cy = REAL_INTRINSICS
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    frame = (
        read_rgb(f"{prefix}_color.png"),
        depth_m,
        K,
        (ids == gts["instance_ids"][idx])[None],
        np.asarray(gts["bboxes"][idx]).reshape(1, 4),
        [int(gts["class_ids"][idx]) - 1],
    )
    return frame, rng


def _windows_seen(monkeypatch) -> list:
    """Records the crop window the training loader passes to the protocol."""
    seen = []
    real = common.sample_object

    def spy(rgb, depth_m, K, mask, window, *args, **kwargs):
        seen.append(tuple(int(v) for v in window))
        return real(rgb, depth_m, K, mask, window, *args, **kwargs)

    monkeypatch.setattr(common, "sample_object", spy)
    return seen


def _assert_same_object(sample: dict, window, frame, rng_state: dict) -> None:
    served = build_object_inputs_np(*frame, rng=_rng_at(rng_state))
    assert served.kept.tolist() == [0] and tuple(served.windows[0]) == window
    np.testing.assert_array_equal(sample["pts"].numpy(), served.pts[0])
    np.testing.assert_array_equal(sample["choose"].numpy(), served.choose[0])
    np.testing.assert_array_equal(sample["rgb"].numpy(), served.rgb[0])
    assert int(sample["category_label"][0]) == int(served.category[0])
    batch, kept, _, wins = GraphedInputBuilder("cpu", buckets=(1,))(*frame, rng=_rng_at(rng_state))
    assert kept.tolist() == [0] and tuple(wins[0]) == window
    assert torch.equal(batch.pts[0], sample["pts"]) and torch.equal(batch.choose[0], sample["choose"])
    assert torch.equal(batch.rgb[0], sample["rgb"])


def _rng_at(state: dict) -> np.random.Generator:
    g = np.random.default_rng()
    g.bit_generator.state = state
    return g


@pytest.mark.parametrize("index", [0, 1, 2])
def test_training_sample_equals_served_object(tmp_path, monkeypatch, index):
    root = make_nocs_root(tmp_path / "nocs")
    ds = NOCSTrainingDataset(root, "real_withLabel", num_img_per_epoch=3, seed=5, augment=False)
    seen = _windows_seen(monkeypatch)
    sample = ds[index]
    frame, rng = _served(ds, index)
    _assert_same_object(sample, seen[-1], frame, rng.bit_generator.state)


def test_small_frame_window_is_clamped_like_serving(tmp_path, monkeypatch):
    """A 200 x 260 frame with a box as large as the frame: the protocol window (side 280) is capped at
    min(H, W) = 200 by both (training used to keep 280 and slice from a negative row)."""
    root = tmp_path / "small"
    rng = np.random.default_rng(0)
    prefix = root / "real" / "train" / "scene_1" / "0000"
    label = write_image_set(
        prefix, prefix.parent / "0000_depth.png", rng, [2, 6], ["m0", "m1"], [np.eye(3)] * 2, shape=(200, 260)
    )
    label["bboxes"] = np.array([[0, 0, 200, 260], [0, 0, 200, 260]], np.int32)
    with open(f"{prefix}_label.pkl", "wb") as f:
        pickle.dump(label, f, protocol=2)
    (root / "real" / "train_list.txt").write_text("train/scene_1/0000\n")
    models = {m: rng.uniform(-0.3, 0.3, (64, 3)).astype(np.float32) for m in ("m0", "m1")}
    (root / "obj_models").mkdir()
    with open(root / "obj_models" / "real_train.pkl", "wb") as f:
        pickle.dump(models, f, protocol=2)
    ds = NOCSTrainingDataset(root, "real_withLabel", seed=1, augment=False)
    seen = _windows_seen(monkeypatch)
    sample = ds[0]
    assert seen[-1] == (0, 200, 30, 230)
    frame, g = _served(ds, 0)
    _assert_same_object(sample, seen[-1], frame, g.bit_generator.state)
