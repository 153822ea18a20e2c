"""Furthest point sampling kernel: time per sampled point for each PointNet++ level's cloud size and
launch width (Triton num_warps), against the torch reference loop. Each call is captured in a CUDA
graph and replayed, so launch overhead is excluded: what is left is the serial chain of argmax
steps that sits on the forward's critical path. Every width must pick the same points.

    python bench/fps_kernel.py [--batch 1 6] [--warps 1 2 4 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from cleanpose_model.ops.pointnet2 import fps_tie_rank
from cleanpose_model.ops.pointnet2_triton import HAVE_TRITON, fps_triton

# (points in, centres out) of the CleanPose PointNet++ levels.
LEVELS = ((1024, 512), (512, 256), (256, 128), (128, 64))


def graph_time_ms(fn, reps: int = 20, runs: int = 15) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / reps)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 6])
    ap.add_argument("--warps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--out", type=Path, default=Path("outputs/fps_kernel"))
    args = ap.parse_args(argv)
    if not (torch.cuda.is_available() and HAVE_TRITON):
        print("fps_kernel: needs CUDA and Triton; nothing measured")
        return 0
    dev = torch.device("cuda")
    rows = []
    for bsz in args.batch:
        for n, npoint in LEVELS:
            pts = (torch.rand(bsz, n, 3, device=dev) - 0.5) * 0.3
            rank = fps_tie_rank(n, dev)
            ref = fps_triton(pts, rank, npoint)[0]
            row = {"batch": bsz, "points": n, "centres": npoint}
            for w in args.warps:
                same = torch.equal(fps_triton(pts, rank, npoint, num_warps=w)[0], ref)
                ms = graph_time_ms(lambda w=w, p=pts, r=rank, k=npoint: fps_triton(p, r, k, num_warps=w))
                row[f"warps{w}_us_per_step"] = ms * 1e3 / npoint
                row[f"warps{w}_same"] = same
            rows.append(row)
    cols = list(rows[0])
    print(f"## FPS kernel, {torch.cuda.get_device_name(dev)} (CUDA-graph replay, µs per sampled point)\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(dev), "rows": rows}
    (args.out / "fps_kernel.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
