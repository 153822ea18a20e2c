"""Issue-8 measurements in one call: forward time per mode and object count, fast-vs-exact pose error,
per-object input construction, GPU memory, scaling plot, CPU-only inference.

Modes (all on the same device, same inputs, same run):
- ``reference``: eager fp32 forward, TF32 off (the parity path; equals the published outputs).
- ``exact``: the same network replayed from CUDA graphs, fp32, TF32 off.
- ``fast``: CUDA graphs + DINOv2 in bf16 autocast + TF32 elsewhere.
Published figures (shared/spec/parity.md, H100): 30.1 ms (1 object), 31.1 ms (6), 31.9 ms (16).

    python bench/perf.py --device cuda --out $OUT            # on the GPU machine
    python bench/perf.py --device cpu --quick --out /tmp/p   # CI short mode
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cleanpose_model.device import resolve_device
from cleanpose_model.parity import build_parity_net, load_vectors, queue_sample
from cleanpose_model.preprocess import GraphedInputBuilder, build_object_inputs_np

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT / "test" / "data" / "parity" / "cleanpose_parity_v1.npz"
PUBLISHED_H100_MS = {1: 30.1, 6: 31.1, 16: 31.9}
# Every runner mode: GraphedForward options. "fast*" modes differ in the DINOv2 autocast dtype (TF32 on
# elsewhere unless tf32=False); "*_compiled" add torch.compile (timed with --compile).
MODE_OPTIONS = {
    "exact": {"precision": "fp32"},
    "exact_compiled": {"precision": "fp32", "compile": True},
    "fast": {"precision": "fast"},
    "fast_compiled": {"precision": "fast", "compile": True},
    "fast_bf16": {"precision": "bf16"},
    "fast_fp16_all": {"precision": "fp16_all"},
    # Timed only when named with --only: what one option buys, measured against the default.
    "exact_unfolded": {"precision": "fp32", "fold": False},
    "fast_unfolded": {"precision": "fast", "fold": False},
    "fast_no_tf32": {"precision": "fast", "tf32": False},
    "fast_no_cudnn": {"precision": "fast", "fold": False, "cudnn": False},
    "exact_unfused": {"precision": "fp32", "fuse_attention": False},
    "fast_unfused": {"precision": "fast", "fuse_attention": False},
    "fast_autocast_dino": {"precision": "fast", "fuse_backbone": False},
}
DEFAULT_MODES = ("exact", "fast", "fast_bf16", "fast_fp16_all")
SECTIONS = ("forward", "accuracy", "memory", "preprocess")
COMPILED_MODES = ("exact_compiled", "fast_compiled")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, warmup: int, runs: int) -> list[float]:
    out = []
    for i in range(warmup + runs):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        if i >= warmup:
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def parity_inputs(n: int, dev: torch.device):
    """n objects built from the 4 parity objects (tiled, points jittered so objects differ)."""
    v = load_vectors(PARITY)
    reps = (n + 3) // 4
    g = torch.Generator().manual_seed(n)
    rgb = torch.from_numpy(v["rgb"]).repeat(reps, 1, 1, 1)[:n]
    pts = torch.from_numpy(v["pts"]).repeat(reps, 1, 1)[:n]
    pts = pts + 0.002 * torch.randn(pts.shape, generator=g)
    choose = torch.from_numpy(v["choose"]).repeat(reps, 1)[:n]
    cat = torch.from_numpy(v["category_label"]).repeat(reps)[:n]
    q = torch.from_numpy(queue_sample(v)).float()  # (B0, 12, 256) per parity object
    queue = q.repeat(reps, 1, 1)[:n]
    return [t.to(dev) for t in (rgb, pts, choose, cat, queue)]


def pose_errors(a: dict, b: dict) -> dict[str, np.ndarray]:
    ra, rb = a["pred_rotation"].double(), b["pred_rotation"].double()
    cos = ((ra.transpose(1, 2) @ rb).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    rot = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
    trans = (a["pred_translation"] - b["pred_translation"]).double().norm(dim=1) * 1e3
    size = (a["pred_size"] - b["pred_size"]).double().abs().amax(dim=1) * 1e3
    return {"rot_deg": rot.cpu().numpy(), "trans_mm": trans.cpu().numpy(), "size_mm": size.cpu().numpy()}


def summarize(errs: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    out = {}
    for k in ("rot_deg", "trans_mm", "size_mm"):
        x = np.concatenate([e[k] for e in errs])
        out[k] = {
            "p50": float(np.median(x)),
            "p95": float(np.percentile(x, 95)),
            "max": float(x.max()),
            "n": int(x.size),
        }
    return out


def bench_forward(net, dev, counts, warmup, runs, modes):
    from cleanpose_model.fast import GraphedForward

    rows = []
    runners = {m: GraphedForward(net, queue_entries=12, **MODE_OPTIONS[m]) for m in modes if m != "reference"}
    for n in counts:
        inputs = parity_inputs(n, dev)
        row = {"objects": n}
        with torch.inference_mode():
            for mode in modes:
                call = net if mode == "reference" else runners[mode]

                def fn(call=call, inputs=inputs):
                    rgb, pts, choose, cat, queue = inputs
                    return call(rgb, pts, choose, cat, queue_feats=queue)

                t = timed(fn, dev, warmup, runs)
                row[f"{mode}_ms"] = statistics.median(t)
                row[f"{mode}_min_ms"] = min(t)
        rows.append(row)
    return rows, runners


def accuracy(net, dev, runners, frames_npz: Path | None):
    """fast vs exact (and exact vs reference) pose differences on the parity inputs and synthetic frames."""
    res = {}
    sets = [("parity", [parity_inputs(n, dev) for n in (4, 6, 8)])]
    if frames_npz is not None and frames_npz.exists():
        f = np.load(frames_npz)
        v = load_vectors(PARITY)
        qs = torch.from_numpy(queue_sample(v)).float()
        batches = []
        for i in range(f["rgb"].shape[0]):
            objs = build_object_inputs_np(
                f["rgb"][i], f["depth_m"][i], f["K"], f["masks"][i], f["boxes"][i], f["categories"][i]
            )
            n = len(objs)
            queue = qs[torch.arange(n) % qs.shape[0]]
            batches.append(
                [torch.from_numpy(x).to(dev) for x in (objs.rgb, objs.pts, objs.choose, objs.category)]
                + [queue.to(dev)]
            )
        sets.append(("synthetic_frames", batches))
    with torch.inference_mode():
        for name, batches in sets:
            e_fast, e_exact = {}, []  # e_fast: every mode other than exact
            for rgb, pts, choose, cat, queue in batches:
                ref = net(rgb, pts, choose, cat, queue_feats=queue)
                if "exact" in runners:
                    e_exact.append(pose_errors(runners["exact"](rgb, pts, choose, cat, queue), ref))
                for m in [m for m in runners if m != "exact"]:
                    e_fast.setdefault(m, []).append(
                        pose_errors(runners[m](rgb, pts, choose, cat, queue), ref)
                    )
            res[name] = {"exact_vs_reference": summarize(e_exact) if e_exact else None}
            res[name].update({f"{m}_vs_reference": summarize(e) for m, e in e_fast.items()})
    return res


def bench_preprocess(frames_npz: Path, dev: torch.device, warmup: int, runs: int):
    f = np.load(frames_npz)
    rgb, depth, K, masks, boxes, cats = (
        f["rgb"][0],
        f["depth_m"][0],
        f["K"],
        f["masks"][0],
        f["boxes"][0],
        f["categories"][0],
    )
    out = {"image": list(rgb.shape[:2]), "objects": int(masks.shape[0])}
    t = timed(
        lambda: build_object_inputs_np(rgb, depth, K, masks, boxes, cats), torch.device("cpu"), warmup, runs
    )
    out["cpu_numpy_ms"] = statistics.median(t)
    out["cpu_threads"] = torch.get_num_threads()
    if dev.type == "cuda":
        # Frame already on the GPU (as after the node's upload); the host->device copy is timed separately.
        g = [torch.from_numpy(x).to(dev) for x in (rgb, depth, masks)]
        # The fixed-shape torch form, eager and with each device phase one CUDA graph replay (captured in the
        # warm-up, the node's path), from the same device tensors.
        eager = GraphedInputBuilder(dev, graphs=False)
        t = timed(lambda: eager(g[0], g[1], K, g[2], boxes, cats), dev, warmup, runs)
        out["gpu_eager_ms"] = statistics.median(t)
        builder = GraphedInputBuilder(dev)
        t = timed(lambda: builder(g[0], g[1], K, g[2], boxes, cats), dev, warmup, runs)
        out["gpu_graphed_ms"] = statistics.median(t)
        out["graphed_speedup_vs_eager"] = out["gpu_eager_ms"] / out["gpu_graphed_ms"]
        t = timed(
            lambda: [torch.from_numpy(x).to(dev, non_blocking=False) for x in (rgb, depth, masks)],
            dev,
            warmup,
            runs,
        )
        out["h2d_copy_ms"] = statistics.median(t)
    return out


def gpu_memory(counts, mode: str, overlap: bool = True) -> list[dict]:
    """GPU memory of an inference process as the node runs it (fresh process per count, so earlier
    benchmark allocations do not inflate the numbers): weights, CUDA graphs for the buckets up to
    the count, one forward."""
    import subprocess
    import sys

    rows = []
    for n in counts:
        cmd = [sys.executable, __file__, "--memory-probe", str(n), "--memory-mode", mode]
        cmd += [] if overlap else ["--memory-one-stream"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


def memory_probe(n: int, mode: str, overlap: bool = True) -> dict:
    from memory_breakdown import DeviceUsage

    from cleanpose_model.fast import GraphedForward

    # process_total_mb: device memory used now minus before this process initialised CUDA (what the
    # process adds); device_used_mb: NVML's figure for this process or, where a container hides pids,
    # the device's whole used memory (driver reservations included; the figure reported before).
    usage = DeviceUsage()
    dev = torch.device("cuda")
    net = build_parity_net("cleanpose", dev)
    if n == 0:  # baseline: CUDA context + weights, nothing run
        torch.cuda.synchronize(dev)
        return {
            "objects": 0,
            "precision": "baseline (weights only)",
            "peak_allocated_mb": torch.cuda.max_memory_allocated(dev) / 2**20,
            "reserved_mb": torch.cuda.memory_reserved(dev) / 2**20,
            "process_total_mb": usage.process_mb(),
            "device_used_mb": process_gpu_mb(),
        }
    runner = GraphedForward(net, queue_entries=80, overlap=overlap, **MODE_OPTIONS[mode])
    rgb, pts, choose, cat, _ = parity_inputs(n, dev)
    queue = torch.randn(n, 80, 256, device=dev)  # deterministic mode attends over the whole queue
    with torch.inference_mode():
        runner(rgb, pts, choose, cat, queue)
    torch.cuda.synchronize(dev)
    return {
        "objects": n,
        "precision": mode + ("" if overlap else " (one stream)"),
        "peak_allocated_mb": torch.cuda.max_memory_allocated(dev) / 2**20,
        "reserved_mb": torch.cuda.memory_reserved(dev) / 2**20,
        "process_total_mb": usage.process_mb(),
        "device_used_mb": process_gpu_mb(),
    }


def process_gpu_mb() -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
            if p.pid == os.getpid() and p.usedGpuMemory:
                return p.usedGpuMemory / 2**20
        # Containers often hide pids: fall back to the device's used memory (this process is alone on it).
        return pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20
    except Exception:
        return None


def cpu_inference(counts, runs):
    dev = torch.device("cpu")
    net = build_parity_net("cleanpose", dev)
    rows = []
    with torch.inference_mode():
        for n in counts:
            rgb, pts, choose, cat, queue = parity_inputs(n, dev)
            t = timed(lambda a=(rgb, pts, choose, cat), q=queue: net(*a, queue_feats=q), dev, 1, runs)
            rows.append(
                {
                    "objects": n,
                    "ms": statistics.median(t),
                    "ms_per_object": statistics.median(t) / n,
                    "threads": torch.get_num_threads(),
                }
            )
    return rows


def plot(rows, modes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    n = [r["objects"] for r in rows]
    for key in [f"{m}_ms" for m in modes]:
        ms = [r[key] for r in rows]
        ax[0].plot(n, ms, "o-", label=key[:-3])
        ax[1].plot(n, [m / k for m, k in zip(ms, n)], "o-", label=key[:-3])
    ax[0].set(xscale="log", xlabel="objects per frame", ylabel="ms per frame", title="forward time")
    ax[1].set(
        xscale="log",
        yscale="log",
        xlabel="objects per frame",
        ylabel="ms per object",
        title="cost per object",
    )
    for a in ax:
        a.grid(True, alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows, cols) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = []
        for c in cols:
            x = r.get(c)
            vals.append(f"{x:.2f}" if isinstance(x, float) else ("-" if x is None else str(x)))
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/bench/perf")))
    ap.add_argument("--frames", type=Path, default=ROOT / ".carry" / "perf_frames.npz")
    ap.add_argument("--quick", action="store_true", help="CI mode: few runs, 1-2 objects")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--cpu-inference", action="store_true", help="also time CPU-only inference")
    ap.add_argument(
        "--compile", action="store_true", help="also measure torch.compile + graphs (fast_compiled)"
    )
    ap.add_argument(
        "--only",
        nargs="+",
        choices=sorted(MODE_OPTIONS),
        help="keep only these modes (reference is always timed), e.g. exact fast",
    )
    ap.add_argument("--objects", type=int, nargs="+", help="object counts to time (default 1 2 4 6 8 16 32)")
    ap.add_argument("--skip", nargs="*", default=[], choices=list(SECTIONS[1:]))
    ap.add_argument(
        "--sections",
        nargs="+",
        default=list(SECTIONS),
        choices=list(SECTIONS),
        help="parts to run (accuracy and memory need forward), e.g. --sections preprocess",
    )
    ap.add_argument("--memory-probe", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--memory-mode", default="fast", choices=sorted(MODE_OPTIONS), help=argparse.SUPPRESS)
    ap.add_argument("--memory-one-stream", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_probe is not None:
        probe = memory_probe(args.memory_probe, args.memory_mode, not args.memory_one_stream)
        print(json.dumps(probe))
        return 0
    dev = resolve_device(args.device).device
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.quick:
        args.runs, args.warmup = 2, 1
    counts = args.objects or ([1, 2] if args.quick else [1, 2, 4, 6, 8, 16, 32])
    report: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "published_h100_ms": PUBLISHED_H100_MS,
    }

    sections = set(args.sections) - set(args.skip)
    net, runners = None, {}
    if "forward" in sections:
        net = build_parity_net("cleanpose", dev)
        modes = ["reference"]
        if dev.type == "cuda":
            if args.only:
                modes += [m for m in MODE_OPTIONS if m in args.only]
            else:
                modes += [
                    m for m in MODE_OPTIONS if m in DEFAULT_MODES or (args.compile and m in COMPILED_MODES)
                ]
        rows, runners = bench_forward(net, dev, counts, args.warmup, args.runs, modes)
        for r in rows:
            for m in modes[1:]:
                r[f"{m}_speedup_vs_reference"] = r["reference_ms"] / r[f"{m}_ms"]
            if r["objects"] in PUBLISHED_H100_MS:
                r["published_h100_ms"] = PUBLISHED_H100_MS[r["objects"]]
                for m in modes:
                    r[f"{m}_speedup_vs_published"] = PUBLISHED_H100_MS[r["objects"]] / r[f"{m}_ms"]
        report["forward"] = rows
        print(
            f"## Forward time, CleanPose NOCS, {report['device']} "
            f"(median of {args.runs} after {args.warmup})\n"
        )
        print(
            table(
                rows,
                ["objects"]
                + [f"{m}_ms" for m in modes]
                + [f"{m}_speedup_vs_reference" for m in modes[1:]]
                + ["published_h100_ms"]
                + [f"{m}_speedup_vs_published" for m in modes],
            )
        )
        plot(rows, modes, args.out / "perf_scaling.png")

    if runners and "accuracy" in sections:
        report["accuracy"] = accuracy(net, dev, runners, args.frames)
        print("\n## Pose difference to the fp32 reference (deg / mm / mm)\n")
        for name, d in report["accuracy"].items():
            for k, s in d.items():
                if s:
                    print(
                        f"- {name} {k}: "
                        + ", ".join(
                            f"{m} p50 {s[m]['p50']:.4f} p95 {s[m]['p95']:.4f} max {s[m]['max']:.4f}"
                            for m in ("rot_deg", "trans_mm", "size_mm")
                        )
                        + f" (n={s['rot_deg']['n']})"
                    )
    if runners and "memory" in sections:
        report["gpu_memory"] = (
            gpu_memory([0, 1, 6, 20], "fast")
            + gpu_memory([6], "fast", overlap=False)
            + gpu_memory([6], "fast_unfolded")
            + gpu_memory([6], "exact")
        )
        print("\n## GPU memory (MB)\n")
        print(table(report["gpu_memory"], list(report["gpu_memory"][0])))

    if args.frames.exists() and "preprocess" in sections:
        report["preprocess"] = bench_preprocess(args.frames, dev, args.warmup, args.runs)
        print("\n## Per-object input construction, 640x480, 6 masks (ms)\n")
        print(table([report["preprocess"]], list(report["preprocess"])))
    elif "preprocess" in sections:
        print(f"\n(no {args.frames}: preprocessing timing skipped; make it with bench/make_perf_frames.py)")

    if args.cpu_inference:
        report["cpu_inference"] = cpu_inference([1, 6] if not args.quick else [1], 3 if not args.quick else 1)
        print("\n## CPU-only inference (reference fp32)\n")
        print(table(report["cpu_inference"], list(report["cpu_inference"][0])))

    (args.out / "perf.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out / 'perf.json'}" + (f" and {args.out / 'perf_scaling.png'}" if net else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
