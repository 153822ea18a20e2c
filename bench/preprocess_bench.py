"""Per-object input construction for a 640x480 frame with 6 masks (issue 8, target 2): the numpy reference
and the fixed-shape torch form (GraphedInputBuilder), eager and (on CUDA) graphed, on --device, side by side
in one run.

Median and min over --runs calls after --warmup calls, cycling through the frames of --frames; CUDA timings
are synchronised. The torch rows start from the frame already on the device (as after the node's upload);
the upload itself (rgb + depth + masks, pageable) is timed in its own row; "graphed from host arrays" is what
FramePipeline does per frame on CUDA (frame and window table up in one copy from pinned memory, then the two
replays). The same run checks that the eager and graphed forms pick the same pixels as the numpy path on this
device (pts / choose / kept bit-equal, RGB difference in grey levels).

    python bench/preprocess_bench.py --device cuda --frames .carry/perf_frames.npz --out $OUT
    python bench/preprocess_bench.py --device cpu --synthetic --runs 3 --warmup 1   # CI short mode
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cleanpose_model.device import resolve_device
from cleanpose_model.preprocess import IMAGENET_STD, GraphedInputBuilder, build_object_inputs_np, mask_to_box


def synthetic_frames(n: int = 2, objects: int = 6, h: int = 480, w: int = 640, seed: int = 0) -> dict:
    """Random frames of the perf-frame layout (no renderer needed): elliptic masks of mixed sizes,
    depth 0.4-1.5 m with 10% holes."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    rgb, depth, masks, boxes = [], [], [], []
    for _ in range(n):
        rgb.append(g.integers(0, 256, (h, w, 3), dtype=np.uint8))
        d = g.uniform(0.4, 1.5, (h, w)).astype(np.float32)
        d[g.random((h, w)) < 0.1] = 0.0
        depth.append(d)
        m = np.zeros((objects, h, w), bool)
        for k in range(objects):
            ry, rx = g.integers(20, 90), g.integers(20, 120)
            cy, cx = g.integers(ry, h - ry), g.integers(rx, w - rx)
            m[k] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        masks.append(m)
        boxes.append(np.array([mask_to_box(x) for x in m], np.int64))
    K = np.array([[591.0125, 0, 322.525], [0, 590.16775, 244.11084], [0, 0, 1]])
    return {
        "rgb": np.stack(rgb),
        "depth_m": np.stack(depth),
        "K": K,
        "masks": np.stack(masks),
        "boxes": np.stack(boxes),
        "categories": g.integers(0, 6, (n, objects)),
    }


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, n_frames: int, dev: torch.device, warmup: int, runs: int) -> list[float]:
    """fn(frame_index) timed per call (ms), frames cycled so no single layout dominates."""
    out = []
    for i in range(warmup + runs):
        sync(dev)
        t0 = time.perf_counter()
        fn(i % n_frames)
        sync(dev)
        if i >= warmup:
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def check_equal(fr: dict, gpu: list, dev: torch.device) -> dict:
    """Eager and graphed forms on `dev` vs the numpy path with the same generator seed, over all frames."""
    worst_rgb, rgb_differing, equal = 0.0, 0, True
    builders = {"eager": GraphedInputBuilder(dev, graphs=False), "graphed": GraphedInputBuilder(dev)}
    for i, path in ((i, p) for i in range(len(gpu)) for p in builders):
        args = (fr["K"], fr["boxes"][i], fr["categories"][i])
        ref = build_object_inputs_np(
            fr["rgb"][i], fr["depth_m"][i], fr["K"], fr["masks"][i], *args[1:], rng=np.random.default_rng(i)
        )
        g = gpu[i]
        fn = builders[path]
        batch, kept, nums, wins = fn(g[0], g[1], fr["K"], g[2], *args[1:], rng=np.random.default_rng(i))
        equal &= bool(
            np.array_equal(kept, ref.kept)
            and np.array_equal(nums, ref.num_points)
            and np.array_equal(wins, ref.windows)
            and np.array_equal(batch.pts.cpu().numpy(), ref.pts)
            and np.array_equal(batch.choose.cpu().numpy(), ref.choose)
            and np.array_equal(batch.category.cpu().numpy(), ref.category)
        )
        # back to grey levels: normalised difference * std * 255
        d = np.abs(batch.rgb.cpu().numpy() - ref.rgb) * (IMAGENET_STD[None, :, None, None] * 255.0)
        worst_rgb = max(worst_rgb, float(d.max()) if d.size else 0.0)
        rgb_differing += int((d > 0.5).sum())
    return {
        "pts_choose_kept_equal": equal,
        "rgb_max_diff_grey_levels": round(worst_rgb, 4),
        "rgb_values_differing": rgb_differing,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument(
        "--frames",
        type=Path,
        default=Path(".carry/perf_frames.npz"),
        help="npz from bench/make_perf_frames.py",
    )
    ap.add_argument("--synthetic", action="store_true", help="random frames instead of --frames")
    ap.add_argument("--max-frames", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave default)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output: a file, or a directory (writes preprocess_bench.json there)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device).device
    if args.synthetic or not args.frames.exists():
        if not args.synthetic:
            print(f"{args.frames} not found: using synthetic frames", file=sys.stderr)
        fr, source = synthetic_frames(), "synthetic"
    else:
        with np.load(args.frames) as z:
            fr, source = (
                {k: z[k] for k in ("rgb", "depth_m", "K", "masks", "boxes", "categories")},
                str(args.frames),
            )
    nf = min(len(fr["rgb"]), args.max_frames)
    host = [(fr["rgb"][i], fr["depth_m"][i], fr["masks"][i]) for i in range(nf)]

    def upload(i):
        return [torch.from_numpy(np.ascontiguousarray(x)).to(dev) for x in host[i]]

    gpu = [upload(i) for i in range(nf)]
    sync(dev)
    K, boxes, cats = fr["K"], fr["boxes"], fr["categories"]

    rows = {}
    cpu = torch.device("cpu")
    rows["numpy (CPU)"] = (
        "cpu",
        timed(
            lambda i: build_object_inputs_np(*host[i][:2], K, host[i][2], boxes[i], cats[i]),
            nf,
            cpu,
            args.warmup,
            args.runs,
        ),
    )
    eager = GraphedInputBuilder(dev, graphs=False)
    rows["torch eager"] = (
        str(dev),
        timed(
            lambda i: eager(gpu[i][0], gpu[i][1], K, gpu[i][2], boxes[i], cats[i]),
            nf,
            dev,
            args.warmup,
            args.runs,
        ),
    )
    builder = GraphedInputBuilder(dev)
    rows["torch graphed"] = (
        str(dev),
        timed(
            lambda i: builder(gpu[i][0], gpu[i][1], K, gpu[i][2], boxes[i], cats[i]),
            nf,
            dev,
            args.warmup,
            args.runs,
        ),
    )
    if dev.type == "cuda":
        rows["torch graphed from host arrays"] = (
            str(dev),
            timed(
                lambda i: builder(host[i][0], host[i][1], K, host[i][2], boxes[i], cats[i]),
                nf,
                dev,
                args.warmup,
                args.runs,
            ),
        )
        rows["frame upload (rgb+depth+masks)"] = (str(dev), timed(upload, nf, dev, args.warmup, args.runs))

    base = statistics.median(rows["numpy (CPU)"][1])
    result = {
        "source": source,
        "frames": nf,
        "image": list(fr["rgb"].shape[1:3]),
        "objects": int(fr["masks"].shape[1]),
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "warmup": args.warmup,
        "runs": args.runs,
        "rows": {
            k: {"device": d, "median_ms": statistics.median(t), "min_ms": min(t)}
            for k, (d, t) in rows.items()
        },
        "check": check_equal(fr, gpu, dev),
    }
    where = result["gpu"] or platform.processor() or platform.machine()
    print(
        f"preprocess, {result['image'][1]}x{result['image'][0]}, {result['objects']} masks, {nf} frames "
        f"({source}), median of {args.runs} after {args.warmup} warm-up; {where}, {os.cpu_count()} cores\n"
    )
    print("| path | device | median ms | min ms | vs numpy |")
    print("|---|---|---:|---:|---:|")
    for k, r in result["rows"].items():
        ratio = base / r["median_ms"]
        print(f"| {k} | {r['device']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | {ratio:.1f}x |")
    c = result["check"]
    print(
        f"\neager and graphed vs numpy on {dev}: pts/choose/kept equal: {c['pts_choose_kept_equal']}; "
        f"RGB max diff {c['rgb_max_diff_grey_levels']} grey levels "
        f"({c['rgb_values_differing']} values differ)"
    )
    if args.out is not None:
        path = args.out / "preprocess_bench.json" if args.out.is_dir() else args.out
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")
    return 0 if c["pts_choose_kept_equal"] and c["rgb_max_diff_grey_levels"] <= 1.0 + 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
