"""CLI: `python -m cleanpose_training.synthetic {nocs,bag} ...` (console script `cleanpose-synth`).

Examples:
    python -m cleanpose_training.synthetic nocs --out data/synth --split train --scenes 20 --frames 50 \
        --seed 0
    python -m cleanpose_training.synthetic nocs --out data/synth --split test --scenes 4 --frames 25 \
        --seed 1 --mask-noise 3,0.1
    python -m cleanpose_training.synthetic bag --out bags/demo --frames 300 --objects-per-frame 3-5 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .bag_writer import BagOptions, write_bag
from .nocs_writer import MaskNoise, NocsWriter
from .render import Frame, Lighting, Renderer
from .scene import Camera, Scene, arc_trajectory, random_views, sample_scene
from .shapes import CATEGORIES


def scene_rngs(seed: int, purpose: str, n: int) -> list[np.random.Generator]:
    """Independent generators per scene, derived from (seed, purpose) so splits/bags never share streams."""
    ss = np.random.SeedSequence([seed, zlib.crc32(purpose.encode())])
    return [np.random.default_rng(s) for s in ss.spawn(n)]


def _range_at_least(lowest: int):
    """An argparse type for "A-B" (or "A") with ``lowest`` <= A <= B."""

    def parse(text: str) -> tuple[int, int]:
        lo, _, hi = text.partition("-")
        a, b = int(lo), int(hi or lo)
        if not lowest <= a <= b:
            raise argparse.ArgumentTypeError(f"expected A-B with {lowest} <= A <= B, got {text!r}")
        return a, b

    return parse


def _categories(text: str) -> tuple[str, ...]:
    cats = tuple(c.strip() for c in text.split(",") if c.strip())
    bad = [c for c in cats if c not in CATEGORIES]
    if bad or not cats:
        raise argparse.ArgumentTypeError(f"unknown categories {bad}; choose from {','.join(CATEGORIES)}")
    return cats


def _mask_noise(text: str) -> MaskNoise:
    r, _, j = text.partition(",")
    return MaskNoise(max_radius_px=int(r), score_jitter=float(j or 0.0))


@dataclass(frozen=True)
class SceneSpec:
    """What every generator samples and renders: category objects per scene (fewer may be visible in a
    frame), their categories, non-category clutter per scene, image size and shadow rays."""

    objects: tuple[int, int] = (3, 6)
    categories: tuple[str, ...] = CATEGORIES
    distractors: tuple[int, int] = (0, 2)
    width: int = 640
    height: int = 480
    shadows: bool = True

    @property
    def camera(self) -> Camera:
        return Camera.real275(self.width, self.height)

    def sample(self, rng: np.random.Generator) -> Scene:
        n = int(rng.integers(self.objects[0], self.objects[1] + 1))
        return sample_scene(rng, n, self.categories, distractors=self.distractors)

    def renderer(self, scene: Scene) -> Renderer:
        return Renderer(scene, self.camera, shadows=self.shadows)


def generate_nocs(
    out: str | Path,
    *,
    split: str = "train",
    scenes: int = 1,
    frames: int = 10,
    seed: int = 0,
    write_results: bool = True,
    mask_noise: MaskNoise | None = None,
    min_valid_depth_pixels: int = 64,
    progress: bool = False,
    style: str = "a",
    **scene,
) -> NocsWriter:
    """A NOCS/DPDN-layout split of ``scenes`` x ``frames`` random views; ``scene``: :class:`SceneSpec`
    fields; ``style``: ``a`` (default) or ``b``, a second domain (``synthetic/style.py``)."""
    from . import style as styles

    styles.check_style(style)
    spec = SceneSpec(**scene)
    writer = NocsWriter(
        out,
        split,
        spec.camera,
        min_valid_depth_pixels=min_valid_depth_pixels,
        write_results=write_results,
        mask_noise=mask_noise,
    )
    bar = tqdm(total=scenes * frames, unit="frame", disable=not progress, desc=f"nocs/{split}")
    for k, rng in enumerate(scene_rngs(seed, f"nocs/{split}", scenes)):
        layout = styles.restyle_scene(spec.sample(rng), np.random.default_rng([seed, k, 0x5B]), style)
        writer.add_scene_models(layout, rng)
        renderer = spec.renderer(layout)
        for i, T in enumerate(random_views(rng, layout, frames)):
            light, noise = styles.lighting(rng, style), styles.depth_noise(style)
            frame = renderer.render(T, rng, lighting=light, noise=noise)
            writer.write_frame(k + 1, i, styles.restyle_frame(frame, style), rng)
            bar.update(1)
    bar.close()
    writer.finish()
    return writer


def bag_frames(
    rng: np.random.Generator,
    frames: int,
    objects: tuple[int, int],
    categories: tuple[str, ...],
    camera: Camera,
    rate_hz: float,
    shadows: bool = True,
    distractors: tuple[int, int] = (0, 2),
) -> Iterator[Frame]:
    """Frames of one static scene along a smooth arc; the light stays fixed so only the camera moves."""
    spec = SceneSpec(objects, categories, distractors, camera.width, camera.height, shadows)
    layout = spec.sample(rng)
    renderer = Renderer(layout, camera, shadows=shadows)
    lighting = Lighting.random(rng)
    for T in arc_trajectory(rng, layout, frames, rate_hz=rate_hz):
        yield renderer.render(T, rng, lighting=lighting, rgb_noise_sigma=2.0)


def generate_bag(
    out: str | Path,
    *,
    frames: int = 90,
    seed: int = 0,
    storage: str = "mcap",
    rate_hz: float = 30.0,
    mask_noise: MaskNoise | None = None,
    scene_index: int = 0,
    progress: bool = False,
    compress: bool = True,
    **scene,
) -> int:
    """A rosbag2 of one scene (``scene_index`` of the seed's scenes); ``scene``: :class:`SceneSpec` fields."""
    spec = SceneSpec(**scene)
    rng = scene_rngs(seed, "bag", scene_index + 1)[scene_index]
    it = bag_frames(
        rng, frames, spec.objects, spec.categories, spec.camera, rate_hz, spec.shadows, spec.distractors
    )
    it = tqdm(it, total=frames, unit="frame", disable=not progress, desc=f"bag {Path(out).name}")
    opts = BagOptions(storage=storage, rate_hz=rate_hz, mask_noise=mask_noise, compress=compress)
    # Mask noise draws from its own stream, so switching it on does not change the rendered frames.
    return write_bag(out, it, scene_rngs(seed, "bag/detections", scene_index + 1)[scene_index], opts)


def write_previews(out: str | Path, *, frames: int = 4, seed: int = 0, **scene) -> list[Path]:
    """PNGs of random frames with the GT 3D boxes, axes and labels drawn, and the depth beside them;
    ``scene``: :class:`SceneSpec` fields."""
    import cv2

    from .render import draw_boxes

    spec = SceneSpec(**scene)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, rng in enumerate(scene_rngs(seed, "preview", frames)):
        layout = spec.sample(rng)
        frame = spec.renderer(layout).render(random_views(rng, layout, 1)[0], rng)
        d = frame.depth_mm.astype(np.float32)
        valid = d > 0
        lo, hi = np.percentile(d[valid], [1, 99]) if valid.any() else (0.0, 1.0)
        depth_vis = cv2.applyColorMap(
            (np.clip((d - lo) / max(hi - lo, 1.0), 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_TURBO
        )
        depth_vis[~valid] = 0
        path = out / f"preview_{k:03d}.png"
        cv2.imwrite(str(path), np.hstack([draw_boxes(frame)[..., ::-1], depth_vis]))
        paths.append(path)
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cleanpose-synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    commands = (
        ("nocs", "NOCS/DPDN dataset layout"),
        ("bag", "rosbag2 camera sequence(s)"),
        ("preview", "PNGs of frames with the GT boxes drawn (colour | depth)"),
    )
    for name, help_ in commands:
        s = sub.add_parser(name, help=help_)
        s.add_argument(
            "--out",
            required=True,
            type=Path,
            help="dataset root (nocs) or bag path (bag; with --scenes > 1 a folder of bags)",
        )
        s.add_argument(
            "--frames",
            type=int,
            default=10 if name == "nocs" else 90,
            help="frames per scene (nocs) or per bag",
        )
        s.add_argument("--scenes", type=int, default=1)
        spec = SceneSpec()  # the defaults
        ranges = (
            (
                "--objects-per-frame",
                1,
                spec.objects,
                "category objects placed per scene (fewer may be visible)",
            ),
            (
                "--distractors",
                0,
                spec.distractors,
                "non-category clutter objects per scene (no ground truth)",
            ),
        )
        for flag, lowest, default, help_ in ranges:
            s.add_argument(flag, type=_range_at_least(lowest), default=default, metavar="A-B", help=help_)
        s.add_argument(
            "--categories", type=_categories, default=spec.categories, help="comma-separated subset"
        )
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--width", type=int, default=spec.width)
        s.add_argument("--height", type=int, default=spec.height)
        s.add_argument(
            "--mask-noise",
            type=_mask_noise,
            default=None,
            metavar="R[,J]",
            help="perturb GT masks used as detections: erode/dilate up to R px, score jitter sigma J",
        )
        s.add_argument("--no-shadows", action="store_true", help="skip shadow rays (faster)")
        if name == "nocs":
            s.add_argument("--split", default="train")
            s.add_argument(
                "--results",
                choices=["auto", "yes", "no"],
                default="auto",
                help="write segmentation_results pickles (auto: for every split but 'train')",
            )
            s.add_argument("--min-valid-depth", type=int, default=64)
            s.add_argument(
                "--style", choices=["a", "b"], default="a", help="b: a second domain (synthetic/style.py)"
            )
        elif name == "bag":
            s.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
            s.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz) of the stamps")
            s.add_argument(
                "--no-compress",
                action="store_true",
                help="MCAP without zstd chunk compression (larger, for readers without zstd)",
            )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    scene = {
        "objects": args.objects_per_frame,
        "categories": args.categories,
        "distractors": args.distractors,
        "width": args.width,
        "height": args.height,
        "shadows": not args.no_shadows,
    }
    if args.command == "nocs":
        results = args.results == "yes" or (args.results == "auto" and args.split != "train")
        generate_nocs(
            args.out,
            split=args.split,
            scenes=args.scenes,
            frames=args.frames,
            seed=args.seed,
            write_results=results,
            mask_noise=args.mask_noise,
            min_valid_depth_pixels=args.min_valid_depth,
            progress=True,
            style=args.style,
            **scene,
        )
        n = args.scenes * args.frames
    elif args.command == "preview":
        n = len(write_previews(args.out, frames=args.frames, seed=args.seed, **scene))
    else:
        paths = [args.out] if args.scenes == 1 else [args.out / f"scene_{k}" for k in range(args.scenes)]
        if args.scenes > 1:
            args.out.mkdir(parents=True, exist_ok=True)
        n = 0
        for k, path in enumerate(paths):
            bag = {"storage": args.storage, "rate_hz": args.rate, "compress": not args.no_compress}
            n += generate_bag(
                path,
                frames=args.frames,
                seed=args.seed,
                mask_noise=args.mask_noise,
                scene_index=k,
                **bag,
                **scene,
            )
    dt = time.perf_counter() - t0
    print(f"wrote {n} frames to {args.out} in {dt:.1f} s ({n / max(dt, 1e-9):.2f} frames/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
