"""Where the forward's GPU time goes: torch.profiler kernel table of one eager forward, per precision.

python bench/profile_forward.py --objects 6 --out $OUT
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from cleanpose_model.fast import GraphedForward
from cleanpose_model.ops import pointnet2 as P
from cleanpose_model.parity import build_parity_net


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/bench/profile")))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    net = build_parity_net("cleanpose", dev)
    n = args.objects
    g = torch.Generator().manual_seed(0)
    rgb = torch.randn(n, 3, 224, 224, generator=g).to(dev)
    pts = (torch.rand(n, 1024, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])).to(dev)
    choose = torch.randint(0, 224 * 224, (n, 1024), generator=g).to(dev)
    cat = (torch.arange(n) % 6).to(dev)
    queue = torch.randn(n, 12, 256, generator=g).to(dev)

    # FPS alone, per level size.
    for npts, m in [(1024, 512), (512, 256), (256, 128), (128, 64)]:
        x = (torch.rand(n, npts, 3, generator=g) * 0.2 - 0.1).to(dev)
        for _ in range(3):
            P.furthest_point_sample(x, m)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            P.furthest_point_sample(x, m)
        torch.cuda.synchronize()
        print(f"FPS {npts}->{m}: {(time.perf_counter() - t) / 20 * 1e3:.3f} ms")

    for precision in ("fp32", "fp16"):
        runner = GraphedForward(net, precision=precision, queue_entries=12)
        with torch.inference_mode():
            for _ in range(3):
                runner._run({"rgb": rgb, "pts": pts, "choose": choose, "category": cat, "queue_feats": queue})
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                runner._run({"rgb": rgb, "pts": pts, "choose": choose, "category": cat, "queue_feats": queue})
                torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
        print(f"\n== {precision}, {n} objects, eager\n{table}")
        (args.out / f"profile_{precision}.txt").write_text(table)
        total = sum(e.device_time_total for e in prof.key_averages()) / 1e3
        print(f"total kernel time {total:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
