"""Debug overlay: projected 3D boxes, axes and labels over the RGB image (camera-frame results)."""

from __future__ import annotations

import cv2
import numpy as np

from cleanpose_ros.geometry_utils import BOX_EDGES, box_corners
from cleanpose_ros.markers import class_color


def _project(K: np.ndarray, pts: np.ndarray) -> np.ndarray | None:
    if np.any(pts[:, 2] <= 1e-6) or not np.all(np.isfinite(pts)):
        return None  # behind the camera: skip rather than draw wrapped lines
    uv = (pts @ K.T)[:, :2] / pts[:, 2:3]
    if np.any(np.abs(uv) > 1e5):
        return None
    return np.round(uv).astype(np.int32)


def draw_debug_image(rgb: np.ndarray, K: np.ndarray, objects, masks=None) -> np.ndarray:
    """RGB uint8 copy of `rgb` with each object's box (class colour), axes (x red, y green, z blue), label."""
    img = np.ascontiguousarray(rgb.copy())
    K = np.asarray(K, np.float64)
    for o in objects:
        col = tuple(int(255 * c) for c in class_color(o.class_id))
        uv = _project(K, box_corners(o.rotation, o.translation, o.size))
        if uv is None:
            continue
        pix = [tuple(p) for p in uv.tolist()]  # Python ints for cv2
        for a, b in BOX_EDGES:
            cv2.line(img, pix[a], pix[b], col, 2, cv2.LINE_AA)
        t = np.asarray(o.translation, np.float64)
        length = 0.5 * float(np.max(o.size)) if np.max(o.size) > 0 else 0.05
        ax = _project(K, np.stack([t] + [t + np.asarray(o.rotation)[:, k] * length for k in range(3)]))
        if ax is not None:
            apix = [tuple(p) for p in ax.tolist()]
            for k, c in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
                cv2.line(img, apix[0], apix[k + 1], c, 2, cv2.LINE_AA)
        org = (int(uv[:, 0].min()), max(int(uv[:, 1].min()) - 4, 10))
        cv2.putText(
            img, f"{o.class_name} {o.score:.2f}", org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, col, 1, cv2.LINE_AA
        )
    return img
