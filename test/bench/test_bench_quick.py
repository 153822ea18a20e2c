"""The issue-8 GPU benchmarks in their CPU short mode (CI keeps them runnable): each prints its table
and writes JSON with a number for every row it reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> str:
    cmd = [sys.executable, str(REPO / "bench" / script), *args]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


def test_perf_quick_cpu(tmp_path):
    out = _run("perf.py", "--device", "cpu", "--quick", "--cpu-inference", "--out", str(tmp_path))
    report = json.loads((tmp_path / "perf.json").read_text())
    rows = report["forward"]
    assert [r["objects"] for r in rows] == [1, 2]
    assert all(r["reference_ms"] > 0 for r in rows)
    assert report["cpu_inference"][0]["ms_per_object"] > 0
    assert (tmp_path / "perf_scaling.png").stat().st_size > 0
    assert "| objects | reference_ms" in out


def test_stage_times_quick_cpu(tmp_path):
    out = _run("stage_times.py", "--device", "cpu", "--quick", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "stage_times.json").read_text())["rows"]
    stages = {r["stage"] for r in rows}
    # Every network stage is timed, and the PointNet++ split covers each level.
    for name in ("dinov2", "iakd", "gafa", "front_door", "nocs_head", "pose_head", "pointnet2_geometry"):
        assert name in stages, name
    assert {f"sa{i}.fps" for i in range(4)} <= stages
    assert all(r["ms"] > 0 for r in rows)
    assert "| forward_serial |" in out


def test_launch_floor_quick_cpu(tmp_path):
    out = _run("launch_floor.py", "--device", "cpu", "--quick", "--out", str(tmp_path))
    row = json.loads((tmp_path / "launch_floor.json").read_text())["rows"][0]
    assert row["objects"] == 1
    # every stage runs operators; the head (transformers, GAFA, heads) runs more than DINOv2's 12 blocks
    assert row["kernels_pointnet2"] > 0 and 0 < row["kernels_dinov2"] < row["kernels_head"]
    assert "| objects | kernels_dinov2" in out


def _rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"]


def test_dinov2_fused_quick_cpu(tmp_path):
    out = _run("dinov2_fused.py", "--quick", "--out", str(tmp_path))
    rows = _rows(tmp_path / "dinov2_fused.json")
    variants = {r["variant"] for r in rows}
    assert {"autocast", "fused"} <= variants
    # both forms carry a half-precision error against fp32 tokens, bounded and of the same order
    for r in rows:
        assert r["ms"] > 0 and r["kernels"] > 0 and 0 < r["mean_abs_err"] < 1e-2
    assert "| objects | variant |" in out


def test_sa_kernels_quick_cpu(tmp_path):
    out = _run("sa_kernels.py", "--quick", "--out", str(tmp_path))
    rows = _rows(tmp_path / "sa_kernels.json")
    stages = {r["stage"] for r in rows}
    assert {f"sa{i}" for i in range(4)} <= stages
    assert all(r["torch_ms"] > 0 and r["fused_ms"] > 0 for r in rows if "torch_ms" in r)
    assert "| stage | objects |" in out


def test_glue_kernels_quick_cpu(tmp_path):
    out = _run("glue_kernels.py", "--quick", "--out", str(tmp_path))
    rows = _rows(tmp_path / "glue_kernels.json")
    assert {(r["stage"], r["form"]) for r in rows} >= {("rgb_features", "fused"), ("pose_head", "fused")}
    # on the CPU both forms are the published code path: identical outputs
    assert all(r["ms"] > 0 and r["max_diff_vs_published"] <= 1e-5 for r in rows)
    assert "| objects | stage | form |" in out
