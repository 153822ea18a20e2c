"""DINOv2 in the fast mode: the published ViT under autocast against its inference form (nn/fused_dinov2.py).

Per object count and variant: CUDA-graph replay time, kernels per call, and the tokens' error against the
fp32 forward (TF32 off) on the parity images. Variants: ``autocast`` (what GraphedForward ran before),
``fused`` (the default inference form), ``fused_triton_attn`` (the project's attention kernel instead of
SDPA), ``fused_erf_gelu`` (fc1's GELU as its own erf kernel instead of cuBLASLt's epilogue),
``fused_torch_ln`` (the norms' torch forms instead of the Triton kernels). Also checks which GELU the
epilogue computes.

    python bench/dinov2_fused.py --objects 1 6 --out $OUT      # GPU machine
    python bench/dinov2_fused.py --quick --out /tmp/dino       # CPU smoke run (eager timing, ATen operators)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launch_floor import count_kernels  # noqa: E402
from stage_times import time_fn  # noqa: E402

from cleanpose_model.device import resolve_device  # noqa: E402
from cleanpose_model.fast import _AutocastBackbone  # noqa: E402
from cleanpose_model.nn.fused_dinov2 import FastDinoV2  # noqa: E402
from cleanpose_model.parity import build_parity_net  # noqa: E402

PARITY = ROOT / "test" / "data" / "parity" / "cleanpose_parity_v1.npz"
VARIANTS = {
    "fused": {},
    "fused_triton_attn": {"attention": "triton"},
    "fused_erf_gelu": {"exact_gelu": True},
    "fused_torch_ln": {"use_triton": False},
}


def gelu_epilogue(dev: torch.device) -> dict:
    """Max error of ``_addmm_activation(use_gelu=True)`` against the erf and the tanh GELU of the float64
    product. In fp32 (TF32 off), so the product's rounding (~1e-5) stays far below the two forms' difference
    (up to 4.7e-4 near x = 2.7); the epilogue is the same function in every dtype."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 384, generator=g).to(dev)
    w = (torch.randn(1536, 384, generator=g) * 0.15).to(dev)
    b = torch.randn(1536, generator=g).to(dev)
    got = torch._addmm_activation(b, x, w.t(), use_gelu=True).double()
    pre = torch.addmm(b.double(), x.double(), w.double().t())
    return {
        "max_err_vs_erf": (got - F.gelu(pre)).abs().max().item(),
        "max_err_vs_tanh": (got - F.gelu(pre, approximate="tanh")).abs().max().item(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 6])
    ap.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/bench/dinov2_fused")))
    args = ap.parse_args(argv)
    dev = resolve_device(args.device).device
    cuda = dev.type == "cuda"
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    if args.quick:
        args.runs, args.objects = 1, [1]
    args.out.mkdir(parents=True, exist_ok=True)
    vit = build_parity_net("cleanpose", dev).rgb_extractor
    variants = {"autocast": _AutocastBackbone(vit, dtype)}
    if not cuda:  # _AutocastBackbone names CUDA's autocast
        variants["autocast"] = lambda x: _cpu_autocast(vit, x, dtype)
    for name, kw in VARIANTS.items():
        variants[name] = FastDinoV2(vit, dtype, **kw)
    images = torch.from_numpy(np.load(PARITY)["rgb"]).float()
    report: dict = {
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "dtype": args.dtype,
        "rows": [],
    }
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            if cuda:
                report["gelu_epilogue"] = gelu_epilogue(dev)
            for n in args.objects:
                x = images[torch.arange(n) % len(images)].to(dev)
                ref = vit(x).double()  # fp32, TF32 off
                for name, fn in variants.items():
                    tokens = fn(x)
                    err = (tokens.double() - ref).abs()
                    row = {
                        "objects": n,
                        "variant": name,
                        "ms": time_fn(lambda fn=fn, x=x: fn(x), dev, args.runs),
                        "kernels": count_kernels(lambda fn=fn, x=x: fn(x), dev),
                        "max_abs_err": err.max().item(),
                        "mean_abs_err": err.mean().item(),
                    }
                    report["rows"].append(row)
                    print(row, flush=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    unit = "kernels" if cuda else "ATen ops"
    lines = [
        f"| objects | variant | ms | {unit} | max abs err | mean abs err |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['objects']} | {r['variant']} | {r['ms']:.3f} | {r['kernels']} | {r['max_abs_err']:.2e} "
            f"| {r['mean_abs_err']:.2e} |"
        )
    table = "\n".join(lines)
    print(f"## DINOv2 backbone, {args.dtype} ({report['device']}; errors vs fp32 tokens)\n\n{table}")
    if "gelu_epilogue" in report:
        print(f"\nGELU epilogue: {report['gelu_epilogue']}")
    (args.out / "dinov2_fused.json").write_text(json.dumps(report, indent=1))
    (args.out / "dinov2_fused.md").write_text(table + "\n")
    return 0


def _cpu_autocast(vit, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    with torch.autocast("cpu", dtype=dtype):
        return vit(x).float()


if __name__ == "__main__":
    raise SystemExit(main())
