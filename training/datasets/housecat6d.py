"""HouseCat6D training and test datasets (preprocessing.md §2, §6)."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cleanpose_model.preprocess.reference import normalize_rgb

from . import augment as aug
from .common import (
    HOUSECAT_SYM_IDS,
    DatasetError,
    canonicalise_symmetric_rotation,
    load_pickle,
    read_mask_channel,
    read_rgb,
    require_dir,
    sample_instance,
    worker_rng,
)
from .depth_fill import fill_missing, load_depth_png
from .nocs import _to_tensor_sample, parse_intrinsics

LABEL_KEYS = ("class_ids", "instance_ids", "bboxes", "rotations", "translations", "gt_scales")


def _paths(rgb_path: str) -> dict[str, str]:
    p = Path(rgb_path)
    scene = p.parent.parent
    return {
        "rgb": rgb_path,
        "depth": str(scene / "depth" / p.name),
        "instance": str(scene / "instance" / p.name),
        "label": str(scene / "labels" / (p.stem + "_label.pkl")),
        "intrinsics": str(scene / "intrinsics.txt"),
    }


class _HouseCatBase(Dataset):
    """The scenes matching ``scene_glob`` and the options both splits share (points per object, crop size,
    depth hole filling)."""

    def __init__(
        self, data_dir, scene_glob: str, seed: int, sample_num=1024, image_size=224, fill_depth=True
    ):
        self.data_dir = require_dir(data_dir, "HouseCat6D root")
        scenes = sorted(glob.glob(str(self.data_dir / scene_glob)))
        if not scenes:
            pattern = self.data_dir / scene_glob
            raise DatasetError(f"no HouseCat6D scenes: expected folders matching '{pattern}'")
        self.images: list[str] = []
        self._K: dict[str, tuple[float, float, float, float]] = {}
        for s in scenes:
            rgb_dir = require_dir(Path(s) / "rgb", "HouseCat6D rgb folder")
            imgs = sorted(glob.glob(str(rgb_dir / "*.png")))
            if not imgs:
                raise DatasetError(f"HouseCat6D scene folder '{rgb_dir}' holds no *.png images")
            self._K[s] = parse_intrinsics(Path(s) / "intrinsics.txt")
            self.images.extend(imgs)
        self.sample_num, self.image_size = sample_num, image_size
        self.fill_depth, self.seed = fill_depth, seed

    def _intrinsics(self, rgb_path: str):
        return self._K[str(Path(rgb_path).parent.parent)]

    def _depth(self, path: str) -> np.ndarray:
        """Depth in metres (float32), the protocol's unit; filled in millimetres as published."""
        depth = load_depth_png(path)
        return (fill_missing(depth, 1000.0, 1) if self.fill_depth else depth.astype(np.float32)) / 1000.0


class HouseCat6DTrainingDataset(_HouseCatBase):
    """Every `scene*` image once per epoch in a shuffled order; one random instance per item."""

    def __init__(self, data_dir, augment: bool = True, seed: int = 0, **shared):
        super().__init__(data_dir, "scene*", seed, **shared)
        self.augment = augment
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.img_index = np.random.default_rng([self.seed, epoch, 0x4C6]).permutation(len(self.images))

    reset = set_epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        rng = worker_rng(self.seed, self.epoch, index)
        rgb_path = self.images[int(self.img_index[index])]
        p = _paths(rgb_path)
        depth = self._depth(p["depth"])
        gts = load_pickle(p["label"], "HouseCat6D label pickle", LABEL_KEYS)
        n = len(gts["instance_ids"])
        if n == 0:
            raise DatasetError(f"HouseCat6D label pickle '{p['label']}' lists no instances")
        mask = read_mask_channel(p["instance"])
        idx = int(rng.integers(n))
        cat_id = int(gts["class_ids"][idx]) - 1
        K = self._intrinsics(rgb_path)
        obj = sample_instance(
            read_rgb(rgb_path), depth, K, mask, gts, idx, rng, self.sample_num, self.image_size
        )
        if obj is None:
            # the published loader asserts here; name the instance so the data can be fixed
            raise DatasetError(
                f"instance {gts['instance_ids'][idx]} of '{rgb_path}' has no valid depth "
                "pixel inside its crop window"
            )
        pts, rgb = aug.augment_object(obj.pts, obj.rgb, rng, self.augment)
        rotation = np.asarray(gts["rotations"][idx], dtype=np.float64)
        if cat_id in HOUSECAT_SYM_IDS:
            rotation = canonicalise_symmetric_rotation(rotation)
        return _to_tensor_sample(
            {
                "pts": pts.astype(np.float32),
                "rgb": normalize_rgb(rgb),
                "choose": obj.choose,
                "category_label": np.array([cat_id], dtype=np.int64),
                "translation_label": np.asarray(gts["translations"][idx], dtype=np.float32),
                "rotation_label": rotation.astype(np.float32),
                "size_label": np.asarray(gts["gt_scales"][idx], dtype=np.float32),
            }
        )


class HouseCat6DTestDataset(_HouseCatBase):
    """`test_scene*` images with GT masks and boxes, score 1.0 (the published HouseCat6D test protocol)."""

    def __init__(self, data_dir, seed: int = 42, min_points: int = 16, **shared):
        super().__init__(data_dir, "test_scene*", seed, **shared)
        self.min_points = min_points

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        rng = worker_rng(self.seed, 0, index)
        rgb_path = self.images[index]
        p = _paths(rgb_path)
        depth = self._depth(p["depth"])
        gts = load_pickle(p["label"], "HouseCat6D label pickle", LABEL_KEYS)
        mask = read_mask_channel(p["instance"])
        rgb_full = read_rgb(rgb_path)
        K = self._intrinsics(rgb_path)
        pts_l, rgb_l, choose_l, cat_l, keep = [], [], [], [], []
        for j in range(len(gts["instance_ids"])):
            inst = (mask == gts["instance_ids"][j]) & (depth > 0)
            if np.count_nonzero(inst) <= self.min_points:  # full-image test, as published
                continue
            obj = sample_instance(rgb_full, depth, K, mask, gts, j, rng, self.sample_num, self.image_size)
            if obj is None:
                raise DatasetError(
                    f"instance {gts['instance_ids'][j]} of '{rgb_path}' has no mask pixel "
                    "inside its 440-px crop window"
                )
            pts_l.append(obj.pts)
            rgb_l.append(normalize_rgb(obj.rgb))
            choose_l.append(obj.choose)
            cat_l.append(int(gts["class_ids"][j]) - 1)
            keep.append(j)
        keep_a = np.asarray(keep, dtype=np.int64)
        m = len(gts["class_ids"])
        scales = np.asarray(gts["gt_scales"], dtype=np.float64).reshape(m, 3)
        norms = np.linalg.norm(scales, axis=1)
        rts = np.tile(np.eye(4), (m, 1, 1))
        rots = np.asarray(gts["rotations"], dtype=np.float64).reshape(m, 3, 3)
        rts[:, :3, :3] = rots * norms[:, None, None]
        rts[:, :3, 3] = np.asarray(gts["translations"], dtype=np.float64).reshape(m, 3)
        class_ids = np.asarray(gts["class_ids"], dtype=np.int64).reshape(m)
        bboxes = np.asarray(gts["bboxes"]).reshape(m, 4)
        s, n = self.image_size, self.sample_num
        scene = Path(rgb_path).parent.parent.name
        return {
            "pts": torch.from_numpy(np.stack(pts_l) if keep else np.zeros((0, n, 3), np.float32)),
            "rgb": torch.from_numpy(np.stack(rgb_l) if keep else np.zeros((0, 3, s, s), np.float32)),
            "choose": torch.from_numpy(np.stack(choose_l) if keep else np.zeros((0, n), np.int64)),
            "category_label": torch.as_tensor(cat_l, dtype=torch.int64),
            "result_name": f"{scene}/{Path(rgb_path).stem}.pkl",
            "image_path": rgb_path,
            "gt": {
                "gt_class_ids": class_ids,
                "gt_bboxes": bboxes,
                "gt_RTs": rts,
                "gt_scales": scales / norms[:, None],
                "gt_handle_visibility": np.ones(m, dtype=np.int64),
                "pred_class_ids": class_ids[keep_a],
                "pred_bboxes": bboxes[keep_a],
                "pred_scores": np.ones(len(keep_a)),
            },
        }
