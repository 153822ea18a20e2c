"""The glue outside the backbones and transformer blocks, published form against inference form: the RGB
feature gather (`CleanPoseNet.rgb_features`, ops/gather_triton.py) and the pose/size estimator
(nn/fused_heads.py), in the fast mode (TF32 allowed, as the graphed runner runs them).

Per stage and object count: CUDA-graph replay time (median), kernels launched (torch.profiler over one
eager call; on the CPU, ATen operators), and the largest difference between the two forms' outputs. Also
checks the gather kernel against its torch reference on the same feature map (bit-equal expected).
Prints a table and writes glue_kernels.json.

    python bench/glue_kernels.py --objects 1 6 --out $OUT      # GPU machine
    python bench/glue_kernels.py --quick --out /tmp/glue       # CPU smoke run (both forms are the torch path)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_floor import count_kernels
from stage_times import time_fn

from cleanpose_model.device import resolve_device
from cleanpose_model.fast import _tf32
from cleanpose_model.nn.fused_attention import fuse_for_inference
from cleanpose_model.nn.pointwise import fold_for_inference
from cleanpose_model.ops import gather_triton
from cleanpose_model.parity import build_parity_net


def _max_diff(a, b) -> float:
    if isinstance(a, torch.Tensor):
        a, b = (a,), (b,)
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b, strict=True))


def stage_rows(n: int, folded, fused, dev: torch.device, runs: int) -> list[dict]:
    g = torch.Generator().manual_seed(n)
    size = folded.cfg.image_size
    choose = torch.randint(0, size * size, (n, folded.cfg.n_points), generator=g).to(dev)
    tokens = torch.randn(n, 257, folded.cfg.dino.embed_dim, generator=g).to(dev)
    k, d = folded.cfg.kpt_num, folded.cfg.d_model
    kpt_3d = (torch.randn(n, k, 3, generator=g) * 0.1).to(dev)
    kpt_nocs = (torch.rand(n, k, 3, generator=g) - 0.5).to(dev)
    kpt_feat = torch.randn(n, k, d, generator=g).to(dev)
    calls = {
        "rgb_features": {
            "published": lambda: folded.rgb_features(tokens[:, 1:], choose),
            "fused": lambda: fused.rgb_features(tokens[:, 1:], choose),
        },
        "pose_head": {
            "published": lambda: folded.estimator(kpt_3d, kpt_nocs, kpt_feat),
            "fused": lambda: fused.estimator(kpt_3d, kpt_nocs, kpt_feat),
        },
    }
    rows = []
    for stage, forms in calls.items():
        outs = {form: fn() for form, fn in forms.items()}  # also Triton compilation, outside the counts
        diff = _max_diff(outs["fused"], outs["published"])
        ms = {form: time_fn(fn, dev, runs) for form, fn in forms.items()}
        for form, fn in forms.items():
            rows.append(
                {
                    "objects": n,
                    "stage": stage,
                    "form": form,
                    "ms": ms[form],
                    "kernels": count_kernels(fn, dev),
                    "max_diff_vs_published": diff if form == "fused" else 0.0,
                }
            )
    return rows


def gather_bit_equal(dev: torch.device) -> bool | None:
    """The kernel against its torch reference on one feature map (None where the kernel cannot run)."""
    if dev.type != "cuda" or not gather_triton.HAVE_TRITON:
        return None
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(6, 256, 128, generator=g).to(dev).transpose(1, 2)
    choose = torch.randint(0, 224 * 224, (6, 1024), generator=g).to(dev)
    got = gather_triton.bilinear_gather_triton(feat, choose, 16, 224)
    return bool(torch.equal(got, gather_triton.bilinear_gather_torch(feat, choose, 16, 224)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 6])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="CI: 1 object, few runs")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/bench/glue_kernels")))
    args = ap.parse_args(argv)
    dev = resolve_device(args.device).device
    if args.quick:
        args.objects, args.runs = [1], 3
    args.out.mkdir(parents=True, exist_ok=True)
    folded = fold_for_inference(build_parity_net("cleanpose", dev))
    fused = fuse_for_inference(folded)
    report: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "mode": "fast (TF32 allowed, no autocast)",
    }
    rows = []
    with torch.inference_mode(), _tf32(True):
        report["gather_kernel_bit_equal_to_torch"] = gather_bit_equal(dev)
        for n in args.objects:
            rows += stage_rows(n, folded, fused, dev, args.runs)
    report["rows"] = rows
    unit = "CUDA kernels" if dev.type == "cuda" else "ATen operators"
    print(f"## Glue stages, published vs inference form ({report['device']}; {unit}; fast mode)\n")
    print(f"gather kernel bit-equal to its torch reference: {report['gather_kernel_bit_equal_to_torch']}\n")
    print("| objects | stage | form | ms | kernels | max diff vs published |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['objects']} | {r['stage']} | {r['form']} | {r['ms']:.4f} | {r['kernels']} "
            f"| {r['max_diff_vs_published']:.2e} |"
        )
    (args.out / "glue_kernels.json").write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out / 'glue_kernels.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
