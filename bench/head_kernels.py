"""The head's fast-mode kernels against the torch code they replace (TF32): the transformer blocks'
residual steps (ops/linear_ln_triton.py), the layers with them on and off, and the IAKD / NOCS tails
(ops/head_tails_triton.py).

- steps: a chain of dependent residual steps (the output and its LayerNorm feed the next step) replayed
  from one CUDA graph, time per step: the torch chain (product, add, LayerNorm; for the FFN step also
  the first product with its ReLU) against the kernel in each launch configuration (row block, inner
  block, warps, pipeline stages), with each configuration's max error against a float64 reference;
- layers: the inference forms of the stacks (IAKD's 4 cross blocks over 1024 point features, the
  front-door's 4 cross blocks over 80 queue entries, 2 self blocks) with the fused steps on and off:
  graph replay time and CUDA kernels per call;
- tails: the IAKD heatmap tail (96 keypoints over 1024 points), the NOCS bin expectation and the
  front-door gate, torch against the kernel in a few launch configurations (graph replay of one call,
  with max error).

    python bench/head_kernels.py --objects 1 6 --out $OUT
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launch_floor import count_kernels  # noqa: E402
from stage_times import time_fn  # noqa: E402

from cleanpose_model.fast import _tf32  # noqa: E402
from cleanpose_model.nn import fused_attention as FA  # noqa: E402
from cleanpose_model.nn.attention import AttnLayer, SelfAttnLayer  # noqa: E402
from cleanpose_model.ops import head_tails_triton as T  # noqa: E402
from cleanpose_model.ops import linear_ln_triton as L  # noqa: E402

C = 256
KEYPOINTS = 96
# (row block, inner block, warps, stages) tried for the kernel
CONFIGS = list(itertools.product((16, 32, 64), (32, 64), (4, 8), (2, 3)))


def _torch_step(w, b, norm, first):
    def step(x, r):
        if first is not None:
            x = FA._linear(x, first[0], first[1], relu=True)
        y = r + F.linear(x, w, b)
        return y, F.layer_norm(y, (C,), *norm)

    return step


def _kernel_step(w, b, norm, first):
    return lambda x, r: L.residual_linear_ln_triton(x, w, b, r, norm, first)


def _chain_ms(step, x0, r0, steps: int, dev, runs: int) -> float:
    def run():
        x, r = x0, r0
        for _ in range(steps):
            r, x = step(x, r)

    return time_fn(run, dev, runs) / steps


def _set_config(block_m, block, warps, stages) -> None:
    L.BLOCK_M, L.BLOCK_K, L.BLOCK_F, L.NUM_WARPS, L.NUM_STAGES = block_m, block, block, warps, stages


def steps_table(objects, dev, runs: int, steps: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(C, C, generator=g) * C**-0.5, torch.randn(C, generator=g) * 0.1
    w1, b1 = torch.randn(C, C, generator=g) * C**-0.5, torch.randn(C, generator=g) * 0.1
    norm_cpu = (1 + 0.1 * torch.randn(C, generator=g), 0.1 * torch.randn(C, generator=g))
    w, b, w1, b1, gam, bet = (t.to(dev) for t in (w, b, w1, b1, *norm_cpu))
    norm = (gam, bet, 1e-5)
    defaults = (L.BLOCK_M, L.BLOCK_K, L.BLOCK_F, L.NUM_WARPS, L.NUM_STAGES)
    configs = CONFIGS
    rows = []
    for n, kind in itertools.product(objects, ("out_proj", "ffn")):
        m = n * KEYPOINTS
        x0 = torch.randn(n, KEYPOINTS, C, generator=g).to(dev)
        r0 = torch.randn(n, KEYPOINTS, C, generator=g).to(dev)
        first = (w1, b1) if kind == "ffn" else None
        d = [t.double() for t in (x0, w, b, r0)]
        first64 = (w1.double(), b1.double()) if first is not None else None
        _, ref = L.residual_linear_ln_torch(*d, (gam.double(), bet.double(), 1e-5), first64)
        base = {"objects": n, "rows": m, "step": kind}
        ms = _chain_ms(_torch_step(w, b, norm, first), x0, r0, steps, dev, runs)
        rows.append({**base, "impl": "torch", "us": 1e3 * ms})
        for cfg in configs:
            _set_config(*cfg)
            name = "kernel m{} k{} w{} s{}".format(*cfg)
            try:
                _, h = L.residual_linear_ln_triton(x0, w, b, r0, norm, first)
                err = (h.double() - ref).abs().max().item()
                ms = _chain_ms(_kernel_step(w, b, norm, first), x0, r0, steps, dev, runs)
                rows.append({**base, "impl": name, "us": 1e3 * ms, "max_err": err})
            except Exception as e:  # a configuration that does not compile (shared memory) is reported
                rows.append({**base, "impl": name, "us": None, "error": f"{type(e).__name__}: {e}"[:200]})
        L.BLOCK_M, L.BLOCK_K, L.BLOCK_F, L.NUM_WARPS, L.NUM_STAGES = defaults
    return rows


def layers_table(objects, dev, runs: int) -> list[dict]:
    torch.manual_seed(0)
    cross = FA.FusedAttnLayer(AttnLayer(4, C, 4, C).to(dev).eval())
    selfl = FA.FusedSelfAttnLayer(SelfAttnLayer(2, C, 4, C).to(dev).eval())
    orig = FA.ROW_KERNELS
    rows = []
    for n in objects:
        q = torch.randn(n, KEYPOINTS, C, device=dev)
        cases = {
            "cross x4 over 1024 (IAKD)": (cross, (q, torch.randn(n, 1024, C, device=dev))),
            "cross x4 over 80 (front door)": (cross, (q, torch.randn(n, 80, C, device=dev))),
            "self x2 (NOCS, front door)": (selfl, (q,)),
        }
        for name, (layer, args) in cases.items():
            row = {"objects": n, "layer": name}
            for fused in (False, True):
                FA.ROW_KERNELS = fused  # off by default (measured here); forced either way
                try:
                    key = "fused" if fused else "unfused"
                    row[f"{key}_ms"] = time_fn(lambda layer=layer, args=args: layer(*args), dev, runs)
                    row[f"{key}_kernels"] = count_kernels(lambda layer=layer, args=args: layer(*args), dev)
                finally:
                    FA.ROW_KERNELS = orig
            rows.append(row)
    return rows


def _iakd_tail(n: int, g, dev):
    q = torch.randn(n, KEYPOINTS, C, generator=g).to(dev)
    feats = torch.randn(n, C, 1024, generator=g).to(dev)
    pts = (torch.rand(n, 1024, 3, generator=g) * 0.2).to(dev)
    ref = T.keypoint_heatmap_torch(q.double(), feats.double(), pts.double(), 0.1)[0]
    cases = [("torch", partial(T.keypoint_heatmap_torch, q, feats, pts, 0.1))]
    for bm, bn, warps in itertools.product((16, 32), (16, 32, 64), (4, 8)):
        fn = partial(T.keypoint_heatmap_triton, q, feats, pts, 0.1, bm, bn, warps)
        cases.append((f"kernel m{bm} n{bn} w{warps}", fn))
    return cases, ref


def _nocs_tail(n: int, g, dev):
    h = torch.relu(torch.randn(n, KEYPOINTS, 512, generator=g)).to(dev)
    w = (torch.randn(6 * 3 * 64, 512, generator=g) * 0.05).to(dev)
    b = (torch.randn(6 * 3 * 64, generator=g) * 0.1).to(dev)
    cat = (torch.arange(n) % 6).to(dev)
    ref = T.nocs_expectation_torch(h.double(), w.double(), b.double(), cat, 6, 64)
    cases = [("torch", partial(T.nocs_expectation_torch, h, w, b, cat, 6, 64))]
    for bm, bk, warps in itertools.product((16, 32), (32, 64), (4, 8)):
        fn = partial(T.nocs_expectation_triton, h, w, b, cat, 64, bm, bk, warps)
        cases.append((f"kernel m{bm} k{bk} w{warps}", fn))
    return cases, ref


def _front_door_gate(n: int, g, dev):
    ln, aug, ori = (m.to(dev) for m in (torch.nn.LayerNorm(C), torch.nn.Linear(C, 1), torch.nn.Linear(C, 1)))
    s, x, loc = (torch.randn(n, KEYPOINTS, C, generator=g).to(dev) for _ in range(3))
    ref = T.front_door_gate_torch(*(t.double() for t in (s, x, loc)), *(m.double() for m in (ln, aug, ori)))
    for m in (ln, aug, ori):
        m.float()
    cases = [("torch", partial(T.front_door_gate_torch, s, x, loc, ln, aug, ori))]
    for bm in (8, 16, 32):
        cases.append((f"kernel m{bm}", partial(T.front_door_gate_triton, s, x, loc, ln, aug, ori, bm)))
    return cases, ref


def tails_table(objects, dev, runs: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in objects:
        tails = (("iakd_tail", _iakd_tail), ("nocs_tail", _nocs_tail), ("front_door_gate", _front_door_gate))
        for name, make in tails:
            cases, ref = make(n, g, dev)
            rows += _time_cases(name, n, cases, ref, dev, runs)
    return rows


def _time_cases(name, n, cases, ref, dev, runs) -> list[dict]:
    rows = []
    for impl, fn in cases:
        row = {"objects": n, "tail": name, "impl": impl}
        try:
            out = fn()
            row["max_err"] = ((out[0] if isinstance(out, tuple) else out).double() - ref).abs().max().item()
            row["us"] = 1e3 * time_fn(fn, dev, runs)
        except Exception as e:  # a configuration that does not compile (registers, shared memory)
            row["us"], row["error"] = None, f"{type(e).__name__}: {e}"[:200]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 6])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--steps", type=int, default=40, help="dependent steps per graph")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/bench/head_kernels")))
    args = ap.parse_args(argv)
    if not (torch.cuda.is_available() and L.HAVE_TRITON):
        print("head_kernels: needs CUDA and Triton; nothing measured")
        return 0
    dev = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__}
    with torch.inference_mode(), _tf32(True):
        report["steps"] = steps_table(args.objects, dev, args.runs, args.steps)
        report["layers"] = layers_table(args.objects, dev, args.runs)
        report["tails"] = tails_table(args.objects, dev, args.runs)
    print(f"## Residual steps ({report['device']}, TF32, us per dependent step)\n")
    print("| objects | step | impl | us | max err |\n|---|---|---|---|---|")
    for r in report["steps"]:
        us = f"{r['us']:.2f}" if r["us"] is not None else r.get("error", "-")
        err = f"{r['max_err']:.1e}" if "max_err" in r else "-"
        print(f"| {r['objects']} | {r['step']} | {r['impl']} | {us} | {err} |")
    print("\n## Layers (graph replay ms, kernels per call)\n")
    print("| objects | layer | unfused ms | fused ms | unfused kernels | fused kernels |")
    print("|---|---|---|---|---|---|")
    for r in report["layers"]:
        print(
            f"| {r['objects']} | {r['layer']} | {r['unfused_ms']:.3f} | {r['fused_ms']:.3f} | "
            f"{r['unfused_kernels']} | {r['fused_kernels']} |"
        )
    print("\n## Tails (graph replay us of one call)\n")
    print("| objects | tail | impl | us | max err |\n|---|---|---|---|---|")
    for r in report["tails"]:
        us = f"{r['us']:.2f}" if r["us"] is not None else r.get("error", "-")
        err = f"{r['max_err']:.1e}" if "max_err" in r else "-"
        print(f"| {r['objects']} | {r['tail']} | {r['impl']} | {us} | {err} |")
    (args.out / "head_kernels.json").write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out / 'head_kernels.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
