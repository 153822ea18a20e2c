"""Data of the two training stages. Every sample is a pure function of (seed, index), so a run resumed at
step k draws exactly the samples an uninterrupted run draws, with no sampler state to save.

- ``RenderedShapes`` (stage 1): single objects of the procedural category shapes (the stand-in for ShapeNet),
  one random view each, cropped by the same preprocessing the node uses; the target is the object's canonical
  (NOCS) surface point cloud.
- ``UnlabeledNocs`` (stage 2): a NOCS-layout folder written by ``cleanpose_training.synthetic nocs`` (or the
  real dataset's layout), read as a robot would record it: colour, depth, instance mask, the category of each
  instance (``meta.txt``: what a segmenter reports) and the intrinsics. Pose files (``*_label.pkl``,
  ``obj_models/``, ``segmentation_results/``) are never opened."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from cleanpose_model.categories import NOCS
from cleanpose_model.preprocess import build_object_inputs_np, mask_to_box
from cleanpose_training.datasets.common import read_mask_channel, read_rgb
from cleanpose_training.datasets.depth_fill import load_depth


@dataclass
class Sample:
    """One object: ``rgb`` (3,S,S) normalised crop, ``pts`` (n,3) camera-frame metres, ``choose`` (n,)
    crop pixel indices, ``category``; ``target`` (P,3) canonical points in stage 1 (None in stage 2)."""

    rgb: np.ndarray
    pts: np.ndarray
    choose: np.ndarray
    category: int
    target: np.ndarray | None = None


def collate(samples: list[Sample]) -> dict[str, torch.Tensor]:
    out = {
        "rgb": torch.from_numpy(np.stack([s.rgb for s in samples])),
        "pts": torch.from_numpy(np.stack([s.pts for s in samples])),
        "choose": torch.from_numpy(np.stack([s.choose for s in samples])),
        "category": torch.tensor([s.category for s in samples], dtype=torch.long),
    }
    if samples[0].target is not None:
        out["target"] = torch.from_numpy(np.stack([s.target for s in samples]))
    return out


class RenderedShapes:
    """Stage-1 samples: sample ``i`` renders one freshly drawn object of a random category from a random
    view; draws with too few visible depth pixels are redrawn from the next sub-seed."""

    def __init__(self, seed: int, image_size: int, n_points: int, shape_points: int, width=160, height=120):
        from cleanpose_training.synthetic.scene import Camera

        self.seed, self.image_size, self.n_points, self.shape_points = (
            seed,
            image_size,
            n_points,
            shape_points,
        )
        self.camera = Camera.real275(width, height)

    def __getitem__(self, index: int) -> Sample:
        from cleanpose_training.synthetic.render import Renderer
        from cleanpose_training.synthetic.scene import random_views, sample_scene

        for attempt in range(20):
            rng = np.random.default_rng([self.seed, index, attempt])
            scene = sample_scene(rng, 1, NOCS.names, distractors=(0, 0))
            renderer = Renderer(scene, self.camera, shadows=False)
            frame = renderer.render(random_views(rng, scene, 1)[0], rng)
            if len(frame.masks) == 0:
                continue
            depth = frame.depth_mm.astype(np.float32) / 1000.0
            objs = build_object_inputs_np(
                frame.rgb, depth, frame.K, frame.masks[:1], frame.boxes[:1], frame.category_ids[:1], rng,
                n_points=self.n_points, image_size=self.image_size,
            )  # fmt: skip
            if len(objs) == 0:
                continue
            target = scene.objects[0].model.sample_surface(self.shape_points, rng)
            return Sample(objs.rgb[0], objs.pts[0], objs.choose[0], int(objs.category[0]), target)
        raise RuntimeError(f"no visible object in 20 draws for sample {index}")


class UnlabeledNocs:
    """Stage-2 samples: every (frame, instance) of ``<root>/<split>_list_all.txt``. Depth points are drawn
    from ``np.random.default_rng([seed, index])``."""

    def __init__(self, root, split: str, seed: int, image_size: int, n_points: int, min_points: int = 50):
        self.root = Path(root)
        self.seed, self.image_size, self.n_points, self.min_points = seed, image_size, n_points, min_points
        intr = yaml.safe_load((self.root / "intrinsics.yaml").read_text())
        self.K = np.array([[intr["fx"], 0, intr["cx"]], [0, intr["fy"], intr["cy"]], [0, 0, 1]], np.float64)
        frames = (self.root / f"{split}_list_all.txt").read_text().split()
        self.items: list[tuple[str, int, int]] = []  # (frame prefix, instance id, 0-based category)
        for rel in frames:
            for line in Path(self.root / f"{rel}_meta.txt").read_text().splitlines():
                inst, cls = line.split()[:2]
                self.items.append((rel, int(inst), int(cls) - 1))
        if not self.items:
            raise ValueError(f"{self.root}: no object instances in {split}_list_all.txt")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample | None:
        """The object, or None when its mask holds too few depth points (the caller skips it)."""
        rel, inst, cat = self.items[index % len(self.items)]
        prefix = self.root / rel
        mask = read_mask_channel(f"{prefix}_mask.png") == inst
        box = mask_to_box(mask)
        if box is None:
            return None
        depth = load_depth(prefix).astype(np.float32) / 1000.0
        objs = build_object_inputs_np(
            read_rgb(f"{prefix}_color.png"), depth, self.K, mask[None], [box], [cat],
            np.random.default_rng([self.seed, index]), n_points=self.n_points,
            min_points=self.min_points, image_size=self.image_size,
        )  # fmt: skip
        if len(objs) == 0:
            return None
        return Sample(objs.rgb[0], objs.pts[0], objs.choose[0], cat)
