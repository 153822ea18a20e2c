"""Render a few 640x480 synthetic frames with 6 objects each: the frames file of the benchmark suites
(``python -m benchmarks preprocess|node --frames OUT``).

Rendering needs Open3D (the training extras); a machine without it takes the file rendered elsewhere: one
compressed npz (rgb, depth in metres, K, masks, boxes, categories, GT poses).

    python scripts/make_perf_frames.py OUT.npz [--frames 8] [--objects 6] [--seed 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cleanpose_training.synthetic.__main__ import bag_frames, scene_rngs
from cleanpose_training.synthetic.scene import Camera
from cleanpose_training.synthetic.shapes import CATEGORIES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("out", type=Path, help="frames file to write (.npz)")
    args = ap.parse_args(argv)
    cam = Camera.real275()
    rng = scene_rngs(args.seed, "perf", 1)[0]
    frames = []
    # Several scenes so the frames are not one view of the same layout.
    while len(frames) < args.frames:
        for f in bag_frames(rng, 2, (args.objects, args.objects), tuple(CATEGORIES), cam, 2.0):
            if len(f.category_ids) == args.objects:
                frames.append(f)
    frames = frames[: args.frames]
    out = {
        "rgb": np.stack([f.rgb for f in frames]),
        "depth_m": np.stack([f.depth_mm.astype(np.float32) / 1000.0 for f in frames]),
        "K": frames[0].K.astype(np.float64),
        "masks": np.stack([f.masks for f in frames]),
        "boxes": np.stack([f.boxes for f in frames]).astype(np.int64),
        "categories": np.stack([f.category_ids for f in frames]).astype(np.int64),
        "rotations": np.stack([f.rotations for f in frames]),
        "translations": np.stack([f.translations for f in frames]),
        "sizes": np.stack([f.sizes for f in frames]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, {len(frames)} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
