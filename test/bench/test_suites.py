"""Each suite in its --quick CPU mode, run as `python -m benchmarks <suite>`: the JSON holds a positive number
for every requested row, and a ratio exactly where both of its rows were measured in the run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The commit before the estimator API split (cleanpose_model.inference.PoseEstimator + ObjectBatch).
OLD_API_COMMIT = "fd36f34"


def run_suite(suite: str, out: Path, *args: str, interpret: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", "benchmarks", suite, "--quick", "--out", str(out), *args]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((out / f"{suite}.json").read_text())
    assert data["suite"] == suite and data["machine"]["device"] == "cpu"
    return data


def _timed(row: dict) -> bool:
    return row["n"] >= 1 and 0 < row["p5_ms"] <= row["median_ms"] <= row["p95_ms"] <= row["max_ms"]


def test_forward_rows_per_count_and_no_ratio_without_baseline(tmp_path):
    data = run_suite("forward", tmp_path, "--objects", "1", "2")
    rows = data["rows"]
    # the CPU runs the exact network only: one row per count
    assert sorted((r["tree"], r["mode"], r["objects"]) for r in rows) == [
        ("current", "exact", 1),
        ("current", "exact", 2),
    ]
    assert all(_timed(r) and r["n"] == 2 for r in rows)
    assert data["trees"]["current"]["api"] == "cleanpose_model.estimator"
    assert data["comparisons"] == []


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory):
    """cleanpose_model as of OLD_API_COMMIT, from the repository's history."""
    root = tmp_path_factory.mktemp("old_tree")
    archive = subprocess.run(
        ["git", "archive", OLD_API_COMMIT, "cleanpose_model"], cwd=REPO, capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {OLD_API_COMMIT} not in this clone's history")
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


def test_forward_baseline_tree_same_run(tmp_path, old_tree):
    data = run_suite("forward", tmp_path, "--objects", "1", "--baseline-root", str(old_tree), "--rounds", "2")
    trees = data["trees"]
    # each worker imported its own tree, through the API of its time, and built the same weights
    assert trees["baseline"]["tree"] == str(old_tree / "cleanpose_model" / "__init__.py")
    assert trees["baseline"]["api"] == "cleanpose_model.inference"
    assert trees["current"]["tree"] == str(REPO / "cleanpose_model" / "__init__.py")
    assert trees["baseline"]["weights_checksum"] == trees["current"]["weights_checksum"]
    rows = {r["tree"]: r for r in data["rows"]}
    assert set(rows) == {"baseline", "current"} and all(_timed(r) and r["n"] == 4 for r in rows.values())
    (c,) = data["comparisons"]
    assert (c["mode"], c["objects"]) == ("exact", 1)
    assert c["ratio"] == pytest.approx(rows["current"]["median_ms"] / rows["baseline"]["median_ms"])
    assert 0.0 <= c["max_pose_diff"] < 1e-4  # same weights, same inputs, exact mode on both


def test_memory_fresh_process_per_count(tmp_path):
    data = run_suite("memory", tmp_path)
    rows = {r["objects"]: r for r in data["rows"]}
    assert sorted(rows) == [0, 1]
    assert all(r["rss_peak_mb"] > 100 for r in rows.values())  # the full-size network's weights alone
    # a forward adds activations to the weights-only process
    assert rows[1]["rss_peak_mb"] > rows[0]["rss_peak_mb"]
    assert data["comparisons"] == []


def test_preprocess_forms_equal_and_compared(tmp_path):
    data = run_suite("preprocess", tmp_path, "--objects", "1", "3")
    rows = {(r["form"], r["objects"]): r for r in data["rows"]}
    assert set(rows) == {("numpy", 1), ("torch", 1), ("numpy", 3), ("torch", 3)}
    assert all(_timed(r) and r["kept"] == r["objects"] for r in rows.values())
    # the torch form reproduces the numpy reference bit for bit on the same generator seed
    assert (
        rows[("torch", 1)]["max_abs_diff_vs_numpy"] == 0.0
        and rows[("torch", 3)]["max_abs_diff_vs_numpy"] == 0.0
    )
    ratios = {c["objects"]: c["ratio"] for c in data["comparisons"]}
    assert ratios.keys() == {1, 3}
    assert ratios[3] == pytest.approx(rows[("torch", 3)]["median_ms"] / rows[("numpy", 3)]["median_ms"])


def test_kernels_without_kernel_rows_no_ratio(tmp_path):
    """On the CPU without Triton's interpreter the kernels cannot run: the torch references are timed, no
    kernel row exists, so no ratio is formed, and the report says why."""
    from benchmarks.kernels import CASES

    data = run_suite("kernels", tmp_path)
    assert sorted(r["kernel"] for r in data["rows"]) == sorted(c.name for c in CASES)
    assert all(r["form"] == "torch" and _timed(r) for r in data["rows"])
    assert data["comparisons"] == []
    assert any("Triton" in n for n in data["notes"])


@pytest.mark.slow  # about 3 minutes of Triton's interpreter on 2 CPU cores
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (its CPU interpreter)")
def test_kernels_interpreted_match_references(tmp_path):
    from benchmarks.kernels import CASES

    data = run_suite("kernels", tmp_path, interpret=True)
    kernels = {r["kernel"]: r for r in data["rows"] if r["form"] == "triton"}
    assert kernels.keys() == {c.name for c in CASES}
    assert all(_timed(r) and r["max_err"] < 1e-2 for r in kernels.values())
    assert {c["kernel"] for c in data["comparisons"]} == kernels.keys()


@pytest.mark.ros
def test_node_frame_and_dds_parts(tmp_path, ros_overlay):
    data = run_suite("node", tmp_path)
    frame = [r for r in data["rows"] if r["part"] == "frame"]
    stages = {(r["scenario"], r["stage"]) for r in frame}
    for scen in ("none", "all"):
        for stage in ("convert", "detections", "build_inputs", "forward", "outputs", "total", "non_model"):
            assert (scen, stage) in stages
    assert ("all", "markers") in stages and ("none", "markers") not in stages  # built only when subscribed
    assert all(_timed(r) and r["objects"] == 3 for r in frame if r["stage"] != "non_model")
    dds = {(r["node"], r["rate"]): r for r in data["rows"] if r["part"] == "dds"}
    assert set(dds) == {("echo", "30 Hz"), ("echo", "max"), ("stub", "30 Hz"), ("stub", "max")}
    for r in dds.values():
        assert r["received"] + r["dropped"] == r["sent"] == 6 and _timed(r)
    assert dds[("stub", "max")]["received"] == 6  # the closed loop waits for each answer
    for k in ("receive", "queue", "convert", "detections", "build_inputs", "forward", "poses"):
        assert dds[("stub", "max")][k] >= 0.0, k
    assert "receive" not in dds[("echo", "max")]  # the echo node has no diagnostics
    latency = {c["rate"]: c["ratio"] for c in data["comparisons"] if c.get("between") == "node"}
    assert latency.keys() == {"30 Hz", "max"} and all(v > 0 for v in latency.values())
