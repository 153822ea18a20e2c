"""Inputs of the suites: network inputs built from the parity objects, and RGB-D frames with instance masks
(generated, or read from the file ``scripts/make_perf_frames.py`` writes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO / "test" / "data" / "parity" / "cleanpose_parity_v1.npz"


def parity_objects(n: int, parity: Path = PARITY) -> dict[str, np.ndarray]:
    """``n`` network inputs (rgb (n,3,224,224), pts (n,1024,3), choose (n,1024), category (n,)) tiled from the
    4 parity objects, points jittered per copy (seeded by ``n``) so that copies are distinct objects."""
    v = np.load(parity)
    idx = np.arange(n) % v["rgb"].shape[0]
    rng = np.random.default_rng(n)
    pts = v["pts"][idx] + rng.normal(0.0, 0.002, size=(n, *v["pts"].shape[1:])).astype(np.float32)
    return {
        "rgb": np.ascontiguousarray(v["rgb"][idx]),
        "pts": pts.astype(np.float32),
        "choose": np.ascontiguousarray(v["choose"][idx]),
        "category": np.ascontiguousarray(v["category_label"][idx]),
    }


def parity_queue(parity: Path = PARITY) -> np.ndarray:
    """The parity file's confounder queue (cat_num, 80, 256)."""
    return np.load(parity)["queue"]


def write_forward_fixture(path: Path, counts: list[int]) -> Path:
    """One file with the inputs of every object count and the queue, read by every worker (whatever its
    source tree) with ``torch.load(weights_only=True)``: each tree sees the same tensors."""
    blob = {"queue": torch.from_numpy(parity_queue())}
    for n in sorted(set(counts)):
        for k, a in parity_objects(n).items():
            blob[f"{n}/{k}"] = torch.from_numpy(a)
    torch.save(blob, path)
    return path


def synthetic_frame(
    objects: int, height: int = 480, width: int = 640, seed: int = 0
) -> dict[str, np.ndarray]:
    """A frame of ``objects`` elliptic instances on a table plane: rgb (H,W,3) uint8, depth_m (H,W) float32
    with holes, K (3,3), masks (n,H,W) bool, boxes (n,4) (y1, x1, y2, x2) exclusive max, categories (n,).
    Sizes and placement scale with the image so the crops resemble those of a 640x480 view."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    depth = (0.6 + 0.4 * yy / height).astype(np.float32)
    rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    masks = np.zeros((objects, height, width), bool)
    boxes = np.zeros((objects, 4), np.int64)
    s = min(height, width)
    for i in range(objects):
        ry, rx = rng.uniform(0.06, 0.14, size=2) * s
        cy = rng.uniform(ry, height - ry)
        cx = rng.uniform(rx, width - rx)
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        masks[i] = m
        depth[m] -= np.float32(rng.uniform(0.05, 0.15))  # the object stands out of the plane
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    depth[rng.random((height, width)) < 0.02] = 0.0  # sensor holes
    f = 0.9 * width
    K = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return {
        "rgb": rgb,
        "depth_m": depth,
        "K": K,
        "masks": masks,
        "boxes": boxes,
        "categories": (np.arange(objects) % 6).astype(np.int64),
    }


def load_frames(path: Path) -> list[dict[str, np.ndarray]]:
    """The frames of a ``scripts/make_perf_frames.py`` file, one dict per frame (as ``synthetic_frame``)."""
    z = np.load(path)
    return [
        {
            "rgb": z["rgb"][i],
            "depth_m": z["depth_m"][i],
            "K": z["K"],
            "masks": z["masks"][i],
            "boxes": z["boxes"][i],
            "categories": z["categories"][i],
        }
        for i in range(z["rgb"].shape[0])
    ]


def frame_with_objects(frames: list[dict[str, np.ndarray]] | None, objects: int, height: int, width: int):
    """The first file frame with its instances repeated or cut to ``objects``; no file: a generated one."""
    if not frames:
        return synthetic_frame(objects, height, width)
    f = frames[0]
    sel = np.arange(objects) % f["masks"].shape[0]
    return {**f, "masks": f["masks"][sel], "boxes": f["boxes"][sel], "categories": f["categories"][sel]}
