"""Merge cleanpose-bench JSON files (one per objects-per-frame setting) into one Markdown table.

python -m benchmarks.replay_summary outputs/gpu_bench/obj*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cleanpose_tools.bench import stage_means_of, stage_table


def _f(v, nd=1) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def summary(paths: list[Path]) -> str:
    runs = [json.loads(p.read_text()) for p in paths]
    runs.sort(key=lambda r: r["bag"]["objects_max"])
    lines = []
    if runs:
        r0 = runs[0]
        lines.append(
            f"### cleanpose-bench over DDS on {r0['device']} (bag {Path(r0['bag']['path']).name}, "
            f"{r0['bag']['frames']} frames; checkpoint {Path(r0['checkpoint']).name}"
            f"{'' if r0['trained_model'] else ' (UNTRAINED weights)'})"
        )
        lines.append("")
    lines.append(
        "| objects/frame | mode | sent | recv | dropped | out Hz | p50 ms | p95 ms | p99 ms | max ms | "
        "jitter ms | GPU % mean | GPU MB max | CPU % mean | in-process p50 ms | DDS − in-process p50 ms |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        n = r["bag"]["objects_max"]
        ip = r.get("in_process") or {}
        ov = r.get("ros_overhead") or {}
        for a in r["dds"]:
            L = a["latency_ms"]
            mode = f"{a['rate_hz']:g} Hz" if a["mode"] == "rate" else "max"
            closed = a["mode"] == "max"
            ip50 = _f((ip.get("latency_ms") or {}).get("p50")) if closed else ""
            ov50 = _f(ov.get("p50_ms"), 2) if closed else ""
            lines.append(
                f"| {n} | {mode} | {a['sent']} | {a['received']} | {a['dropped']} | "
                f"{_f(a['output_rate_hz'])} | "
                f"{_f(L['p50'])} | {_f(L['p95'])} | {_f(L['p99'])} | {_f(L['max'])} | "
                f"{_f(a['jitter_ms_mean'])} | {_f(a['gpu_util_mean'], 0)} | {_f(a['gpu_mem_mb_max'], 0)} | "
                f"{_f(a['cpu_percent_mean'], 0)} | {ip50} | {ov50} |"
            )
    st_rows = []
    for r in runs:
        n = r["bag"]["objects_max"]
        for a in r["dds"]:
            mode = f"{a['rate_hz']:g} Hz" if a["mode"] == "rate" else "max"
            # older results: only the diagnostics at the end (all modes mixed)
            st = a.get("stage_ms") or stage_means_of(r.get("diagnostics") or {})
            st_rows.append((f"{n} obj, {mode}", st, a["latency_ms"]["mean"]))
    st_lines = stage_table(st_rows)
    if st_lines:
        lines.append("")
        lines.append(
            "Node stages (ms, the node's /diagnostics means over its last 100 frames of each mode; receive = "
            "header stamp (send time) -> inputs synchronized, queue = -> worker starts; pipeline = select + "
            "build_inputs + forward + results; rest = latency mean − stages):"
        )
        lines.append("")
        lines += st_lines
    acc = [r for r in runs if "per_object_success" in r.get("accuracy", {})]
    if acc:
        lines.append("")
        for r in acc:
            s = r["accuracy"]["per_object_success"]
            lines.append(
                f"accuracy at {r['bag']['objects_max']} objects/frame: 5°2cm {_f(s['5deg2cm'])} %, "
                f"10°5cm {_f(s['10deg5cm'])} %, IoU50 {_f(s['iou50'])} % of {s['gt_objects']} objects"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        print("usage: python -m benchmarks.replay_summary BENCH.json ...", file=sys.stderr)
        return 2
    print(summary(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
