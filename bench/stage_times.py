"""Where the forward's GPU time goes, stage by stage, without launch overhead.

Each stage of the eval forward (DINOv2, RGB feature gather, each PointNet++ level and its FPS /
ball query, FP levels, IAKD, GAFA, front-door encoder, NOCS head, pose head) is captured alone in
a CUDA graph on the real intermediate tensors and replayed; the median replay time is the stage's
pure GPU time. Also shows the sum against the whole graphed forward, per precision.

    python bench/stage_times.py --objects 1 6 --out $OUT      # GPU machine
    python bench/stage_times.py --quick --out /tmp/st         # CPU smoke run (eager timing)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from cleanpose_model.device import resolve_device
from cleanpose_model.fast import GraphedForward, _tf32
from cleanpose_model.net import centre_points
from cleanpose_model.nn.attention import ATTENTION_IMPLS, set_attention_impl
from cleanpose_model.nn.fused_attention import fuse_for_inference
from cleanpose_model.nn.fused_dinov2 import FastDinoV2
from cleanpose_model.nn.pointwise import fold_for_inference
from cleanpose_model.ops import pointnet2 as P
from cleanpose_model.parity import build_parity_net

PRECISIONS = {"fp32": (None, False), "fast": (torch.float16, True)}


def make_inputs(n: int, dev: torch.device):
    g = torch.Generator().manual_seed(n)
    rgb = torch.randn(n, 3, 224, 224, generator=g).to(dev)
    pts = (torch.rand(n, 1024, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])).to(dev)
    choose = torch.randint(0, 224 * 224, (n, 1024), generator=g).to(dev)
    cat = (torch.arange(n) % 6).to(dev)
    queue = torch.randn(n, 80, 256, generator=g).to(dev)
    return rgb, pts, choose, cat, queue


def time_fn(fn, dev: torch.device, runs: int) -> float:
    """Median ms of fn: CUDA-graph replays on a GPU, plain calls on the CPU."""
    if dev.type != "cuda":
        fn()
        t = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            t.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(t)
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(3):
        graph.replay()
    t = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(runs):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        t.append(start.elapsed_time(end))
    return statistics.median(t)


def stages(net, inputs, autocast_dtype):
    """(name, zero-arg callable) per stage, each fed with the real upstream intermediates."""
    rgb, pts, choose, cat, queue = inputs
    dev = pts.device

    def dino_ctx():
        if autocast_dtype is None:
            return nullcontext()
        return torch.autocast(dev.type, dtype=autocast_dtype)

    def dino():
        with dino_ctx():
            return net.rgb_extractor(rgb).float()

    tokens = dino()
    pts_c = centre_points(pts)[0]
    out = [("dinov2", dino)]
    if autocast_dtype is not None:
        # the fast mode's backbone (nn/fused_dinov2.py): same function, weights cast once, fused norms
        fused_dino = FastDinoV2(net.rgb_extractor, autocast_dtype)
        out.append(("dinov2_fused", lambda: fused_dino(rgb)))
    out.append(("rgb_features", lambda: net.rgb_features(tokens[:, 1:], choose)))

    pn = net.pts_extractor
    xyz, feat = [pts_c], [None]
    for i, sa in enumerate(pn.SA_modules):
        x, f = xyz[-1], feat[-1]
        out.append((f"sa{i}.fps", lambda sa=sa, x=x: P.furthest_point_sample(x, sa.npoint)))
        idx = P.furthest_point_sample(x, sa.npoint)
        new = P.gather_points(x, idx)

        def bq(sa=sa, new=new, x=x):
            return P.ball_query_multi(new, x, sa.radii, sa.nsamples)

        out.append((f"sa{i}.ball_query", bq))
        out.append((f"sa{i}.total", lambda sa=sa, x=x, f=f: sa(x, f)))
        nx, nf = sa(x, f)
        xyz.append(nx)
        feat.append(nf)

    def fp_all():
        lf = list(feat)
        for i in range(len(pn.FP_modules) - 1, -1, -1):
            lf[i] = pn.FP_modules[i](xyz[i], xyz[i + 1], lf[i], lf[i + 1])
        return lf[0]

    out.append(("fp_levels", fp_all))
    out.append(("pointnet2_geometry", lambda: pn.geometry(pts_c)))
    out.append(("pointnet2_total", lambda: pn(pts_c)))
    pts_local = fp_all()
    rgb_local = net.rgb_features(tokens[:, 1:], choose)
    feats = torch.cat([pts_local, rgb_local], dim=1)
    out.append(("iakd", lambda: net.IAKD(feats, pts_c)))
    kp = net.IAKD(feats, pts_c)
    ft = feats.transpose(1, 2)
    out.append(("gafa", lambda: net.GAFA(kp["kpt_feature"], kp["kpt_3d"], ft, pts_c)))
    kf = net.GAFA(kp["kpt_feature"], kp["kpt_3d"], ft, pts_c)
    if getattr(net, "FD_Encoder", None) is not None:
        out.append(("front_door", lambda: net.FD_Encoder(kf, queue)))
        kf = net.FD_Encoder(kf, queue)
    out.append(("nocs_head", lambda: net.nocs_predictor(kf, cat)))
    nocs = net.nocs_predictor(kf, cat)
    out.append(("pose_head", lambda: net.estimator(kp["kpt_3d"], nocs, kf)))
    # Whole forward, one stream (backbone under autocast in the fast precision).
    out.append(("forward_serial", lambda: net(rgb, pts, choose, cat, queue_feats=queue, tokens=dino())))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 6])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--attention", nargs="+", default=list(ATTENTION_IMPLS), choices=ATTENTION_IMPLS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--unfolded", action="store_true", help="time the published conv + BN layers, not the folded products"
    )
    ap.add_argument(
        "--unfused", action="store_true", help="time the transformer layers as published (no fused attention)"
    )
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/bench/stages")))
    args = ap.parse_args(argv)
    dev = resolve_device(args.device).device
    if args.quick:
        args.runs, args.objects = 1, [1]
    args.out.mkdir(parents=True, exist_ok=True)
    net = build_parity_net("cleanpose", dev)
    if not args.unfolded:  # as the runners execute it (nn/pointwise.py)
        net = fold_for_inference(net)
    if not args.unfused:  # the transformer layers' inference forms (nn/fused_attention.py), as the runners
        net = fuse_for_inference(net)
    base = PRECISIONS if dev.type == "cuda" else {"fp32": (None, False)}
    # Column = precision/attention implementation.
    precisions = {f"{p}/{a}": (v, a) for p, v in base.items() for a in args.attention}
    results: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "rows": []}
    names: list[str] = []
    for n in args.objects:
        inputs = make_inputs(n, dev)
        for prec, ((dtype, tf32), attn) in precisions.items():
            set_attention_impl(net, attn)
            with torch.inference_mode(), _tf32(tf32):
                named = stages(net, inputs, dtype)
                if dev.type == "cuda":
                    # As the node runs it: PointNet++ on a side stream concurrently with DINOv2.
                    runner = GraphedForward(net, precision=prec.split("/")[0], queue_entries=80)
                    feed = dict(zip(("rgb", "pts", "choose", "category", "queue_feats"), inputs, strict=True))
                    named.append(("forward_two_streams", lambda r=runner, f=feed: r._run(f)))
                    if dtype is not None:  # the backbone under autocast, as before nn/fused_dinov2.py
                        auto = GraphedForward(
                            net, precision=prec.split("/")[0], queue_entries=80, fuse_backbone=False
                        )
                        named.append(("forward_two_streams_autocast_dino", lambda r=auto, f=feed: r._run(f)))
                for name, fn in named:
                    ms = time_fn(fn, dev, args.runs)
                    results["rows"].append({"objects": n, "precision": prec, "stage": name, "ms": ms})
                    if name not in names:
                        names.append(name)
    cols = [(n, p) for n in args.objects for p in precisions]
    lines = [
        "| stage | " + " | ".join(f"{p} {n} obj ms" for n, p in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name in names:
        vals = []
        for n, p in cols:
            r = [
                x["ms"] for x in results["rows"] if (x["objects"], x["precision"], x["stage"]) == (n, p, name)
            ]
            vals.append(f"{r[0]:.3f}" if r else "-")
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    table = "\n".join(lines)
    print(f"## Stage times ({results['device']}, CUDA-graph replay median of {args.runs})\n\n{table}")
    (args.out / "stage_times.json").write_text(json.dumps(results, indent=2))
    (args.out / "stage_times.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
