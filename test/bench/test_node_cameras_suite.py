"""The node suite's several-cameras DDS part (benchmarks/node_dds.py --cameras): one node, two replayers,
every set answered by both cameras, the node's forwards counted per set (1.0 = one forward per cycle)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.ros
def test_node_suite_two_cameras(tmp_path, ros_overlay):
    cmd = [sys.executable, "-m", "benchmarks", "node", "--quick", "--parts", "dds", "--cameras", "2"]
    cmd += ["--nodes", "stub", "--rates", "max", "--objects", "2", "--out", str(tmp_path)]
    # a domain of its own: other nodes named cleanpose_node on the default domain would answer the
    # replayers' /diagnostics
    env = {**os.environ, "ROS_DOMAIN_ID": "67"}
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((tmp_path / "node.json").read_text())
    (row,) = [r for r in data["rows"] if r["part"] == "dds"]
    assert (row["cameras"], row["node"], row["rate"]) == (2, "stub", "max")
    assert row["sent"] == row["received"] == 6 and row["dropped"] == 0
    assert 0 < row["p5_ms"] <= row["median_ms"] <= row["p95_ms"] <= row["max_ms"]
    # closed loop: each set waits for both answers, so the node sees both cameras' sets of one cycle together
    # (camera_wait); a forward per camera set would read 2.0
    assert row["forwards_per_set"] == pytest.approx(1.0, abs=0.34), row
    assert row["sets_per_forward"] == pytest.approx(2.0, abs=0.5), row
    assert "2 cameras through one node" in res.stdout
