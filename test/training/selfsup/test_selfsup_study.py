"""The issue-16 study pipeline: the GPU script's SMOKE mode end to end on the CPU (slow), and its tables."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cleanpose_training.selfsup import study

REPO = Path(__file__).resolve().parents[3]


def _result(value):
    runs = ["stage1", "selfsup_a", "selfsup_b", "supervised_a"]
    runs += [f"ablation_{a}" for a in study.ABLATION_RUNS]
    metrics = {f"{r}@a": {label: value for label, _ in study.METRICS} for r in runs}
    metrics |= {f"{r}@b": {label: value for label, _ in study.METRICS} for r in runs}
    return {
        "device": "cpu", "smoke": True, "budgets_s": {"stage1": 1, "stage2_per_run": 2, "supervised": 3},
        "steps": dict.fromkeys(runs, 2), "wall_s": {"total": 9.0}, "metrics": metrics,
        "test_images": {"a": 2, "b": 2}, "demo_checkpoint": {"path": "x", "bytes": 10},
    }  # fmt: skip


def test_tables_hold_every_run_and_mark_undefined_metrics():
    text = study.tables(_result(12.34))
    assert text.count("12.3") == (3 + 3 + 5) * len(study.METRICS)  # rows: 3 + 3 + 5 in the three tables
    for a in study.ABLATION_RUNS:
        assert f"| {a} |" in text
    assert "| – | – |" in study.tables(_result(None))


def test_tables_show_the_oracle_read_out_per_run():
    from cleanpose_training.selfsup import oracle

    one = {"ap": {c[0]: 50.0 for c in oracle.COLUMNS}, "median_rot_deg": 3.0, "median_shift_cm": 0.5,
           "median_size_ratio": 1.0, "objects": 4}  # fmt: skip
    r = _result(1.0) | {"oracle": {run: dict.fromkeys(oracle.VARIANTS, one) for run in study.ORACLE_RUNS}}
    text = study.tables(r)
    assert "## Oracle read-out" in text
    for run in study.ORACLE_RUNS:
        assert f"{run}:" in text
    assert text.count("| pred_shape+gt_corr |") == len(study.ORACLE_RUNS)
    assert "Oracle" not in study.tables(_result(1.0))


def test_a_failing_oracle_is_recorded_not_raised(tmp_path):
    r = study.oracle_study(tmp_path, {"stage1": tmp_path / "missing.safetensors"})
    assert "error" in r["stage1"]
    assert r["stage1"]["error"] in study.tables(_result(1.0) | {"oracle": r})


@pytest.mark.slow
def test_study_script_smoke_end_to_end(tmp_path):
    """SMOKE=1 scripts/selfsup_study_gpu.sh: data -> 8 training runs -> 12 evaluations -> tables, JSON, the
    demo checkpoint (servable) and its card. Minutes on a 2-core CPU: every run is its own process."""
    data = tmp_path / "data"
    study.make_data(data, smoke=True)
    out = tmp_path / "out"
    env = dict(os.environ, SMOKE="1")
    proc = subprocess.run(["bash", "scripts/selfsup_study_gpu.sh", str(out), str(data)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3000)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((out / "study.json").read_text())
    assert set(result["metrics"]) >= {"selfsup_a@a", "selfsup_b@b", "supervised_a@b", "ablation_no_cfco@a"}
    assert all(result["steps"][r] == 2 for r in ("stage1", "selfsup_a", "supervised_a"))
    assert "## Ablations" in (out / "study.md").read_text()
    assert "## Oracle read-out" in (out / "study.md").read_text()
    assert set(result["oracle"]) == set(study.ORACLE_RUNS)
    from cleanpose_model.estimator import load_estimator

    est = load_estimator(out / "selfsup_demo.safetensors")
    assert est.family.name == "selfsup"
    assert "SMOKE" in (out / "selfsup_demo.md").read_text()
    assert not list(out.glob("runs/*/train_state.pt"))
