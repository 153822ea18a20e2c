"""PointNet++ feature work, published (folded) torch path vs the Triton kernels (nn/fused_pointnet2.py).

For every SA level (``aggregate``: grouping + 3-layer MLP + max-pool, both radii) and every FP level
(interpolation + concatenation + MLP), on the real intermediates of the parity network, in the fast
mode (TF32 products): the CUDA-graph replay time of the torch path and of the kernels with their
default launch shape, a sweep of launch shapes (rows per program, warps; FP fused vs split), and the
kernels' relative error against the exact fp32 torch path. Then the whole feature pass (every level
given the geometry) and the whole PointNet2MSG forward, torch vs fused.

    python bench/sa_kernels.py --objects 1 6 --out $OUT          # GPU machine
    python bench/sa_kernels.py --quick --out /tmp/sa             # CPU smoke run (no kernels: torch twice)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stage_times import make_inputs, time_fn  # noqa: E402

from cleanpose_model.device import resolve_device  # noqa: E402
from cleanpose_model.fast import _tf32  # noqa: E402
from cleanpose_model.net import centre_points  # noqa: E402
from cleanpose_model.nn.fused_pointnet2 import fuse_pointnet2  # noqa: E402
from cleanpose_model.nn.pointwise import fold_for_inference  # noqa: E402
from cleanpose_model.ops import sa_triton  # noqa: E402
from cleanpose_model.parity import build_parity_net  # noqa: E402

# Launch shapes tried per level (rows, warps, pipeline stages); 128 rows with 4 warps spills at SA2/SA3.
SA_SWEEP = [
    sa_triton.Launch(r, w, st) for r, w in ((32, 4), (32, 8), (64, 4), (64, 8), (128, 8)) for st in (1, 2)
]
FP_SWEEP = [
    (mode, sa_triton.Launch(r, w, st))
    for mode in ("fused", "split")
    for r in (16, 32, 64)
    for w in (4, 8)
    for st in (1, 2)
]


def chains(pn, fused, xyz: torch.Tensor):
    """Per-level inputs: the torch chain's features (exact fp32 and TF32) and the fused chain's."""
    geo = pn.geometry(xyz)
    l_xyz, groups, interp = geo["xyz"], geo["groups"], geo["interp"]

    def run(model, tf32: bool):
        with _tf32(tf32):
            sa_in, fp_in = [], []
            feats = [None]
            for lvl, sa in enumerate(model.SA_modules):
                sa_in.append(feats[-1])
                feats.append(sa.aggregate(l_xyz[lvl], l_xyz[lvl + 1], groups[lvl], feats[-1]))
            sa_out = list(feats[1:])
            fp_out = [None] * len(model.FP_modules)
            for i in range(len(model.FP_modules) - 1, -1, -1):
                fp_in.append((i, feats[i], feats[i + 1]))
                feats[i] = model.FP_modules[i](l_xyz[i], l_xyz[i + 1], feats[i], feats[i + 1], interp[i])
                fp_out[i] = feats[i]
        return sa_in, sa_out, {i: (s, k) for i, s, k in fp_in}, fp_out

    return geo, run(pn, False), run(pn, True), run(fused, True)


def features(model, geo):
    """Every level's feature work given the geometry (PointNet2MSG.forward less geometry())."""
    l_xyz, groups, interp = geo["xyz"], geo["groups"], geo["interp"]
    feats = [None]
    for lvl, sa in enumerate(model.SA_modules):
        feats.append(sa.aggregate(l_xyz[lvl], l_xyz[lvl + 1], groups[lvl], feats[-1]))
    for i in range(len(model.FP_modules) - 1, -1, -1):
        feats[i] = model.FP_modules[i](l_xyz[i], l_xyz[i + 1], feats[i], feats[i + 1], interp[i])
    return feats[0]


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def timed(fn, dev, runs) -> float | str:
    try:
        return time_fn(fn, dev, runs)
    except Exception as exc:  # a launch shape that does not compile (e.g. out of shared memory)
        return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 6])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--no-sweep", action="store_true", help="only the default launch shapes")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/bench/sa_kernels")))
    args = ap.parse_args(argv)
    dev = resolve_device(args.device).device
    if args.quick:
        args.runs, args.objects, args.no_sweep = 1, [1], True
    args.out.mkdir(parents=True, exist_ok=True)
    net = fold_for_inference(build_parity_net("cleanpose", dev))
    pn = net.pts_extractor
    fused = fuse_pointnet2(pn)
    res: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "rows": []}

    def record(**row):
        res["rows"].append(row)
        return row

    summary = []
    for n in args.objects:
        xyz = centre_points(make_inputs(n, dev)[1])[0]
        with torch.inference_mode():
            geo, exact, torch_tf32, kern = chains(pn, fused, xyz)
            l_xyz, groups, interp = geo["xyz"], geo["groups"], geo["interp"]
            with _tf32(True):
                for lvl, (sa, fsa) in enumerate(zip(pn.SA_modules, fused.SA_modules, strict=True)):
                    args_t = (l_xyz[lvl], l_xyz[lvl + 1], groups[lvl], torch_tf32[0][lvl])
                    args_k = (l_xyz[lvl], l_xyz[lvl + 1], groups[lvl], kern[0][lvl])
                    t_ms = timed(lambda sa=sa, a=args_t: sa.aggregate(*a), dev, args.runs)
                    k_ms = timed(lambda s=fsa, a=args_k: s.aggregate(*a), dev, args.runs)
                    err = rel_err(kern[1][lvl], exact[1][lvl])
                    summary.append(
                        record(objects=n, stage=f"sa{lvl}", torch_ms=t_ms, fused_ms=k_ms, rel_err=err)
                    )
                    for launch in [] if args.no_sweep else SA_SWEEP:
                        if launch.rows < max(g.shape[2] for g in groups[lvl]):
                            continue
                        fsa.launch = launch
                        ms = timed(lambda s=fsa, a=args_k: s.aggregate(*a), dev, args.runs)
                        record(objects=n, stage=f"sa{lvl}", **launch._asdict(), ms=ms)
                    fsa.launch = None
                for i, (fp, ffp) in enumerate(zip(pn.FP_modules, fused.FP_modules, strict=True)):
                    skip_t, known_t = torch_tf32[2][i]
                    skip_k, known_k = kern[2][i]
                    a_t = (l_xyz[i], l_xyz[i + 1], skip_t, known_t, interp[i])
                    a_k = (l_xyz[i], l_xyz[i + 1], skip_k, known_k, interp[i])
                    t_ms = timed(lambda m=fp, a=a_t: m(*a), dev, args.runs)
                    k_ms = timed(lambda m=ffp, a=a_k: m(*a), dev, args.runs)
                    err = rel_err(kern[3][i], exact[3][i])
                    mode = ffp.mode or getattr(ffp, "_default_mode", None)
                    summary.append(
                        record(
                            objects=n, stage=f"fp{i}", torch_ms=t_ms, fused_ms=k_ms, rel_err=err, mode=mode
                        )
                    )
                    for mode, launch in [] if args.no_sweep else FP_SWEEP:
                        c1 = ffp.k_w1t.shape[1]
                        if mode == "fused" and (
                            c1 > sa_triton.FP_MAX_FUSED_HIDDEN or c1 * launch.rows > 8192
                        ):
                            continue  # (64 rows x 256 channels spills)
                        ffp.mode, ffp.launch = mode, launch
                        ms = timed(lambda m=ffp, a=a_k: m(*a), dev, args.runs)
                        record(objects=n, stage=f"fp{i}", mode=mode, **launch._asdict(), ms=ms)
                    ffp.mode = ffp.launch = None

                for stage, fn_t, fn_k in (
                    ("features", lambda g=geo: features(pn, g), lambda g=geo: features(fused, g)),
                    ("pointnet2_total", lambda x=xyz: pn(x), lambda x=xyz: fused(x)),
                ):
                    t_ms, k_ms = timed(fn_t, dev, args.runs), timed(fn_k, dev, args.runs)
                    err = rel_err(kern[3][0], exact[3][0]) if stage == "features" else None
                    summary.append(record(objects=n, stage=stage, torch_ms=t_ms, fused_ms=k_ms, rel_err=err))

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [
        "| stage | objects | torch ms | fused ms | best sweep (mode/rows/warps/stages) | rel err vs fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary:
        sweep = [
            r
            for r in res["rows"]
            if r["stage"] == row["stage"] and r["objects"] == row["objects"] and "ms" in r
        ]
        ok = [r for r in sweep if isinstance(r["ms"], float)]
        best = min(ok, key=lambda r: r["ms"]) if ok else None
        best_s = "-"
        if best:
            keys = ("mode", "rows", "num_warps", "num_stages")
            shape = "/".join(str(best[k]) for k in keys if k in best)
            best_s = f"{best['ms']:.3f} ({shape})"
        stage = row["stage"] + (f" [{row['mode']}]" if row.get("mode") else "")
        err = f"{row['rel_err']:.1e}" if row.get("rel_err") is not None else "-"
        times = f"{fmt(row['torch_ms'])} | {fmt(row['fused_ms'])}"
        lines.append(f"| {stage} | {row['objects']} | {times} | {best_s} | {err} |")
    table = "\n".join(lines)
    print(
        f"## PointNet++ kernels ({res['device']}, CUDA-graph replay median of {args.runs}, TF32)\n\n{table}"
    )
    errors = [r for r in res["rows"] if any(isinstance(v, str) and v.startswith("error") for v in r.values())]
    for r in errors:
        print("sweep point failed:", r)
    (args.out / "sa_kernels.json").write_text(json.dumps(res, indent=2))
    (args.out / "sa_kernels.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
