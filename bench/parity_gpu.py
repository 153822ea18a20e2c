"""Parity of our network with the published CleanPose / AG-Pose vectors on one device (default CUDA).

fp32 with TF32 disabled (the vectors were recorded that way), weights rebuilt from the published key
names by the parity rule. Prints a per-tensor error table and writes JSON.

    python bench/parity_gpu.py --out outputs/bench/parity_gpu.json [--device cuda] [--tf32]
Exit status 1 if any tensor is outside the parity bounds (rel err 1e-4; R/t/s 1e-4 absolute).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from cleanpose_model import parity
from cleanpose_model.device import resolve_device

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--out", type=Path, required=True, help="JSON output path")
    ap.add_argument("--vectors", type=Path, default=REPO / "test" / "data" / "parity")
    ap.add_argument("--tf32", action="store_true", help="leave TF32 on (measures its error; not parity)")
    ap.add_argument("--variants", nargs="+", default=list(parity.VARIANTS))
    ap.add_argument(
        "--runner",
        choices=["eager", "exact", "exact_compiled"],
        default="eager",
        help="eager forward (all intermediates) or the CUDA-graph fp32 runner, optionally torch.compiled "
        "(final outputs only)",
    )
    args = ap.parse_args(argv)

    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    device = resolve_device(args.device).device
    result: dict = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "tf32": args.tf32,
        "runner": args.runner,
        "rel_tol": parity.REL_TOL,
        "abs_tol": parity.ABS_TOL,
        "variants": {},
    }
    all_ok = True
    for variant in args.variants:
        t0 = time.perf_counter()
        net = parity.build_parity_net(variant, device)
        forward = None
        if args.runner != "eager":
            from cleanpose_model.fast import GraphedForward

            queue_entries = net.cfg.front_door.select_num if net.cfg.use_front_door else None
            forward = GraphedForward(
                net, precision="fp32", queue_entries=queue_entries, compile=args.runner == "exact_compiled"
            )
        report = parity.run_parity(
            variant, args.vectors / f"{variant}_parity_v1.npz", device=device, net=net, forward=forward
        )
        bad = parity.failures(report)
        all_ok &= not bad
        result["variants"][variant] = {
            "tensors": report,
            "failures": bad,
            "ok": not bad,
            "seconds": time.perf_counter() - t0,
        }
        mode = "TF32 on" if args.tf32 else "fp32, TF32 off"
        print(f"== {variant} on {result['device_name']} ({mode}, runner {args.runner})")
        print(parity.format_report(report))
        print("PASS" if not bad else "FAIL:\n  " + "\n  ".join(bad))
        print()
    result["ok"] = all_ok
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
