"""The one benchmark harness: synchronised timing, statistics, a report (markdown table + JSON) and the
common command-line flags of every suite.

This module imports only the standard library, numpy and torch (never ``cleanpose_model``): the forward
and memory workers (``benchmarks/worker.py``) import it from a process whose ``cleanpose_model`` may be an
older checkout of the project.

    report = Report("forward", args, device)
    stats = measure(lambda: est.predict(batch), device, warmup=10, iterations=100)
    report.add(tree="current", mode="exact", objects=6, **stats)
    report.compare(key=("mode", "objects"), between="tree", base="baseline", other="current")
    print(report.table(["tree", "mode", "objects", "median_ms", "p5_ms", "p95_ms"]))
    report.write(args.out)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

# Where a suite writes its JSON when --out is not given (git-ignored).
DEFAULT_OUT = Path("outputs") / "bench"


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU, where calls return when done."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_call(fn: Callable[[], object], device, *, warmup: int, iterations: int) -> list[float]:
    """Milliseconds of ``iterations`` calls of ``fn`` after ``warmup`` untimed ones. On CUDA the device is
    synchronised before and after each call, so a sample is the wall time from launch to completion
    (host launch overhead included: what a caller waiting for the result sees)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def summarize(samples_ms: Iterable[float]) -> dict[str, float | int]:
    """median / p5 / p95 / p99 / mean / min / max of millisecond samples, and their count."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples to summarise")
    p5, p50, p95, p99 = np.percentile(a, [5, 50, 95, 99])
    return {
        "n": int(a.size),
        "median_ms": float(p50),
        "p5_ms": float(p5),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
    }


def measure(fn: Callable[[], object], device, *, warmup: int, iterations: int) -> dict[str, float | int]:
    """``summarize(time_call(...))``."""
    return summarize(time_call(fn, device, warmup=warmup, iterations=iterations))


def machine_info(device) -> dict:
    """What the numbers were measured on (kept in every report)."""
    dev = torch.device(device)
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(dev),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    return info


def common_parser(suite: str, description: str) -> argparse.ArgumentParser:
    """The flags every suite takes; ``finish_args`` fills the suite's defaults after parsing."""
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks {suite}", description=description)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--objects", type=int, nargs="+", default=None, help="object counts, one row each")
    ap.add_argument("--iterations", type=int, default=50, help="timed calls per row")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls before each row")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for <suite>.json ({DEFAULT_OUT})")
    ap.add_argument(
        "--quick", action="store_true", help="short CPU mode (tests, CI): small sizes, 2 iterations"
    )
    return ap


def finish_args(
    args: argparse.Namespace, *, objects: list[int], quick_objects: list[int], quick_iterations: int = 2
) -> argparse.Namespace:
    """The suite's default object counts where --objects was not given; ``--quick`` runs on the CPU with
    ``quick_objects`` (unless --objects was given), at most ``quick_iterations`` timed calls and 1 warm-up."""
    if args.quick:
        args.device = "cpu"
        args.objects = args.objects or quick_objects
        args.iterations = min(args.iterations, quick_iterations)
        args.warmup = min(args.warmup, 1)
    args.objects = args.objects or objects
    if any(n < 0 for n in args.objects):
        raise SystemExit(f"--objects must be >= 0, got {args.objects}")
    return args


def _jsonable(v):
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class Report:
    """The rows of one suite run, their same-run comparisons, and where they were measured.

    Every row added here was measured by this process (or a worker it started) during this run; a ratio is
    only ever formed between two such rows (``compare``), never against a figure from elsewhere."""

    def __init__(self, suite: str, args: argparse.Namespace | None, device) -> None:
        self.suite = suite
        self.data: dict = {
            "suite": suite,
            "run_id": uuid.uuid4().hex[:12],
            "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(device),
            "args": _jsonable(vars(args)) if args is not None else {},
            "rows": [],
            "comparisons": [],
            "notes": [],
        }

    @property
    def rows(self) -> list[dict]:
        return self.data["rows"]

    @property
    def comparisons(self) -> list[dict]:
        return self.data["comparisons"]

    def add(self, **row) -> dict:
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        """A remark printed with the tables and kept in the JSON (e.g. why a row is missing)."""
        self.data["notes"].append(text)
        print(f"note: {text}", flush=True)

    def compare(
        self, *, key: tuple[str, ...], between: str, base: str, other: str, value: str = "median_ms"
    ) -> list[dict]:
        """For every ``key`` combination that has a row with ``between == base`` AND one with
        ``between == other`` (both measured in this run), the ratio ``other / base`` of ``value``. Keys with
        only one of the two rows get no ratio."""
        index: dict[tuple, dict[str, dict]] = {}
        for r in self.rows:
            if between in r and all(k in r for k in key):
                index.setdefault(tuple(r[k] for k in key), {})[r[between]] = r
        out = []
        for k, pair in index.items():
            a, b = pair.get(base), pair.get(other)
            if a is None or b is None:
                continue
            va, vb = a.get(value), b.get(value)
            if not isinstance(va, (int, float)) or not isinstance(vb, (int, float)) or va <= 0:
                continue
            cmp = dict(zip(key, k))
            cmp.update(
                {
                    "between": between,
                    "base": base,
                    "other": other,
                    "value": value,
                    f"{base}_{value}": va,
                    f"{other}_{value}": vb,
                    "ratio": vb / va,
                }
            )
            out.append(cmp)
        self.comparisons.extend(out)
        return out

    @staticmethod
    def table(rows: list[dict], columns: list[str]) -> str:
        """A markdown table of ``columns`` (missing cells print as '-')."""
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for r in rows:
            cells = []
            for c in columns:
                x = r.get(c)
                if isinstance(x, float):
                    cells.append(f"{x:.4g}" if abs(x) < 0.01 and x != 0 else f"{x:.3f}")
                else:
                    cells.append("-" if x is None else str(x))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def print_rows(self, columns: list[str], title: str) -> None:
        print(f"\n## {title}\n\n{self.table(self.rows, columns)}", flush=True)

    def print_comparisons(
        self, key: tuple[str, ...], title: str, comparisons: list[dict] | None = None
    ) -> None:
        """Print ``comparisons`` (default: all of this run's) as a table."""
        comparisons = self.comparisons if comparisons is None else comparisons
        if not comparisons:
            return
        c0 = comparisons[0]
        cols = [*key, f"{c0['base']}_{c0['value']}", f"{c0['other']}_{c0['value']}", "ratio"]
        cols += [c for c in c0 if c not in cols and c not in ("between", "base", "other", "value")]
        print(f"\n## {title} ({c0['other']} / {c0['base']}, same run)\n\n{self.table(comparisons, cols)}")

    def write(self, out_dir: Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.data["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        path = out_dir / f"{self.suite}.json"
        path.write_text(json.dumps(_jsonable(self.data), indent=2))
        print(f"\nwrote {path}", flush=True)
        return path


# Columns left out of rendered tables: long or nested values (kept in the JSON).
_SKIP_COLUMNS = {"subscriptions", "p5_ms", "p99_ms", "mean_ms", "min_ms"}


def render(data: dict) -> str:
    """Markdown of a written report (its rows, notes and same-run comparisons), e.g. for a results README."""
    m = data["machine"]
    lines = [
        f"### {data['suite']} ({m.get('gpu') or m['device']}, torch {m['torch']}, {data['started_utc']})",
        "",
    ]
    cols: list[str] = []
    for r in data["rows"]:
        cols += [
            k for k, v in r.items() if k not in cols and k not in _SKIP_COLUMNS and not isinstance(v, dict)
        ]
    lines.append(Report.table(data["rows"], cols))
    lines += [f"\nnote: {n}" for n in data.get("notes", [])]
    groups: dict[tuple[str, str], list[dict]] = {}
    for c in data["comparisons"]:
        groups.setdefault((c["base"], c["other"]), []).append(c)
    for (base, other), comps in groups.items():
        ccols: list[str] = []
        for c in comps:
            ccols += [k for k in c if k not in ccols and k not in ("between", "value", "base", "other")]
        lines += ["", f"Same-run ratios, {other} / {base}:", "", Report.table(comps, ccols)]
    return "\n".join(lines)
