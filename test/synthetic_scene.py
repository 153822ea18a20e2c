"""Random RGB-D frames with box-shaped object masks, for the preprocessing and pipeline tests: one maker, so a
test states only what its scene is for (size, depth range, holes, boxes)."""

from __future__ import annotations

import numpy as np


def rgbd_scene(
    g: np.random.Generator, h: int, w: int, boxes, depth_range, holes: float = 0.0, fill: float = 1.0
):
    """(rgb (h, w, 3) uint8, depth (h, w) float32 m, masks (len(boxes), h, w) bool) drawn from `g`: depth
    uniform in `depth_range` with a `holes` share of the pixels 0 (invalid); mask k covers a random `fill`
    share of box k = (y1, x1, y2, x2), all of it when `fill` is 1."""
    rgb = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = g.uniform(*depth_range, (h, w)).astype(np.float32)
    if holes:
        depth[g.random((h, w)) < holes] = 0.0
    masks = np.zeros((len(boxes), h, w), bool)
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        masks[k, y1:y2, x1:x2] = g.random((y2 - y1, x2 - x1)) < fill if fill < 1 else True
    return rgb, depth, masks
