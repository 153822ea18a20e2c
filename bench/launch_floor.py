"""Launch floor of the graphed forward: what one dependent kernel costs inside a CUDA graph, and how many
kernels each part of the fast forward runs.

At 1-6 objects the forward's stages are chains of small dependent kernels, so a stage cannot take less than
(its kernel count) x (the per-kernel cost of a dependent chain in a graph replay), whatever each kernel does.
This script measures both factors on the GPU it runs on:
- chains of N dependent kernels captured in one graph: a 1-element add (the bare launch cost) and a
  96 x 256 x 256 linear layer (the typical head kernel), per-kernel time = replay time / N;
- kernels per stage of the fast forward (torch.profiler over one eager pass of each stage, which launches
  what its graph replays): DINOv2, PointNet++, and the head (everything after the two backbones).
Prints a table and writes launch_floor.json. On the CPU (CI's short mode, --quick) it counts the ATen
operators per stage instead, which are what become kernels on CUDA.

    python bench/launch_floor.py --objects 1 6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stage_times import make_inputs, time_fn  # noqa: E402

from cleanpose_model.device import resolve_device  # noqa: E402
from cleanpose_model.fast import GraphedForward, _AutocastBackbone  # noqa: E402
from cleanpose_model.net import centre_points  # noqa: E402
from cleanpose_model.nn.fused_attention import fuse_for_inference  # noqa: E402
from cleanpose_model.nn.pointwise import fold_for_inference  # noqa: E402
from cleanpose_model.parity import build_parity_net  # noqa: E402

# make_inputs order, as the runner names its inputs
INPUT_NAMES = ("rgb", "pts", "choose", "category", "queue_feats")


def chain_ms_per_kernel(step, n: int, runs: int, dev: torch.device) -> float:
    """ms per step of n dependent ``step()`` calls replayed from one CUDA graph."""

    def chain():
        for _ in range(n):
            step()

    return time_fn(chain, dev, runs) / n


def count_kernels(fn, dev: torch.device) -> int:
    """CUDA kernels (and copies) one call of ``fn`` launches; on the CPU, the ATen operators it runs."""
    from torch.profiler import ProfilerActivity, profile

    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize(dev)
    if cuda:
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    # top-level operators only (an operator's own sub-calls are not separate launches)
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)


def stage_counts(n: int, fnet, runner, dev: torch.device) -> dict:
    """Kernels (CPU: operators) per stage of the fast forward for n objects."""
    cuda = dev.type == "cuda"
    old = torch.backends.cuda.matmul.allow_tf32
    inputs = dict(zip(INPUT_NAMES, make_inputs(n, dev), strict=True))

    def backbone(x):
        if not cuda:
            return fnet.rgb_extractor(x)
        return runner._rgb_fn(x)

    def head():
        return fnet(
            inputs["rgb"],
            inputs["pts"],
            inputs["choose"],
            inputs["category"],
            queue_feats=inputs["queue_feats"],
            tokens=tokens,
            pts_local=pts_local,
        )

    with torch.inference_mode():
        torch.backends.cuda.matmul.allow_tf32 = cuda
        try:
            pts_c = centre_points(inputs["pts"])[0]
            tokens = backbone(inputs["rgb"])
            pts_local = fnet.pts_extractor(pts_c)
            head()  # Triton compilation outside the counts
            row = {
                "objects": n,
                "kernels_dinov2": count_kernels(lambda: backbone(inputs["rgb"]), dev),
                "kernels_pointnet2": count_kernels(lambda: fnet.pts_extractor(pts_c), dev),
                "kernels_head": count_kernels(head, dev),
            }
            if cuda:  # the published ViT under autocast, as the fast mode ran it before nn/fused_dinov2.py
                auto = _AutocastBackbone(fnet.rgb_extractor, torch.float16)
                auto(inputs["rgb"])
                row["kernels_dinov2_autocast"] = count_kernels(lambda: auto(inputs["rgb"]), dev)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 6])
    ap.add_argument("--chain", type=int, default=400)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="CI: 1 object")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/bench/launch_floor")))
    args = ap.parse_args(argv)
    dev = resolve_device(args.device).device
    if args.quick:
        args.objects = [1]
    cuda = dev.type == "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu", "torch": torch.__version__}
    old = torch.backends.cuda.matmul.allow_tf32
    if cuda:
        x = torch.zeros(1, device=dev)
        h = torch.randn(96, 256, device=dev)
        w = torch.randn(256, 256, device=dev) * 0.06
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            report["us_per_kernel_add1"] = 1e3 * chain_ms_per_kernel(
                lambda: x.add_(1.0), args.chain, args.runs, dev
            )
            # h.copy_ makes each linear depend on the previous one: two kernels per step
            per_step = chain_ms_per_kernel(lambda: h.copy_(F.linear(h, w)), args.chain // 2, args.runs, dev)
            report["us_per_kernel_linear_96x256x256_tf32"] = 1e3 * per_step / 2
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    net = build_parity_net("cleanpose", dev)
    fnet = fuse_for_inference(fold_for_inference(net.eval()))
    runner = GraphedForward(net, precision="fast", queue_entries=80) if cuda else None
    rows = []
    for n in args.objects:
        row = stage_counts(n, fnet, runner, dev)
        if cuda:
            # the whole forward as the runner captures it (both backbones on their streams, then the rest)
            feed = dict(zip(INPUT_NAMES, make_inputs(n, dev), strict=True))
            with torch.inference_mode():
                row["graph_replay_ms"] = time_fn(lambda f=feed: runner._run(f), dev, args.runs)
            # The head runs after both backbones as one dependent chain (the front-door branches aside).
            row["head_floor_ms_add1"] = row["kernels_head"] * report["us_per_kernel_add1"] / 1e3
            row["head_floor_ms_linear"] = (
                row["kernels_head"] * report["us_per_kernel_linear_96x256x256_tf32"] / 1e3
            )
        rows.append(row)
    report["rows"] = rows
    print(f"## Launch floor ({report['device']}; {'CUDA kernels' if cuda else 'ATen operators'} per stage)\n")
    for k in ("us_per_kernel_add1", "us_per_kernel_linear_96x256x256_tf32"):
        if k in report:
            print(f"- {k}: {report[k]:.2f}")
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    (args.out / "launch_floor.json").write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out / 'launch_floor.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
