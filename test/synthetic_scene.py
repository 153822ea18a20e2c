"""Random RGB-D frames with box-shaped object masks, for the preprocessing and pipeline tests: one maker, so a
test states only what its scene is for (size, depth range, holes, boxes)."""

from __future__ import annotations

import numpy as np

from cleanpose_model.preprocess.reference import mask_to_box


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


def order_scene(seed: int = 0, h: int = 240, w: int = 320):
    """The scene of the order-invariance tests (preprocessing and pipeline): 5 objects, two of one category
    with the same box size (distinct windows), detection 3 with too few pixels (9). (rgb, depth, masks, boxes,
    cats), cats 0-based NOCS ids."""
    boxes = [
        (10, 20, 60, 90),
        (100, 20, 150, 90),
        (30, 150, 200, 300),
        (200, 5, 203, 8),
        (150, 200, 238, 318),
    ]
    rgb, depth, masks = rgbd_scene(np.random.default_rng(seed), h, w, boxes, (0.4, 1.5), holes=0.15, fill=0.8)
    # the boxes of the drawn masks (a 0.8 fill can leave a box's edge row empty)
    boxes = np.array([mask_to_box(m) for m in masks])
    return rgb, depth, masks, boxes, np.array([5, 5, 4, 3, 1])
