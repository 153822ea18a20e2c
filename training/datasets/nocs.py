"""NOCS (CAMERA25 / REAL275, DPDN layout) and synthetic-generator datasets (preprocessing.md §1, §3, §4).

Randomness: every sample draws from a Generator keyed on (seed, epoch, index), so the samples do not depend on
the DataLoader worker count or on which worker loads them; `set_epoch` replaces the published `reset()`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cleanpose_model.preprocess.reference import build_object_inputs_np, normalize_rgb

from . import augment as aug
from .common import (
    CAMERA_INTRINSICS,
    NOCS_SYM_IDS,
    REAL_INTRINSICS,
    DatasetError,
    canonicalise_symmetric_rotation,
    load_pickle,
    outlier_mask,
    read_list_file,
    read_mask_channel,
    read_rgb,
    require_dir,
    require_file,
    sample_instance,
    worker_rng,
)
from .depth_fill import fill_missing, load_composed_depth, load_depth

TRAIN_LABEL_KEYS = (
    "class_ids",
    "bboxes",
    "scales",
    "sizes",
    "rotations",
    "translations",
    "instance_ids",
    "model_list",
)
RESULT_KEYS = (
    "image_path",
    "pred_masks",
    "pred_bboxes",
    "pred_class_ids",
    "pred_scores",
    "gt_class_ids",
    "gt_bboxes",
    "gt_RTs",
    "gt_scales",
)

_TRAIN_TYPES = {
    # data_type: (list file, object models, intrinsics, composed depth)
    "syn": ("camera/train_list.txt", "obj_models/camera_train.pkl", CAMERA_INTRINSICS, True),
    "real_withLabel": ("real/train_list.txt", "obj_models/real_train.pkl", REAL_INTRINSICS, False),
}
# training/synthetic writes <split>_list.txt, obj_models/<split>.pkl and segmentation_results/<split>/
_SYNTH_LIST_CANDIDATES = ("{split}_list.txt", "{split}_list_all.txt")
_SYNTH_MODEL_CANDIDATES = ("obj_models/{split}.pkl",)
_SYNTH_INTRINSICS_CANDIDATES = ("intrinsics.txt", "intrinsics.json", "camera_intrinsics.txt")


def parse_intrinsics(value) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) from 4 numbers, a 3x3 matrix or a file (text 3x3 / 4 numbers; JSON K / fx..cy)."""
    if value is None:
        raise ValueError("no intrinsics given")
    if isinstance(value, (str, os.PathLike)):
        path = require_file(value, "camera intrinsics file")
        try:
            if str(path).endswith(".json"):
                import json

                d = json.loads(path.read_text())
                if "K" in d:
                    value = np.asarray(d["K"], dtype=np.float64)
                else:
                    value = (d["fx"], d["fy"], d["cx"], d["cy"])
            else:
                value = np.loadtxt(path, dtype=np.float64).reshape(-1)
        except (ValueError, KeyError) as e:
            raise DatasetError(
                f"cannot parse camera intrinsics '{path}': {e}; expected a 3x3 matrix or "
                "fx fy cx cy (text), or JSON with K or fx/fy/cx/cy"
            ) from e
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 9:
        K = arr.reshape(3, 3)
        return float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    if arr.size == 4:
        return tuple(float(v) for v in arr)  # type: ignore[return-value]
    raise DatasetError(f"intrinsics have {arr.size} values: expected a 3x3 matrix or (fx, fy, cx, cy)")


def _first_existing(root: Path, candidates: Sequence[str], what: str) -> Path:
    for c in candidates:
        if (root / c).is_file():
            return root / c
    tried = ", ".join(str(root / c) for c in candidates)
    raise DatasetError(f"missing {what}: none of {tried} exists")


def _to_tensor_sample(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        out[k] = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
    return out


class NOCSTrainingDataset(Dataset):
    """One random instance of one image per item; the sample dict follows preprocessing.md §3.10."""

    def __init__(
        self,
        data_dir,
        data_type: str = "syn",
        num_img_per_epoch: int = -1,
        sample_num: int = 1024,
        threshold: float = 0.1,
        intrinsics=None,
        fill_depth: bool = True,
        augment: bool = True,
        image_size: int = 224,
        seed: int = 0,
        list_file: str | None = None,
        models_file: str | None = None,
        max_retries: int = 50,
        split: str = "train",
    ):
        self.data_dir = require_dir(data_dir, f"NOCS dataset root (data_type={data_type!r})")
        if data_type in _TRAIN_TYPES:
            lst, models, K, composed = _TRAIN_TYPES[data_type]
            list_path = self.data_dir / (list_file or lst)
            models_path = self.data_dir / (models_file or models)
            self.intrinsics = parse_intrinsics(intrinsics) if intrinsics is not None else K
            self.composed_depth = composed
            # list entries are relative to camera/ or real/
            self.img_root = self.data_dir / lst.split("/")[0]
        elif data_type == "synthetic":
            root = self.data_dir
            lists = [c.format(split=split) for c in _SYNTH_LIST_CANDIDATES]
            models = [c.format(split=split) for c in _SYNTH_MODEL_CANDIDATES]
            list_path = (
                root / list_file if list_file else _first_existing(root, lists, f"synthetic {split} list")
            )
            models_path = (
                root / models_file
                if models_file
                else _first_existing(root, models, "synthetic object models")
            )
            if intrinsics is None:
                intrinsics = _first_existing(root, _SYNTH_INTRINSICS_CANDIDATES, "synthetic intrinsics")
            self.intrinsics = parse_intrinsics(intrinsics)
            self.composed_depth = False
            self.img_root = self.data_dir
        else:
            raise ValueError(f"data_type must be 'syn', 'real_withLabel' or 'synthetic', got {data_type!r}")
        self.data_type = data_type
        self.img_list = read_list_file(list_path, f"{data_type} image list")
        first = self.img_root / f"{self.img_list[0]}_color.png"
        require_file(
            first,
            f"colour image of the first entry of '{list_path}' (entries are relative to '{self.img_root}')",
        )
        self.models = load_pickle(models_path, "object model pickle")
        if not isinstance(self.models, dict) or not self.models:
            raise DatasetError(f"object model pickle '{models_path}': expected a non-empty dict id -> (N,3)")
        self.num_img_per_epoch = num_img_per_epoch
        self.sample_num = sample_num
        self.threshold = threshold
        self.fill_depth = fill_depth
        self.augment = augment
        self.image_size = image_size
        self.seed = seed
        self.max_retries = max_retries
        self.epoch = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Published `reset()`: choose this epoch's image indices."""
        self.epoch = epoch
        n = len(self.img_list)
        if self.num_img_per_epoch is None or self.num_img_per_epoch < 0:
            self.img_index = np.arange(n)
            return
        rng = np.random.default_rng([self.seed, epoch, 0x5E7])
        replace = n <= self.num_img_per_epoch
        self.img_index = rng.choice(n, self.num_img_per_epoch, replace=replace)

    reset = set_epoch

    def __len__(self) -> int:
        return len(self.img_index)

    def __getitem__(self, index: int) -> dict:
        rng = worker_rng(self.seed, self.epoch, index)
        img = int(self.img_index[index])
        for _ in range(self.max_retries):
            sample = self._read(img, rng)
            if sample is not None:
                return _to_tensor_sample(sample)
            img = int(rng.integers(len(self.img_list)))
        raise DatasetError(
            f"no usable sample after {self.max_retries} tries starting at item {index} of "
            f"{self.data_type}: composed depth missing or instances without valid depth"
        )

    def _read(self, img: int, rng: np.random.Generator) -> dict | None:
        prefix = self.img_root / self.img_list[img]
        depth = load_composed_depth(prefix) if self.composed_depth else load_depth(prefix)
        if depth is None:
            return None
        depth = fill_missing(depth, 1000.0, 1) if self.fill_depth else depth.astype(np.float32)
        label_path = f"{prefix}_label.pkl"
        gts = load_pickle(label_path, "label pickle", TRAIN_LABEL_KEYS)
        n = len(gts["instance_ids"])
        if n == 0 or len(gts["class_ids"]) != n:
            raise DatasetError(
                f"label pickle '{label_path}' has {n} instance_ids and "
                f"{len(gts['class_ids'])} class_ids: expected the same non-zero count"
            )
        mask = read_mask_channel(f"{prefix}_mask.png")
        idx = int(rng.integers(n))
        cat_id = int(gts["class_ids"][idx]) - 1
        rgb_full = read_rgb(f"{prefix}_color.png")
        # The serving protocol's object step; None (no valid pixel) = the caller draws another sample.
        obj = sample_instance(
            rgb_full, depth / 1000.0, self.intrinsics, mask, gts, idx, rng, self.sample_num, self.image_size
        )
        if obj is None:
            return None
        pts, rgb = aug.augment_object(obj.pts, obj.rgb, rng, self.augment)
        translation = np.asarray(gts["translations"][idx], dtype=np.float32)
        rotation = np.asarray(gts["rotations"][idx], dtype=np.float64)
        size = (np.asarray(gts["scales"][idx]) * np.asarray(gts["sizes"][idx])).astype(np.float32)
        if cat_id in NOCS_SYM_IDS:
            rotation = canonicalise_symmetric_rotation(rotation)
        rotation = rotation.astype(np.float32)
        model_id = gts["model_list"][idx]
        if model_id not in self.models:
            raise DatasetError(
                f"label pickle '{label_path}' refers to model '{model_id}', which the object "
                "model pickle does not contain"
            )
        model = np.asarray(self.models[model_id], dtype=np.float32)
        qo, pc_mask = outlier_mask(
            pts.astype(np.float64),
            rotation.astype(np.float64),
            translation.astype(np.float64),
            size.astype(np.float64),
            model.astype(np.float64),
            self.threshold,
        )
        return {
            "pts": pts.astype(np.float32),
            "rgb": normalize_rgb(rgb),
            "choose": obj.choose,
            "category_label": np.array([cat_id], dtype=np.int64),
            "model": model,
            "qo": qo,
            "translation_label": translation,
            "rotation_label": rotation,
            "size_label": size,
            "pc_mask": pc_mask,
        }


# ----------------------------------------------------------------------------------------------- test split

_RESULT_DIRS = {
    "REAL275": ("results/nocs_results/real_test", "segmentation_results/REAL275"),
    "CAMERA25": ("results/nocs_results/val", "segmentation_results/CAMERA25"),
    "synthetic": ("segmentation_results/{split}", "segmentation_results/test", "segmentation_results/val"),
}


def find_results_dir(data_dir: Path, dataset: str, split: str = "test") -> Path:
    for c in (c.format(split=split) for c in _RESULT_DIRS[dataset]):
        if glob.glob(str(data_dir / c / "results_*.pkl")):
            return data_dir / c
    tried = ", ".join(str(data_dir / c.format(split=split) / "results_*.pkl") for c in _RESULT_DIRS[dataset])
    raise DatasetError(f"no detection pickles for {dataset}: looked for {tried}")


class NOCSTestDataset(Dataset):
    """One item per test image: every kept detection of the image plus the GT the evaluator needs (§1)."""

    def __init__(
        self,
        data_dir,
        dataset: str = "REAL275",
        results_dir=None,
        intrinsics=None,
        sample_num: int = 1024,
        image_size: int = 224,
        fill_depth: bool = True,
        seed: int = 42,
        min_points: int = 16,
        resample_empty: bool = True,
        split: str = "test",
    ):
        if dataset not in _RESULT_DIRS:
            raise ValueError(f"dataset must be one of {sorted(_RESULT_DIRS)}, got {dataset!r}")
        self.data_dir = require_dir(data_dir, f"{dataset} dataset root")
        self.dataset = dataset
        self.results_dir = (
            require_dir(results_dir, "detection results directory")
            if results_dir
            else find_results_dir(self.data_dir, dataset, split)
        )
        self.result_files = sorted(glob.glob(str(self.results_dir / "results_*.pkl")))
        if not self.result_files:
            raise DatasetError(f"no results_*.pkl in '{self.results_dir}'")
        if intrinsics is not None:
            self.intrinsics = parse_intrinsics(intrinsics)
        elif dataset == "REAL275":
            self.intrinsics = REAL_INTRINSICS
        elif dataset == "CAMERA25":
            self.intrinsics = CAMERA_INTRINSICS
        else:
            self.intrinsics = parse_intrinsics(
                _first_existing(self.data_dir, _SYNTH_INTRINSICS_CANDIDATES, "synthetic intrinsics")
            )
        self.sample_num, self.image_size = sample_num, image_size
        self.fill_depth, self.seed, self.min_points = fill_depth, seed, min_points
        self.resample_empty = resample_empty

    def __len__(self) -> int:
        return len(self.result_files)

    def image_prefix(self, image_path: str) -> Path:
        # published pickles store 'data/<...>' relative to the repository: the first 5 characters are dropped
        rel = image_path[5:] if image_path.startswith("data/") else image_path
        return self.data_dir / rel

    def __getitem__(self, index: int) -> dict:
        rng = worker_rng(self.seed, 0, index)
        i = index
        for _ in range(100):
            item = self._read(i, rng)
            if item is not None:
                return item
            if not self.resample_empty:
                break
            i = int(rng.integers(len(self)))
        return self._read(index, rng, allow_empty=True)

    def _read(self, index: int, rng: np.random.Generator, allow_empty: bool = False) -> dict | None:
        path = self.result_files[index]
        data = load_pickle(path, "detection result pickle", RESULT_KEYS)
        prefix = self.image_prefix(str(data["image_path"]))
        if self.dataset == "CAMERA25":
            depth = load_composed_depth(prefix)
            if depth is None:
                if allow_empty:
                    raise DatasetError(f"composed depth for '{prefix}' is missing")
                return None
        else:
            depth = load_depth(prefix)
        depth = fill_missing(depth, 1000.0, 1) if self.fill_depth else depth.astype(np.float32)
        rgb_full = read_rgb(f"{prefix}_color.png")
        H, W = depth.shape
        masks = np.asarray(data["pred_masks"])
        n_det = len(data["pred_class_ids"])
        if n_det and (masks.ndim != 3 or masks.shape[:2] != (H, W) or masks.shape[2] != n_det):
            raise DatasetError(f"'{path}': pred_masks has shape {masks.shape}, expected ({H}, {W}, {n_det})")
        # The test protocol is the serving protocol: every detection through the node's numpy reference.
        objs = build_object_inputs_np(
            rgb_full,
            depth / 1000.0,
            self.intrinsics,
            np.moveaxis(masks, 2, 0) if n_det else np.zeros((0, H, W), bool),
            np.asarray(data["pred_bboxes"]).reshape(-1, 4)[:n_det],
            np.asarray(data["pred_class_ids"], dtype=np.int64).reshape(-1) - 1,
            rng=rng,
            n_points=self.sample_num,
            min_points=self.min_points,
            image_size=self.image_size,
        )
        if not len(objs) and not allow_empty:
            return None
        keep_a = objs.kept
        out = {
            "pts": torch.from_numpy(objs.pts),
            "rgb": torch.from_numpy(objs.rgb),
            "choose": torch.from_numpy(objs.choose),
            "category_label": torch.from_numpy(objs.category),
            "result_name": Path(path).name,
            "image_path": str(data["image_path"]),
            "gt": gt_record(data, keep_a),
        }
        return out


def gt_record(data: dict, keep: np.ndarray) -> dict:
    """GT and kept-detection fields of an evaluation record (evaluation.md §1), numpy arrays."""
    m = len(data["gt_class_ids"])
    hv = data.get("gt_handle_visibility")
    return {
        "gt_class_ids": np.asarray(data["gt_class_ids"], dtype=np.int64).reshape(m),
        "gt_bboxes": np.asarray(data["gt_bboxes"]).reshape(m, 4),
        "gt_RTs": np.asarray(data["gt_RTs"], dtype=np.float64).reshape(m, 4, 4),
        "gt_scales": np.asarray(data["gt_scales"], dtype=np.float64).reshape(m, 3),
        "gt_handle_visibility": (
            np.ones(m, dtype=np.int64) if hv is None else np.asarray(hv, dtype=np.int64).reshape(m)
        ),
        "pred_class_ids": np.asarray(data["pred_class_ids"], dtype=np.int64).reshape(-1)[keep],
        "pred_bboxes": np.asarray(data["pred_bboxes"]).reshape(-1, 4)[keep],
        "pred_scores": np.asarray(data["pred_scores"], dtype=np.float64).reshape(-1)[keep],
    }
