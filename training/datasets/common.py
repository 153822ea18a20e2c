"""File reading, labels and ground-truth handling shared by the NOCS and HouseCat6D loaders.

Per-object input construction is not here: the loaders call the one protocol in
`cleanpose_model.preprocess.reference` (crop window, valid pixels, sampling, back-projection, resize,
normalisation, choose remap), the same functions serving uses; its docstring lists which steps are
dataset options (hole filling, keep rule, point noise, colour augmentation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cleanpose_model.categories import HOUSECAT6D, NOCS
from cleanpose_model.preprocess.reference import get_bbox, sample_object

from . import safe_pickle

NOCS_CATEGORIES = NOCS.names
HOUSECAT_CATEGORIES = HOUSECAT6D.names
NOCS_SYM_IDS = NOCS.symmetric_ids
HOUSECAT_SYM_IDS = HOUSECAT6D.symmetric_ids

# (fx, fy, cx, cy)
REAL_INTRINSICS = (591.0125, 590.16775, 322.525, 244.11084)
CAMERA_INTRINSICS = (577.5, 577.5, 319.5, 239.5)


class DatasetError(RuntimeError):
    """A dataset file is missing or does not hold what the loader expects."""


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing {what}: expected a file at '{path}'")
    return path


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"missing {what}: expected a directory at '{path}'")
    return path


def read_image(path: str | Path, what: str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    path = require_file(path, what)
    img = cv2.imread(str(path), flags)
    if img is None:
        raise DatasetError(f"cannot decode {what} '{path}': expected an image file readable by OpenCV")
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """Colour image as RGB uint8 (OpenCV reads BGR; the published code reverses the channels)."""
    img = read_image(path, "colour image")
    return np.ascontiguousarray(img[:, :, :3][:, :, ::-1])


def read_mask_channel(path: str | Path, what: str = "instance mask") -> np.ndarray:
    """Instance ids live in channel index 2 of the OpenCV read (NOCS and HouseCat6D alike)."""
    img = read_image(path, what, cv2.IMREAD_UNCHANGED)
    if img.ndim == 2:
        return img
    if img.ndim != 3 or img.shape[2] < 3:
        raise DatasetError(f"{what} '{path}' has shape {img.shape}: expected H x W x 3 (ids in channel 2)")
    return img[:, :, 2]


def load_pickle(path: str | Path, what: str, required_keys: tuple[str, ...] = ()) -> Any:
    path = require_file(path, what)
    try:
        data = safe_pickle.load(path)
    except Exception as e:  # any decoding failure is reported with the file name
        raise DatasetError(f"cannot read {what} '{path}': {type(e).__name__}: {e}") from e
    if required_keys:
        if not isinstance(data, dict):
            raise DatasetError(f"{what} '{path}' holds a {type(data).__name__}: expected a dict")
        missing = [k for k in required_keys if k not in data]
        if missing:
            raise DatasetError(f"{what} '{path}' lacks keys {missing}: expected {list(required_keys)}")
    return data


def read_list_file(path: str | Path, what: str) -> list[str]:
    path = require_file(path, what)
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DatasetError(f"{what} '{path}' is empty: expected one relative image path per line")
    return lines


def canonicalise_symmetric_rotation(R: np.ndarray) -> np.ndarray:
    """Remove the free rotation about the object y axis (published `sym_ids` handling)."""
    R = np.asarray(R, dtype=np.float64)
    theta_x = R[0, 0] + R[2, 2]
    theta_y = R[0, 2] - R[2, 0]
    r = np.sqrt(theta_x**2 + theta_y**2)
    S = np.array([[theta_x / r, 0.0, -theta_y / r], [0.0, 1.0, 0.0], [theta_y / r, 0.0, theta_x / r]])
    return R @ S


def outlier_mask(
    pts: np.ndarray, R: np.ndarray, t: np.ndarray, size: np.ndarray, model: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame normalised points qo and the inlier mask (nearest model point closer than threshold)."""
    qo = (pts - t[None, :]) / (np.linalg.norm(size) + 1e-8)
    qo = qo @ R
    d2 = (qo**2).sum(1)[:, None] + (model**2).sum(1)[None, :] - 2.0 * qo @ model.T
    dmin = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return qo.astype(np.float32), (dmin < threshold).astype(np.float32)


def sample_instance(rgb, depth_m, K, ids, gts: dict, idx: int, rng, sample_num: int, image_size: int):
    """The protocol's object step (`sample_object`) for instance `idx` of a label file: the crop window of its
    box, its pixels in the instance-id image `ids`; depth in metres. Any valid pixel keeps it (the training
    sample rule, min_points=0); None when there is none."""
    window = get_bbox(gts["bboxes"][idx], depth_m.shape[0], depth_m.shape[1])
    mask = ids == gts["instance_ids"][idx]
    return sample_object(rgb, depth_m, K, mask, window, rng, sample_num, image_size)


def worker_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    """Per-sample generator keyed on (seed, epoch, index): identical samples whatever the worker count."""
    return np.random.default_rng([seed, epoch, index, attempt])
