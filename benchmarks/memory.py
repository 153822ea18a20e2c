"""Suite ``memory``: memory of an inference process per mode and object count, a fresh process per row
(earlier rows' allocations, graphs and caches never inflate a later one).

A row is the estimator built (parity weights) and, for objects > 0, one ``predict`` of that many objects
(on CUDA with its graph captures for the buckets up to that count); objects = 0 is the weights alone.
Columns: on CUDA the allocator's peak and reserved memory and the device's used memory; everywhere the
process's peak resident set. ``--baseline-root`` measures an older checkout's rows in the same run.

    python -m benchmarks memory --objects 0 1 6 16 --out docs/results/h200
    python -m benchmarks memory --quick --out /tmp/b
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks import harness
from benchmarks.fixtures import write_forward_fixture
from benchmarks.forward import TreeProcess, add_tree_arguments, modes_for, tree_roots

COLUMNS = ("peak_allocated_mb", "reserved_mb", "device_used_mb", "rss_peak_mb")


def main(argv: list[str] | None = None) -> int:
    ap = harness.common_parser("memory", __doc__.splitlines()[0])
    add_tree_arguments(ap)
    args = harness.finish_args(ap.parse_args(argv), objects=[0, 1, 6, 16], quick_objects=[0, 1])
    from cleanpose_model.device import resolve_device

    device = str(resolve_device(args.device).device)
    report = harness.Report("memory", args, device)
    modes = modes_for(device, args.modes, report)
    with tempfile.TemporaryDirectory(prefix="cleanpose_bench_") as tmp:
        fixture = write_forward_fixture(Path(tmp) / "memory_inputs.pt", [n for n in args.objects if n > 0])
        for mode in modes:
            for n in args.objects:
                for name, root in tree_roots(args.baseline_root):
                    proc = TreeProcess(name, root, fixture, device, args.variant)
                    try:
                        row = proc.request(op="memory", mode=mode, objects=n)
                    finally:
                        proc.close()
                    report.add(tree=name, mode=mode, objects=n, **row)
    cols = ["tree", "mode", "objects", *[c for c in COLUMNS if any(c in r for r in report.rows)]]
    report.print_rows(cols, f"Process memory (MB), {report.data['machine'].get('gpu', device)}")
    if args.baseline_root:
        value = "peak_allocated_mb" if device.startswith("cuda") else "rss_peak_mb"
        report.compare(key=("mode", "objects"), between="tree", base="baseline", other="current", value=value)
        report.print_comparisons(("mode", "objects"), "Current tree vs baseline tree")
    report.write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
