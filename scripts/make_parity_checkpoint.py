"""Write a full-size CleanPose checkpoint (our format) with the parity-rule weights and a random queue.

Timing does not depend on the weight values, so this stands in for the published checkpoint (not shipped
with the project) when benchmarking the full-size network through the node
(``python -m benchmarks node --estimator model --checkpoint OUT``, ``scripts/gpu_bench.sh``).

    python scripts/make_parity_checkpoint.py OUT.safetensors [--variant cleanpose|agpose]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cleanpose_model.io.checkpoints import save_checkpoint
from cleanpose_model.parity import build_parity_net


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="checkpoint to write (.safetensors)")
    ap.add_argument("--variant", default="cleanpose", choices=("cleanpose", "agpose"))
    args = ap.parse_args(argv)
    net = build_parity_net(args.variant, "cpu")
    queue = None
    if args.variant == "cleanpose":
        cfg = net.cfg
        queue = torch.randn(cfg.cat_num, 80, cfg.d_model, generator=torch.Generator().manual_seed(0))
    save_checkpoint(
        args.out, net, net.cfg, queue=queue, metadata={"source": "parity-rule weights (benchmark)"}
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
