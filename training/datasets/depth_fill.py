"""Depth loading and the IP-Basic multiscale hole filling with the DPDN thresholds (preprocessing.md §1.2)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .common import DatasetError, read_image

FULL_KERNEL_5 = np.ones((5, 5), np.uint8)
FULL_KERNEL_9 = np.ones((9, 9), np.uint8)
CROSS_KERNEL_3 = np.asarray([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)
CROSS_KERNEL_5 = np.asarray(
    [[0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0]], dtype=np.uint8
)
CROSS_KERNEL_7 = np.zeros((7, 7), np.uint8)
CROSS_KERNEL_7[3, :] = 1
CROSS_KERNEL_7[:, 3] = 1

_EPS = 0.01  # the DPDN port scaled every IP-Basic threshold (0.1 m) down to metres on indoor scenes


def _top_mask(depth: np.ndarray) -> np.ndarray:
    # argmax of an all-invalid column is 0, so such a column keeps a full mask, as in the reference loop
    top_row = np.argmax(depth > _EPS, axis=0)
    return np.arange(depth.shape[0])[:, None] >= top_row[None, :]


def fill_in_multiscale(
    depth_map: np.ndarray, max_depth: float = 8.0, extrapolate: bool = False, blur_type: str = "bilateral"
) -> np.ndarray:
    """Fill holes in a metric depth map (metres); 0 = invalid."""
    if extrapolate:
        raise NotImplementedError("extrapolate=True is not used by the CleanPose protocol")
    if blur_type not in ("bilateral", "gaussian"):
        raise ValueError(f"unknown blur_type {blur_type!r}")
    depths_in = np.float32(depth_map)

    near = (depths_in > _EPS) & (depths_in <= 1.0)
    med = (depths_in > 1.0) & (depths_in <= 2.0)
    far = depths_in > 2.0

    s1 = depths_in.copy()
    valid = s1 > _EPS
    s1[valid] = max_depth - s1[valid]

    dil_far = cv2.dilate(np.multiply(s1, far, dtype=np.float32), CROSS_KERNEL_3)
    dil_med = cv2.dilate(np.multiply(s1, med, dtype=np.float32), CROSS_KERNEL_5)
    dil_near = cv2.dilate(np.multiply(s1, near, dtype=np.float32), CROSS_KERNEL_7)

    s2 = s1.copy()
    for dil in (dil_far, dil_med, dil_near):
        sel = dil > _EPS
        s2[sel] = dil[sel]

    s3 = cv2.morphologyEx(s2, cv2.MORPH_CLOSE, FULL_KERNEL_5)

    s4 = s3.copy()
    blurred = cv2.medianBlur(s3, 5)
    valid = s3 > _EPS
    s4[valid] = blurred[valid]

    top_mask = _top_mask(s4)
    empty = ~(s4 > _EPS) & top_mask
    dilated = cv2.dilate(s4, FULL_KERNEL_9)
    s5 = s4.copy()
    s5[empty] = dilated[empty]

    top_mask = _top_mask(s5)
    s7 = s5.copy()
    for _ in range(6):
        empty = (s7 < _EPS) & top_mask
        dilated = cv2.dilate(s7, FULL_KERNEL_5)
        s7[empty] = dilated[empty]

    blurred = cv2.medianBlur(s7, 5)
    valid = (s7 > _EPS) & top_mask
    s7[valid] = blurred[valid]
    if blur_type == "gaussian":
        blurred = cv2.GaussianBlur(s7, (5, 5), 0)
    else:
        blurred = cv2.bilateralFilter(s7, 5, 0.5, 2.0)
    s7[valid] = blurred[valid]

    out = s7.copy()
    valid = out > _EPS
    out[valid] = max_depth - out[valid]
    return out


def fill_missing(depth: np.ndarray, cam_scale: float = 1000.0, scale_2_80m: float = 1.0) -> np.ndarray:
    """DPDN `fill_missing`: depth in cam_scale units in, hole-filled float32 in the same units out."""
    d = np.asarray(depth, dtype=np.float32) / cam_scale * scale_2_80m
    filled = fill_in_multiscale(d, max_depth=3.0, extrapolate=False, blur_type="bilateral")
    return (filled / scale_2_80m * cam_scale).astype(np.float32)


def decode_depth(raw: np.ndarray, path: str | Path) -> np.ndarray:
    if raw.ndim == 3 and raw.shape[2] == 3:
        d = np.uint16(raw[:, :, 1]) * 256 + np.uint16(raw[:, :, 2])
        d = np.where(d == 32001, 0, d)
        return d.astype(np.uint16)
    if raw.ndim == 2 and raw.dtype == np.uint16:
        return raw
    raise DatasetError(
        f"unsupported depth image '{path}': shape {raw.shape} dtype {raw.dtype}; "
        "expected 16-bit single channel (mm) or 3-channel encoded depth"
    )


def load_depth_png(path: str | Path) -> np.ndarray:
    """A depth png in millimetres (uint16)."""
    return decode_depth(read_image(path, "depth image", cv2.IMREAD_UNCHANGED), path)


def load_depth(prefix: str | Path) -> np.ndarray:
    """`<prefix>_depth.png` in millimetres (uint16)."""
    return load_depth_png(f"{prefix}_depth.png")


def composed_depth_path(prefix: str | Path) -> str:
    return str(prefix).replace("/camera/", "/camera_full_depths/") + "_composed.png"


def load_composed_depth(prefix: str | Path) -> np.ndarray | None:
    """CAMERA depth composited on real backgrounds; None when missing (the loader then resamples)."""
    path = composed_depth_path(prefix)
    if not Path(path).is_file():
        return None
    return decode_depth(read_image(path, "composed depth image", cv2.IMREAD_UNCHANGED), path)
