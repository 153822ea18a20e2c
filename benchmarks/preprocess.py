"""Suite ``preprocess``: per-object input building for one frame (crop, resize, normalise, sample points),
per form and object count.

Forms: ``numpy`` (``build_object_inputs_np``, the reference, on the host), ``torch`` (``GraphedInputBuilder``
eager on --device) and, on CUDA, ``torch_graphed`` (each device phase one CUDA graph replay: the node's path).
The torch forms start from the frame already on the device (as after the node's upload; the upload is the
``h2d_copy`` row on CUDA). Every torch row carries its largest difference to the numpy outputs on the same
frame and generator seed; the comparison table gives torch / numpy time ratios of this run.

Frames: ``--frames FILE`` (written by ``scripts/make_perf_frames.py``; its first frame, instances repeated
to each count) or a generated frame of --height x --width.

    python -m benchmarks preprocess --frames perf_frames.npz --objects 1 6 16 --out docs/results/h200
    python -m benchmarks preprocess --quick --out /tmp/b
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.fixtures import frame_with_objects, load_frames


def max_difference(ref, batch) -> float:
    """Largest absolute difference of rgb / pts / choose between numpy ObjectInputs and a torch batch."""
    diffs = [
        float(np.abs(getattr(ref, k).astype(np.float64) - getattr(batch, k).double().cpu().numpy()).max())
        for k in ("rgb", "pts", "choose")
    ]
    return max(diffs)


def main(argv: list[str] | None = None) -> int:
    ap = harness.common_parser("preprocess", __doc__.splitlines()[0])
    ap.add_argument("--frames", type=Path, default=None, help="frames file of scripts/make_perf_frames.py")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    args = harness.finish_args(ap.parse_args(argv), objects=[1, 6, 16], quick_objects=[1, 3])
    if args.quick:
        args.height, args.width = 120, 160
    from cleanpose_model.device import resolve_device
    from cleanpose_model.preprocess import GraphedInputBuilder, build_object_inputs_np

    dev = resolve_device(args.device).device
    report = harness.Report("preprocess", args, dev)
    frames = load_frames(args.frames) if args.frames else None
    h, w = frames[0]["rgb"].shape[:2] if frames else (args.height, args.width)
    builders = {"torch": GraphedInputBuilder(dev, graphs=False)}
    if dev.type == "cuda":
        builders["torch_graphed"] = GraphedInputBuilder(dev)
    timing = {"warmup": args.warmup, "iterations": args.iterations}
    for n in args.objects:
        f = frame_with_objects(frames, n, h, w)
        fixed = (f["K"], f["boxes"], f["categories"])

        def numpy_call(f=f):
            return build_object_inputs_np(
                f["rgb"],
                f["depth_m"],
                f["K"],
                f["masks"],
                f["boxes"],
                f["categories"],
                rng=np.random.default_rng(0),
            )

        ref = numpy_call()
        common = {"objects": n, "image": f"{w}x{h}", "kept": len(ref.category)}
        report.add(form="numpy", device="cpu", **common, **harness.measure(numpy_call, "cpu", **timing))
        on_dev = [torch.from_numpy(f[k]).to(dev) for k in ("rgb", "depth_m", "masks")]
        for form, builder in builders.items():

            def torch_call(builder=builder, on_dev=on_dev, fixed=fixed):
                K, boxes, cats = fixed
                return builder(on_dev[0], on_dev[1], K, on_dev[2], boxes, cats, rng=np.random.default_rng(0))

            stats = harness.measure(torch_call, dev, **timing)
            err = max_difference(ref, torch_call()[0])
            report.add(form=form, device=str(dev), **common, **stats, max_abs_diff_vs_numpy=err)
        if dev.type == "cuda":
            host = [f[k] for k in ("rgb", "depth_m", "masks")]
            stats = harness.measure(
                lambda host=host: [torch.from_numpy(x).to(dev) for x in host], dev, **timing
            )
            report.add(form="h2d_copy", device=str(dev), **common, **stats)
    cols = [
        "form",
        "device",
        "objects",
        "kept",
        "image",
        "median_ms",
        "p5_ms",
        "p95_ms",
        "max_abs_diff_vs_numpy",
    ]
    report.print_rows(cols, "Per-object input building (ms)")
    for form in builders:
        cmp = report.compare(key=("objects",), between="form", base="numpy", other=form)
        report.print_comparisons(("objects",), f"{form} vs numpy", cmp)
    report.write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
