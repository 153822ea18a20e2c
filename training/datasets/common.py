"""Per-object input construction shared by the NOCS and HouseCat6D loaders (preprocessing.md §1, §3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import safe_pickle

NOCS_CATEGORIES = ("bottle", "bowl", "camera", "can", "laptop", "mug")
HOUSECAT_CATEGORIES = ("box", "bottle", "can", "cup", "remote", "teapot", "cutlery", "glass", "shoe", "tube")
NOCS_SYM_IDS = (0, 1, 3)
HOUSECAT_SYM_IDS = (1, 2, 7)

# (fx, fy, cx, cy)
REAL_INTRINSICS = (591.0125, 590.16775, 322.525, 244.11084)
CAMERA_INTRINSICS = (577.5, 577.5, 319.5, 239.5)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MAX_WINDOW = 440


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


def get_bbox(bbox, img_width: int = 480, img_length: int = 640) -> tuple[int, int, int, int]:
    """Square crop window around a (y1, x1, y2, x2) box; img_width is the row count (published naming)."""
    y1, x1, y2, x2 = (int(v) for v in bbox)
    window = (max(y2 - y1, x2 - x1) // 40 + 1) * 40
    window = min(window, MAX_WINDOW)
    cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
    half = int(window / 2)
    rmin, rmax, cmin, cmax = cy - half, cy + half, cx - half, cx + half
    if rmin < 0:
        rmax, rmin = rmax - rmin, 0
    if cmin < 0:
        cmax, cmin = cmax - cmin, 0
    if rmax > img_width:
        rmin, rmax = rmin - (rmax - img_width), img_width
    if cmax > img_length:
        cmin, cmax = cmin - (cmax - img_length), img_length
    return rmin, rmax, cmin, cmax


def sample_indices(n: int, sample_num: int, rng: np.random.Generator) -> np.ndarray:
    """With replacement whenever n <= sample_num (including equality), as the published loaders do."""
    if n <= 0:
        raise ValueError("no candidate pixels to sample from")
    if n <= sample_num:
        return rng.choice(n, sample_num)
    return rng.choice(n, sample_num, replace=False)


def backproject_crop(
    depth_mm: np.ndarray,
    K: tuple[float, float, float, float],
    window,
    choose: np.ndarray,
) -> np.ndarray:
    """Camera-frame points (metres, float32) of the chosen pixels of a crop, flattened row-major."""
    fx, fy, cx, cy = K
    rmin, _, cmin, cmax = window
    rows, cols = np.divmod(choose, cmax - cmin)
    v = rows + rmin
    u = cols + cmin
    z = depth_mm[v, u] / 1000.0
    x = (u - cx) * z / fx
    y = (v - cy) * z / fy
    return np.stack([x, y, z], axis=1).astype(np.float32)


def crop_resize_rgb(rgb: np.ndarray, window, size: int = 224) -> np.ndarray:
    rmin, rmax, cmin, cmax = window
    crop = np.ascontiguousarray(rgb[rmin:rmax, cmin:cmax])
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def normalise_rgb(rgb_uint8: np.ndarray) -> np.ndarray:
    """ToTensor + ImageNet Normalize: HWC uint8 -> CHW float32."""
    x = rgb_uint8.astype(np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def remap_choose(choose: np.ndarray, window, size: int = 224) -> np.ndarray:
    """Crop-pixel index -> index in the resized size x size image (floor; row stride = crop height)."""
    rmin, rmax = window[0], window[1]
    crop_w = rmax - rmin
    ratio = size / crop_w
    col = choose % crop_w
    row = choose // crop_w
    return (np.floor(row * ratio) * size + np.floor(col * ratio)).astype(np.int64)


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


def build_instance(
    rgb_uint8: np.ndarray,
    depth_mm: np.ndarray,
    inst_mask: np.ndarray,
    window,
    K,
    sample_num: int,
    rng: np.random.Generator,
    img_size: int = 224,
):
    """choose / points / resized RGB crop for one instance; None when the crop holds no valid mask pixel."""
    rmin, rmax, cmin, cmax = window
    choose = inst_mask[rmin:rmax, cmin:cmax].flatten().nonzero()[0]
    if len(choose) == 0:
        return None
    choose = choose[sample_indices(len(choose), sample_num, rng)]
    pts = backproject_crop(depth_mm, K, window, choose)
    rgb = crop_resize_rgb(rgb_uint8, window, img_size)
    return pts, rgb, choose


def worker_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    """Per-sample generator keyed on (seed, epoch, index): identical samples whatever the worker count."""
    return np.random.default_rng([seed, epoch, index, attempt])
