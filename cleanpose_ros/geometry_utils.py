"""Small pose helpers shared by the output builders (numpy only)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

# Edges of a box given by box_corners() order (x, y, z bits of the corner index).
BOX_EDGES = [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7)]


# Corner i of box_corners() has x/y/z sign from bits 2/1/0 of i.
BOX_SIGNS = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], np.float64) * 2 - 1
BOX_SIGNS.setflags(write=False)


def box_corners(R: np.ndarray, t: np.ndarray, size: np.ndarray) -> np.ndarray:
    """(8, 3) corners of the object box in the camera frame; corner i has x/y/z sign from bits 2/1/0."""
    local = BOX_SIGNS * (np.asarray(size, np.float64) / 2)
    return local @ np.asarray(R, np.float64).T + np.asarray(t, np.float64)


def quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a rotation matrix (projected to the nearest rotation); (..., 3, 3)
    matrices give (..., 4): one call for all objects of a frame, the same numbers as one call per matrix."""
    return Rotation.from_matrix(np.asarray(R, np.float64)).as_quat()


def to_matrix(translation, quat_xyzw_) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(quat_xyzw_).as_matrix()
    T[:3, 3] = translation
    return T
