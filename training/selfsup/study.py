"""The issue-16 study: the self-supervised family against a supervised CleanPose, under domain shift, and
its ablations, all evaluated with the NOCS metrics on held-out labelled synthetic frames.

    python -m cleanpose_training.selfsup.study data DATA [--smoke]  # renders: needs Open3D (not the GPU box)
    python -m cleanpose_training.selfsup.study run OUT --data DATA [--smoke] [--device cuda]

``data`` writes three NOCS-layout roots of 160x120 frames (``--smoke``: a few 128x96 frames):
``DATA/shapes`` (stage 1's labelled single shapes: the ShapeNet stand-in), ``DATA/a`` (style a: ``train`` +
held-out ``test``) and ``DATA/b`` (style b, the second domain: ``train`` + ``test``). Every split has its own
seed, so no test scene is a training scene.

``run`` trains, in three phases of concurrent processes on one device:
  1. selfsup stage 1 on DATA/shapes (``T1`` s), alongside the supervised baseline on DATA/a train WITH
     labels (T1 + T2 s, running through phase 2)
  2. from the stage-1 model, stage 2 (``T2`` s each, no pose label): full on DATA/a, full on DATA/b, and the
     four ablations on DATA/a (``train.ABLATIONS``)
  3. evaluation of every model on the held-out test splits (``cleanpose_training.evaluation.evaluate``)
and writes ``OUT/study.md`` + ``OUT/study.json`` (the tables), ``OUT/selfsup_demo.safetensors`` (the full
model trained on DATA/a: the demo checkpoint) with its model card ``OUT/selfsup_demo.md``, and each run's
log, scalars and losses plot under ``OUT/runs``. Budgets are wall-clock (``--t1``, ``--t2``); runs of a phase
share the device and the CPU cores, under the same conditions. ``--smoke`` runs the same pipeline with the
tiny network and two steps per run (CPU tests)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METRICS = (
    ("IoU25", "nocs_iou_25"),
    ("IoU50", "nocs_iou_50"),
    ("5°2cm", "5deg_2cm"),
    ("5°5cm", "5deg_5cm"),
    ("10°2cm", "10deg_2cm"),
    ("10°5cm", "10deg_5cm"),
)
# (root, split, seed, scenes, frames per scene, style); smoke: (scenes, frames) replaced by (1, 3) / (1, 2).
# Sized so that the whole set, packed with xz (~20 MB), travels to a GPU machine beside the ~40 MB working
# tree under a 64 MiB transfer limit (the rendering needs Open3D, which that machine lacks).
SPLITS = (
    ("shapes", "train", 7, 12, 10, "a"),
    ("a", "train", 0, 12, 10, "a"),
    ("a", "test", 1, 6, 8, "a"),
    ("b", "train", 2, 12, 10, "b"),
    ("b", "test", 3, 6, 8, "b"),
)
ABLATION_RUNS = ("fixed_prior", "frozen_memory", "no_cfco", "coarse_only")


def make_data(out: Path, smoke: bool = False) -> dict:
    """Render the study's splits; returns {"<root>/<split>": seconds}."""
    from cleanpose_training.synthetic.__main__ import generate_nocs

    times = {}
    for root, split, seed, scenes, frames, style in SPLITS:
        t0 = time.perf_counter()
        size = dict(width=128, height=96, shadows=False) if smoke else dict(width=160, height=120)
        generate_nocs(
            out / root, split=split, seed=seed, scenes=1 if smoke else scenes,
            frames=(2 if split == "test" else 3) if smoke else frames, style=style,
            write_results=split == "test", progress=not smoke, **size,
        )  # fmt: skip
        times[f"{root}/{split}"] = round(time.perf_counter() - t0, 1)
        print(f"[study data] {root}/{split}: {times[f'{root}/{split}']} s", flush=True)
    return times


class Runner:
    """Concurrent processes with logs; every run's wall time is recorded."""

    def __init__(self, out: Path, env: dict):
        self.out, self.env = out, env
        self.times: dict[str, float] = {}

    def start(self, name: str, cmd: list[str]):
        log = self.out / "runs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = log.open("w")
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        return name, proc, fh, time.perf_counter(), log

    def run_all(self, named_cmds: dict[str, list[str]], jobs: int, also=()) -> None:
        """Every command, at most ``jobs`` at a time; then wait for ``also`` (jobs started earlier)."""
        pending, running, done = list(named_cmds.items()), [], []
        while pending or running:
            while pending and len(running) < max(1, jobs):
                running.append(self.start(*pending.pop(0)))
            finished = [j for j in running if j[1].poll() is not None]
            for j in finished:
                running.remove(j)
                done.append(j)
                self.times[j[0]] = round(time.perf_counter() - j[3], 1)  # when it ended, not when collected
            if not finished:
                time.sleep(0.2)
        self.wait([*done, *also])

    def wait(self, jobs) -> None:
        failed = []
        for name, proc, fh, t0, log in jobs:
            rc = proc.wait()
            fh.close()
            self.times.setdefault(name, round(time.perf_counter() - t0, 1))
            print(f"[study] {name}: rc {rc}, {self.times[name]} s", flush=True)
            if rc != 0:
                failed.append(f"{name} (rc {rc}): {log}\n" + "".join(log.read_text().splitlines(True)[-15:]))
        if failed:
            raise RuntimeError("study runs failed:\n" + "\n".join(failed))


def _selfsup(args, stage: int, out: Path, data: Path, budget: float, *extra: str) -> list[str]:
    cfg = "training/configs/selfsup_smoke.yaml" if args.smoke else "training/configs/selfsup_study.yaml"
    workers = args.stage1_workers if stage == 1 and args.stage1_workers is not None else args.workers
    cmd = [sys.executable, "-m", "cleanpose_training.selfsup.train", "--stage", str(stage), "--config", cfg,
           "--out", str(out), "--data", str(data), "--device", args.device, "--no-progress",
           "--workers", str(workers)]  # fmt: skip
    cmd += ["--iterations", "2"] if args.smoke else ["--time-budget", str(budget)]
    return cmd + list(extra)


def _supervised(args, out: Path, data: Path, budget: float) -> list[str]:
    cmd = [sys.executable, "-m", "cleanpose_training.train", "--config",
           "training/configs/selfsup_study_supervised.yaml", "--no-eval", "--device", args.device,
           "--set", f"data.sources.0.data_dir={data}", "--set", f"trainer.out_dir={out}",
           "--set", f"trainer.workers={args.workers}"]  # fmt: skip
    if args.smoke:
        return [*cmd, "--iterations", "2", "--set", "schedule.time_budget_s=null", "--set",
                "data.sources.0.batch_size=2"]  # fmt: skip
    return [*cmd, "--set", f"schedule.time_budget_s={budget}"]


def _evaluate(args, ckpt: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cleanpose_training.evaluation.evaluate", "--checkpoint", str(ckpt),
            "--data", str(data), "--dataset", "synthetic", "--split", "test", "--out", str(out),
            "--device", args.device, "--no-plot"]  # fmt: skip


def _steps(run: Path) -> int | None:
    scalars = run / "scalars.csv"
    if (run / "train_summary.json").is_file():
        return json.loads((run / "train_summary.json").read_text()).get("iterations")
    if scalars.is_file():
        rows = list(csv.DictReader(scalars.open()))
        return int(rows[-1]["step"]) if rows else 0
    return None


def _step_timing(run: Path) -> dict | None:
    """Median step time and median Hungarian time of a selfsup run (the issue's check that the assignment
    does not dominate a step, measured where the study runs)."""
    import statistics

    scalars = run / "scalars.csv"
    if not scalars.is_file():
        return None
    rows = list(csv.DictReader(scalars.open()))
    if not rows or "step_s" not in rows[0]:
        return None
    step = statistics.median(float(r["step_s"]) for r in rows)
    out = {"median_step_s": round(step, 4)}
    if "hungarian_s" in rows[0]:
        hung = statistics.median(float(r["hungarian_s"]) for r in rows)
        out["median_hungarian_s"] = round(hung, 4)
        out["hungarian_share"] = round(hung / step, 3) if step else None
    return out


def run_study(args) -> dict:
    out, data = Path(args.out).resolve(), Path(args.data).resolve()
    for root in ("shapes", "a", "b"):
        if not (data / root / "train_list_all.txt").is_file():
            raise SystemExit(f"{data / root}: no study data; make it with `study data {data}`")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    runner, runs = Runner(out, env), out / "runs"
    t_all = time.perf_counter()
    t1, t2 = args.t1, args.t2
    print(f"[study] budgets: stage 1 {t1} s, stage 2 {t2} s per run, supervised {t1 + t2} s", flush=True)
    sup = runner.start("supervised_a", _supervised(args, runs / "supervised_a", data / "a", t1 + t2))
    runner.wait([runner.start("stage1", _selfsup(args, 1, runs / "stage1", data / "shapes", t1))])
    init = runs / "stage1" / "model.safetensors"
    phase2 = {"selfsup_a": (data / "a", ()), "selfsup_b": (data / "b", ())}
    phase2 |= {f"ablation_{a}": (data / "a", ("--ablation", a)) for a in ABLATION_RUNS}
    runner.run_all(
        {
            name: _selfsup(args, 2, runs / name, root, t2, "--init", str(init), *extra)
            for name, (root, extra) in phase2.items()
        },
        args.jobs,
        also=[sup],
    )
    ckpt = {name: runs / name / "model.safetensors" for name in ("stage1", *phase2)}
    ckpt["supervised_a"] = runs / "supervised_a" / "final.safetensors"
    evals = {f"{m}@a": (m, "a") for m in ckpt}
    evals |= {f"{m}@b": (m, "b") for m in ("supervised_a", "selfsup_a", "selfsup_b")}
    ev_dir = out / "eval"
    runner.run_all(
        {f"eval_{k}": _evaluate(args, ckpt[m], data / s, ev_dir / k) for k, (m, s) in evals.items()},
        args.jobs,
    )
    metrics = {}
    for k in evals:
        mean = json.loads((ev_dir / k / "metrics.json").read_text())["mean"]
        metrics[k] = {label: mean.get(key) for label, key in METRICS}
    result = {
        "device": args.device,
        "smoke": args.smoke,
        "budgets_s": {"stage1": t1, "stage2_per_run": t2, "supervised": t1 + t2},
        "steps": {name: _steps(runs / name) for name in ckpt},
        "step_timing": {name: _step_timing(runs / name) for name in ckpt if name != "supervised_a"},
        "wall_s": {**runner.times, "total": round(time.perf_counter() - t_all, 1)},
        "metrics": metrics,
        "test_images": {s: len((data / s / "test_list_all.txt").read_text().split()) for s in ("a", "b")},
        "oracle": oracle_study(data / "a", {name: ckpt[name] for name in ORACLE_RUNS}),
    }
    demo = out / "selfsup_demo.safetensors"
    shutil.copyfile(ckpt["selfsup_a"], demo)
    result["demo_checkpoint"] = {"path": demo.name, "bytes": demo.stat().st_size}
    (out / "study.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    (out / "study.md").write_text(tables(result))
    (out / "selfsup_demo.md").write_text(model_card(result, args))
    print(tables(result), flush=True)
    return result


# The tables of study.md: (heading, rows); a row (label, run, style) shows the run's metrics on the test
# images of that style and the run's step count.
_TABLES = (
    (
        "Self-supervised (no pose label) vs supervised (labels), trained on style a, tested on style a",
        (
            ("selfsup: stage 1 only (no stage 2)", "stage1", "a"),
            ("selfsup: full, stage 2 on style a (no pose)", "selfsup_a", "a"),
            ("supervised CleanPose (demo net), style a with labels", "supervised_a", "a"),
        ),
    ),
    (
        "Domain shift: tested on style b",
        (
            ("supervised, trained on style a (labels)", "supervised_a", "b"),
            ("selfsup, stage 2 on style a", "selfsup_a", "b"),
            ("selfsup, stage 2 on style b (unlabeled)", "selfsup_b", "b"),
        ),
    ),
    (
        "Ablations (stage 2 on style a, tested on style a)",
        (("full model", "selfsup_a", "a"), *((a, f"ablation_{a}", "a") for a in ABLATION_RUNS)),
    ),
)


# Runs whose read-out is also scored with ground-truth parts swapped in (cleanpose_training.selfsup.oracle):
# where the accuracy is lost, the reconstruction or the correspondences.
ORACLE_RUNS = ("stage1", "selfsup_a")


def oracle_study(root: Path, ckpts: dict[str, Path]) -> dict:
    """{run: oracle.run(...)} on the style-a test frames (CPU, in this process: seconds per run)."""
    from cleanpose_model.families.selfsup import load_selfsup_net
    from cleanpose_training.selfsup import oracle

    out = {}
    for name, path in ckpts.items():
        try:  # a diagnostic: its failure must not cost the study's results
            out[name] = oracle.run(root, "test", load_selfsup_net(path).eval())
        except Exception as e:
            out[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"[study] oracle of {name} failed: {out[name]['error']}", flush=True)
    return out


def _row(name: str, m: dict, steps) -> str:
    cells = ["–" if m.get(label) is None else f"{m[label]:.1f}" for label, _ in METRICS]
    return f"| {name} | " + " | ".join(cells) + f" | {steps if steps is not None else '–'} |"


def tables(r: dict) -> str:
    m, st = r["metrics"], r["steps"]
    head = "| model | " + " | ".join(label for label, _ in METRICS) + " | steps |\n|---|" + "---|" * 7
    b = r["budgets_s"]
    budgets = (
        "SMOKE: 2 steps per run (the numbers below mean nothing)"
        if r["smoke"]
        else f"Budgets: stage 1 {b['stage1']} s, each stage-2 run {b['stage2_per_run']} s, supervised "
        f"{b['supervised']} s (wall clock, concurrent runs sharing one device)"
    )
    lines = [
        f"# Self-supervised study ({'SMOKE, ' if r['smoke'] else ''}device {r['device']}, "
        f"total {r['wall_s']['total']} s)",
        "",
        f"{budgets}. Mean AP (%) over the categories with ground truth, on held-out frames "
        f"({r['test_images']['a']} style-a, {r['test_images']['b']} style-b test images, never trained on).",
    ]
    for heading, rows in _TABLES:
        lines += ["", f"## {heading}", "", head]
        lines += [_row(label, m[f"{run}@{style}"], st[run]) for label, run, style in rows]
    if r.get("oracle"):
        from cleanpose_training.selfsup.oracle import table

        lines += ["", "## Oracle read-out (style-a test): ground truth swapped in for the shape or the "
                  "correspondences", ""]  # fmt: skip
        for run, res in r["oracle"].items():
            text = res["error"] if "error" in res else table(res).rstrip("\n")
            lines += [f"{run}:", "", text, ""]
    return "\n".join(lines) + "\n"


def model_card(r: dict, args) -> str:
    m = r["metrics"]["selfsup_a@a"]
    cfg = "selfsup_smoke.yaml" if r["smoke"] else "selfsup_study.yaml"
    what = "SMOKE run: not a trained model" if r["smoke"] else "issue-16 study"
    return (
        f"""# selfsup demo checkpoint ({what})

- Family `selfsup` (part-level shape memory + coarse-to-fine correspondences), loadable with
  `cleanpose_model.estimator.load_estimator` (safetensors; the node's `checkpoint` parameter).
- Network: `cleanpose_model/configs/{"selfsup_tiny" if r["smoke"] else "selfsup_study"}.yaml`; training
  config `training/configs/{cfg}`; {r["demo_checkpoint"]["bytes"] / 1e6:.1f} MB.
- Training: stage 1 ({r["steps"]["stage1"]} steps, {r["budgets_s"]["stage1"]} s) on pre-rendered labelled
  procedural shapes; stage 2 ({r["steps"]["selfsup_a"]} steps, {r["budgets_s"]["stage2_per_run"]} s) on
  style-a synthetic 160x120 frames with NO pose label (colour, depth, masks, categories, intrinsics), device
  {r["device"]}. Data: `python -m cleanpose_training.selfsup.study data` (fixed seeds).
- Held-out style-a test frames ({r["test_images"]["a"]} images), NOCS mean AP (%): """
        + ", ".join(f"{label} {'–' if v is None else f'{v:.1f}'}" for label, v in m.items())
        + """.
- Limits: synthetic objects of six NOCS categories only; not evaluated on real images.
"""
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cleanpose_training.selfsup.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="render the study's data (needs Open3D)")
    d.add_argument("out")
    d.add_argument("--smoke", action="store_true")
    r = sub.add_parser("run", help="train and evaluate everything")
    r.add_argument("out")
    r.add_argument("--data", required=True)
    r.add_argument("--smoke", action="store_true", help="tiny network, 2 steps per run (CPU tests)")
    r.add_argument("--device", default="cuda")
    r.add_argument("--t1", type=float, default=90.0, help="stage-1 budget (s)")
    r.add_argument("--t2", type=float, default=90.0, help="budget of each stage-2 run (s)")
    r.add_argument("--workers", type=int, default=2, help="data processes per run (0: none)")
    r.add_argument("--stage1-workers", type=int, help="data processes of stage 1 (default --workers)")
    r.add_argument("--jobs", type=int, default=8, help="concurrent runs of phases 2 and 3")
    r.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "data":
        make_data(Path(args.out), args.smoke)
    else:
        run_study(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
