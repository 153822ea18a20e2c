"""Suite ``forward``: the estimator's forward (``PoseEstimator.predict``) per mode and object count.

Each source tree runs in its own worker process (``benchmarks/worker.py`` with ``PYTHONPATH=<tree>``): the
current checkout and, with ``--baseline-root DIR``, an older checkout in the same run. Both workers build the
parity-rule weights of their tree (checked equal) and read the same inputs from one fixture file; the
parent alternates between them (order flipped every row and round) and the table shows both trees and
the ratio current / baseline, with the largest difference of their poses.

    python -m benchmarks forward --objects 1 6 16 --iterations 100 --out docs/results/h200
    python -m benchmarks forward --baseline-root /tmp/before --rounds 3     # before/after, one run
    python -m benchmarks forward --quick --out /tmp/b                       # CPU short mode
    python -m benchmarks forward --family selfsup [--selfsup-config selfsup_study]  # the selfsup family

``--family selfsup`` times ``SelfSupEstimator.predict`` in this process (no tree workers, no baseline): seeded
weights of the named network config and seeded inputs of its crop size and point count (its speed does not
depend on the weights' values; the pose read-out's Umeyama runs on whatever pairs the cycle filter keeps).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import harness
from benchmarks.fixtures import REPO, write_forward_fixture

WORKER = Path(__file__).resolve().parent / "worker.py"
MODES = ("exact", "fast")


class TreeProcess:
    """A worker process whose ``cleanpose_model`` comes from ``root``."""

    def __init__(self, name: str, root: Path, fixture: Path, device: str, variant: str) -> None:
        self.name, self.root = name, Path(root).resolve()
        if not (self.root / "cleanpose_model" / "__init__.py").is_file():
            raise SystemExit(
                f"{self.root} holds no cleanpose_model package (--baseline-root: a checkout's root)"
            )
        env = {**os.environ, "PYTHONPATH": str(self.root), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            env=env,
            cwd=self.root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self.request(op="setup", fixture=str(fixture), device=device, variant=variant)
        tree = Path(self.info["tree"]).resolve()
        # The import must come from the tree asked for, not from an installed copy of the project.
        if self.root not in tree.parents:
            self.close()
            raise RuntimeError(f"{name}: cleanpose_model was imported from {tree}, not from {self.root}")

    def request(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("@@bench "):
                reply = json.loads(line[len("@@bench ") :])
                if "error" in reply:
                    raise RuntimeError(f"{self.name} worker ({self.root}) failed on {req}:\n{reply['error']}")
                return reply
            sys.stdout.write(f"[{self.name}] {line}")
        raise RuntimeError(f"{self.name} worker ({self.root}) exited with {self.proc.wait()} during {req}")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError):  # it died already: nothing to ask
                self.request(op="quit")
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tree_roots(baseline_root: Path | None) -> list[tuple[str, Path]]:
    roots = [("current", REPO)]
    if baseline_root is not None:
        roots.append(("baseline", Path(baseline_root).resolve()))
    return roots


def check_same_weights(procs: list[TreeProcess]) -> None:
    sums = {p.name: p.info["weights_checksum"] for p in procs}
    if len(set(sums.values())) > 1:
        raise RuntimeError(f"the trees built different parity weights: {sums}")


def max_pose_difference(a: dict, b: dict) -> float:
    """Largest absolute difference between two trees' rotation / translation / size outputs."""
    return max(abs(x - y) for k in a for ra, rb in zip(a[k], b[k]) for x, y in zip(ra, rb))


def modes_for(device: str, modes: list[str], report: harness.Report) -> list[str]:
    if device.startswith("cuda"):
        return modes
    if "fast" in modes:
        report.note("fast mode runs the exact network on the CPU: only 'exact' is measured there")
    return ["exact"]


# The published rows: its code's default flags (it sets none: torch's defaults, cuDNN TF32 on), and TF32
# off for matmul and cuDNN (the fp32 comparison for our exact mode).
PUBLISHED_FLAGS = (("published", None), ("published_tf32_off", False))


def published_comparisons(
    report: harness.Report, outputs: dict, modes: list[str], objects: list[int]
) -> None:
    """Speed-ups of our modes over each published row (published / ours, medians of this run) and the
    largest pose difference between them."""
    index = {(r["tree"], r["mode"], r["objects"]): r for r in report.rows}
    out = []
    for n in objects:
        for flags, _ in PUBLISHED_FLAGS:
            pub = index.get(("published", flags, n))
            for mode in modes:
                ours = index.get(("current", mode, n))
                if pub is None or ours is None:
                    continue
                out.append(
                    {
                        "objects": n,
                        "published": flags,
                        "ours": mode,
                        "published_median_ms": pub["median_ms"],
                        "ours_median_ms": ours["median_ms"],
                        "speedup": pub["median_ms"] / ours["median_ms"],
                        "max_pose_diff": max_pose_difference(
                            outputs[("published", flags, n)], outputs[("current", mode, n)]
                        ),
                    }
                )
    report.data["published_comparisons"] = out
    if not out:
        report.note("no published comparison: no row of ours beside a published row")
        return
    print(
        "\n## Ours vs the published forward (published / ours, same run)\n\n"
        + report.table(out, list(out[0]))
    )


def profiles(proc: TreeProcess, modes: list[str], objects: list[int], iterations: int) -> list[dict]:
    """The worker's ``profile`` op per mode, object count and form (graphed, eager), printed as a summary
    table (GPU-busy vs wall: what is left above the busy time is launch and host time) and the top kernels."""
    out = []
    for mode in modes:
        for n in objects:
            for graphs in (True, False):
                out.append(
                    proc.request(op="profile", mode=mode, objects=n, iterations=iterations, graphs=graphs)
                )
    summary = [
        {
            "mode": p["mode"],
            "objects": p["objects"],
            "form": "graphed" if p["graphs"] else "eager",
            "wall_ms": p["wall_ms_median"],
            "device_busy_ms": p["device_busy_ms"],
            "busy_share": p["device_busy_ms"] / p["wall_ms_median"],
            "kernels_per_call": p["kernels_per_call"],
        }
        for p in out
    ]
    print("\n## Profile: device-busy time per forward vs wall (torch.profiler, current tree)\n")
    print(harness.Report.table(summary, list(summary[0])))
    for p in out:
        if p["graphs"]:
            continue  # the eager run names the same kernels by the ops that launch them
        print(f"\n### Top kernels, {p['mode']}, {p['objects']} objects (eager; per call)\n")
        print(harness.Report.table(p["top"], ["kernel", "calls", "us_per_call", "share"]))
    return out


def add_tree_arguments(ap) -> None:
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--variant", default="cleanpose", choices=("cleanpose", "agpose"))
    ap.add_argument(
        "--baseline-root",
        type=Path,
        default=None,
        help="root of a second checkout (e.g. an older commit) measured in the same run; rows 'baseline'",
    )


def selfsup_rows(args, report: harness.Report, device: str) -> None:
    """Rows of the selfsup family: exact mode, one per object count."""
    import torch

    from cleanpose_model.families.selfsup import SelfSupEstimator
    from cleanpose_model.types import ObjectBatch

    est = SelfSupEstimator.from_config(args.selfsup_config, device=device, seed=0)
    side, n_pts = est.inputs.image_size, est.inputs.n_points
    for n in args.objects:
        g = torch.Generator().manual_seed(n)
        batch = ObjectBatch(
            rgb=torch.randn(n, 3, side, side, generator=g).to(device),
            pts=(torch.rand(n, n_pts, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.6])).to(device),
            choose=torch.randint(0, side * side, (n, n_pts), generator=g).to(device),
            category=torch.arange(n).remainder(len(est.categories)).to(device),
        )
        samples = harness.time_call(
            lambda b=batch: est.predict(b), device, warmup=args.warmup, iterations=args.iterations
        )
        report.add(tree="current", mode="exact", objects=n, **harness.summarize(samples))
    report.data["selfsup_config"] = args.selfsup_config


def main(argv: list[str] | None = None) -> int:
    ap = harness.common_parser("forward", __doc__.splitlines()[0])
    add_tree_arguments(ap)
    ap.add_argument("--family", default="cleanpose", choices=("cleanpose", "selfsup"))
    ap.add_argument("--selfsup-config", default="selfsup", help="--family selfsup: the network config")
    ap.add_argument(
        "--rounds", type=int, default=None, help="passes over all rows (default 3 with a baseline, else 1)"
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile before CUDA graph capture (CUDA)")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="K",
        help="after the timing rows: torch.profiler over K calls per mode and object count of the current "
        "tree, graphed and eager (GPU-busy time vs wall, kernels per call, top kernels): 'profiles' in the "
        "JSON",
    )
    ap.add_argument(
        "--published-root",
        type=Path,
        default=None,
        help="a checkout of the published CleanPose code (extension built; never committed): its forward "
        "with our weights and inputs, in the current tree's process, rows 'published' (default flags) and "
        "'published_tf32_off' (benchmarks/published.py)",
    )
    ap.add_argument(
        "--published-dinov2",
        type=Path,
        default=None,
        help="a facebookresearch/dinov2 checkout for the published network's backbone (default: our "
        "reference ViT, same weights)",
    )
    args = harness.finish_args(ap.parse_args(argv), objects=[1, 6, 16], quick_objects=[1, 2])
    from cleanpose_model.device import resolve_device

    device = str(resolve_device(args.device).device)
    rounds = args.rounds or (3 if args.baseline_root else 1)
    report = harness.Report("forward", args, device)
    if args.family == "selfsup":
        selfsup_rows(args, report, device)
        for r in report.rows:
            r["per_object_ms"] = r["median_ms"] / r["objects"] if r["objects"] else None
        gpu = report.data["machine"].get("gpu", device)
        title = f"Forward (predict), {gpu}, selfsup ({args.selfsup_config})"
        report.print_rows(
            ["tree", "mode", "objects", "median_ms", "p5_ms", "p95_ms", "per_object_ms", "n"], title
        )
        report.suite = "forward_selfsup"  # its own JSON: forward.json stays the CleanPose family's
        report.write(args.out)
        return 0
    modes = modes_for(device, args.modes, report)
    samples: dict[tuple[str, str, int], list[float]] = {}
    outputs: dict[tuple[str, str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="cleanpose_bench_") as tmp:
        fixture = write_forward_fixture(Path(tmp) / "forward_inputs.pt", args.objects)
        procs: list[TreeProcess] = []
        try:
            for name, root in tree_roots(args.baseline_root):
                procs.append(TreeProcess(name, root, fixture, device, args.variant))
            check_same_weights(procs)
            report.data["trees"] = {p.name: {"root": str(p.root), **p.info} for p in procs}
            if args.published_root is not None:
                report.data["published"] = procs[0].request(
                    op="published_setup",
                    root=str(args.published_root.resolve()),
                    dinov2=str(args.published_dinov2.resolve()) if args.published_dinov2 else None,
                )
            step = 0
            for _ in range(rounds):
                for mode in modes:
                    for n in args.objects:
                        # Alternate which tree goes first, so neither always runs on a just-warmed GPU.
                        order = procs if step % 2 == 0 else procs[::-1]
                        step += 1
                        for p in order:
                            r = p.request(
                                op="time",
                                mode=mode,
                                objects=n,
                                warmup=args.warmup,
                                iterations=args.iterations,
                                compile=args.compile,
                            )
                            samples.setdefault((p.name, mode, n), []).extend(r["samples_ms"])
                            outputs[(p.name, mode, n)] = r["outputs"]
                if args.published_root is not None:
                    for n in args.objects:
                        for flags, tf32 in PUBLISHED_FLAGS:
                            r = procs[0].request(
                                op="time_published",
                                objects=n,
                                warmup=args.warmup,
                                iterations=args.iterations,
                                tf32=tf32,
                            )
                            samples.setdefault(("published", flags, n), []).extend(r["samples_ms"])
                            outputs[("published", flags, n)] = r["outputs"]
            if args.profile:
                report.data["profiles"] = profiles(procs[0], modes, args.objects, args.profile)
        finally:
            for p in procs:
                p.close()
    for (tree, mode, n), s in samples.items():
        report.add(tree=tree, mode=mode, objects=n, **harness.summarize(s))
    for r in report.rows:
        r["per_object_ms"] = r["median_ms"] / r["objects"] if r["objects"] else None
        exact = outputs.get((r["tree"], "exact", r["objects"]))
        if r["mode"] != "exact" and exact is not None:
            # How far the mode's poses are from the exact ones on the same inputs (rotation entries, metres).
            r["max_pose_diff_vs_exact"] = max_pose_difference(
                outputs[(r["tree"], r["mode"], r["objects"])], exact
            )
    report.rows.sort(key=lambda r: (r["mode"], r["objects"], r["tree"]))
    title = f"Forward (predict), {report.data['machine'].get('gpu', device)}, {args.variant}"
    cols = [
        "tree",
        "mode",
        "objects",
        "median_ms",
        "p5_ms",
        "p95_ms",
        "per_object_ms",
        "n",
        "max_pose_diff_vs_exact",
    ]
    report.print_rows(cols, title)
    if args.baseline_root:
        for c in report.compare(key=("mode", "objects"), between="tree", base="baseline", other="current"):
            key = (c["mode"], c["objects"])
            c["max_pose_diff"] = max_pose_difference(outputs[("current", *key)], outputs[("baseline", *key)])
        report.print_comparisons(("mode", "objects"), "Current tree vs baseline tree")
    if args.published_root:
        published_comparisons(report, outputs, modes, args.objects)
    report.write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
