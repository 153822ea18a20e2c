"""``python -m benchmarks <suite> [flags]``: the one entry point of the benchmark suites."""

from __future__ import annotations

import importlib
import sys

SUITES = {
    "forward": "benchmarks.forward",
    "kernels": "benchmarks.kernels",
    "memory": "benchmarks.memory",
    "preprocess": "benchmarks.preprocess",
    "node": "benchmarks.node",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUITES:
        print(f"usage: python -m benchmarks {{{','.join(SUITES)}}} [flags]   (<suite> --help for its flags)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    # Suites import their dependencies (rclpy, Triton, ...) only when chosen.
    return importlib.import_module(SUITES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
