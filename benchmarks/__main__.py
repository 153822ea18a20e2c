"""``python -m benchmarks <suite> [flags]``: the one entry point of the benchmark suites."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

SUITES = {
    "forward": "benchmarks.forward",
    "kernels": "benchmarks.kernels",
    "memory": "benchmarks.memory",
    "preprocess": "benchmarks.preprocess",
    "node": "benchmarks.node",
    "tracking": "benchmarks.tracking",
    "soak": "benchmarks.soak",
    "codecs": "benchmarks.codecs",
}


def tables(paths: list[str]) -> int:
    """``python -m benchmarks tables FILE.json ...``: the markdown of written reports."""
    from benchmarks.harness import render

    for p in paths:
        print(render(json.loads(Path(p).read_text())) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tables"]:
        return tables(argv[1:])
    if not argv or argv[0] not in SUITES:
        print(f"usage: python -m benchmarks {{{','.join(SUITES)}}} [flags]   (<suite> --help for its flags)")
        print("       python -m benchmarks tables REPORT.json ...   (markdown of written reports)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    # Suites import their dependencies (rclpy, Triton, ...) only when chosen.
    return importlib.import_module(SUITES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
