"""Forward time of CleanPoseNet (model only) for 1 and N objects, on any device.

Random weights of the chosen config (timing does not depend on the values), parity-like inputs
(1024 points on box surfaces 0.5-1 m away, random crops and pixel indices), eval mode, no_grad.
Median and min over --runs calls after --warmup calls; CUDA timings are synchronised.

    python bench/model_forward.py --device cuda --config cleanpose_nocs --objects 1 6 \
        --out outputs/bench/fwd.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from cleanpose_model.config import ModelConfig
from cleanpose_model.device import resolve_device
from cleanpose_model.net import CleanPoseNet


def make_inputs(cfg: ModelConfig, bsz: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    rgb = torch.randn(bsz, 3, s, s, generator=gen)
    # Points on the faces of 10-20 cm boxes, like real object surfaces (FPS cost depends on spread).
    face = torch.randint(0, 3, (bsz, cfg.n_points), generator=gen)
    pts = torch.rand(bsz, cfg.n_points, 3, generator=gen) - 0.5
    side = torch.where(torch.rand(bsz, cfg.n_points, generator=gen) < 0.5, -0.5, 0.5)
    pts.scatter_(2, face.unsqueeze(-1), side.unsqueeze(-1))
    pts = pts * (0.1 + 0.1 * torch.rand(bsz, 1, 3, generator=gen))
    pts = (
        pts
        + torch.tensor([0.0, 0.0, 0.5])
        + 0.5 * torch.rand(bsz, 1, 3, generator=gen) * torch.tensor([0.2, 0.2, 1.0])
    )
    choose = torch.randint(0, s * s, (bsz, cfg.n_points), generator=gen)
    cat = torch.arange(bsz) % cfg.cat_num
    queue = torch.randn(bsz, cfg.select_num, cfg.d_model, generator=gen) if cfg.use_front_door else None
    queue = queue.to(device) if queue is not None else None
    return rgb.to(device), pts.to(device), choose.to(device), cat.to(device), queue


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(net: CleanPoseNet, inputs, device: torch.device, warmup: int, runs: int) -> list[float]:
    rgb, pts, choose, cat, queue = inputs
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            sync(device)
            t0 = time.perf_counter()
            net(rgb, pts, choose, cat, queue_feats=queue)
            sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--config", default="cleanpose_nocs", help="shipped config name or YAML path")
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 6])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave default)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convs (default: full fp32)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    device = resolve_device(args.device).device
    if args.config.endswith(".yaml"):
        cfg = ModelConfig.from_yaml(args.config)
    else:
        cfg = ModelConfig.named(args.config)
    torch.manual_seed(0)
    net = CleanPoseNet(cfg).to(device).eval()
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": args.config,
        "dtype": "float32",
        "tf32": args.tf32,
        "warmup": args.warmup,
        "runs": args.runs,
        "objects": {},
    }
    print(
        f"CleanPoseNet forward, config {args.config}, {result['device_name']} ({device}), fp32"
        f"{' +TF32' if args.tf32 else ''}, {args.runs} runs after {args.warmup} warm-up"
    )
    print(f"{'objects':>8} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    for n in args.objects:
        times = time_forward(net, make_inputs(cfg, n, device), device, args.warmup, args.runs)
        row = {
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "max_ms": max(times),
            "all_ms": times,
        }
        if device.type == "cuda":
            row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["objects"][str(n)] = row
        print(f"{n:>8} {row['median_ms']:>10.1f} {row['min_ms']:>8.1f} {row['max_ms']:>8.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
