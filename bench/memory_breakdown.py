"""GPU memory of an inference process, step by step: what the CUDA context, the weights, each library
(cuBLAS, fused attention, the Triton PointNet++ kernels) and the graphed forward add.

The process figure is the device's used memory now minus before this process touched CUDA (NVML,
read before the context exists), so memory the driver holds with no process at all is not counted;
inside containers NVML often cannot list per-process usage, which is why the difference is used.
Each step also reports PyTorch's reserved pool; the rest is memory outside the allocator (context,
loaded kernels, library handles). Run once per allocator setting (a fresh process each):

    python bench/memory_breakdown.py [--objects 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


class DeviceUsage:
    """Device 0's used memory relative to the moment this object was made (make it before CUDA init)."""

    def __init__(self) -> None:
        self.base = self.used_mb()

    @staticmethod
    def used_mb() -> float | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used / 2**20
        except Exception:
            return None

    def process_mb(self) -> float | None:
        now = self.used_mb()
        return None if now is None or self.base is None else now - self.base


def steps(n_objects: int) -> list[dict]:
    usage = DeviceUsage()  # before torch initialises CUDA
    import torch

    from cleanpose_model.fast import GraphedForward
    from cleanpose_model.nn.pointwise import fold_for_inference
    from cleanpose_model.ops import pointnet2 as P
    from cleanpose_model.parity import build_parity_net

    dev = torch.device("cuda")
    rows = []

    def record(step: str) -> None:
        torch.cuda.synchronize(dev)
        total = usage.process_mb()
        reserved = torch.cuda.memory_reserved(dev) / 2**20
        rows.append(
            {
                "step": step,
                "process_mb": total,
                "reserved_mb": reserved,
                "allocated_mb": torch.cuda.memory_allocated(dev) / 2**20,
                "outside_allocator_mb": None if total is None else total - reserved,
            }
        )

    torch.zeros(1, device=dev)
    record("CUDA context")
    net = build_parity_net("cleanpose", dev)
    record("+ weights (parity CleanPose)")
    a = torch.randn(256, 256, device=dev)
    _ = a @ a
    record("+ cuBLAS fp32 matmul")
    with torch.autocast("cuda", dtype=torch.float16):
        _ = a @ a
    record("+ cuBLAS fp16 matmul")
    q = torch.randn(1, 6, 257, 64, device=dev, dtype=torch.float16)
    _ = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    record("+ fused attention (SDPA fp16)")
    xyz = torch.rand(2, 1024, 3, device=dev) * 0.2
    centres = P.sample_centres(xyz, 512)
    P.ball_query_multi(centres, xyz, [0.01, 0.02], [16, 32])
    P.three_nn(xyz, centres)
    record("+ Triton PointNet++ kernels")
    g = torch.Generator().manual_seed(0)
    s = net.cfg.image_size
    inputs = (
        torch.randn(n_objects, 3, s, s, generator=g).to(dev),
        (torch.rand(n_objects, 1024, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])).to(dev),
        torch.randint(0, s * s, (n_objects, 1024), generator=g).to(dev),
        torch.zeros(n_objects, dtype=torch.long, device=dev),
        torch.randn(n_objects, 80, 256, generator=g).to(dev),
    )
    folded = fold_for_inference(net)
    with torch.inference_mode():
        folded(*inputs[:4], queue_feats=inputs[4])
        record(f"+ eager fp32 forward, {n_objects} objects")
        with torch.autocast("cuda", dtype=torch.float16):
            folded.rgb_extractor(inputs[0])
        torch.backends.cuda.matmul.allow_tf32 = True
        folded(*inputs[:4], queue_feats=inputs[4])
        torch.backends.cuda.matmul.allow_tf32 = False
        record("+ eager DINOv2 fp16 and TF32 forward")
        torch.cuda.empty_cache()
        record("after empty_cache()")
        one = GraphedForward(net, precision="fast", queue_entries=80, overlap=False)
        one(*inputs[:4], inputs[4])
        record(f"+ graphed fast forward, one stream, {n_objects} objects (capture + replay)")
        del one
        torch.cuda.empty_cache()
        record("after dropping it and empty_cache()")
        runner = GraphedForward(net, precision="fast", queue_entries=80)
        runner(*inputs[:4], inputs[4])
    record(f"+ graphed fast forward, 3 streams, {n_objects} objects (capture + replay)")
    torch.cuda.empty_cache()
    record("after empty_cache()")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("outputs/memory_breakdown"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(steps(args.objects)))
        return 0
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError
    except (ImportError, RuntimeError):
        print("memory_breakdown: needs CUDA; nothing measured")
        return 0
    report = {"device": torch.cuda.get_device_name(0), "objects": args.objects, "runs": {}}
    for name, conf in (("default allocator", None), ("expandable_segments", "expandable_segments:True")):
        env = dict(os.environ)
        if conf:
            env["PYTORCH_CUDA_ALLOC_CONF"] = conf
        res = subprocess.run(
            [sys.executable, __file__, "--child", "--objects", str(args.objects)],
            capture_output=True,
            text=True,
            env=env,
        )
        if res.returncode != 0:
            report["runs"][name] = {"error": res.stderr[-1500:]}
            print(f"\n{name}: failed\n{res.stderr[-1500:]}")
            continue
        rows = json.loads(res.stdout.strip().splitlines()[-1])
        report["runs"][name] = rows
        print(f"\n## GPU memory by step, {report['device']}, {name} (MB)\n")
        cols = list(rows[0])
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print(
                "| "
                + " | ".join(f"{r[c]:.0f}" if isinstance(r[c], float) else str(r[c]) for c in cols)
                + " |"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory_breakdown.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
