"""bench/node_overhead.py in its CI quick mode: the node's frame path in-process with the stub model,
per-stage table on stdout and JSON in --out, with and without subscribers on the outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]


def test_node_overhead_quick_mode(tmp_path, ros_overlay):
    cmd = [sys.executable, str(REPO / "bench" / "node_overhead.py"), "--quick", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = ("| convert |", "| detections |", "|   pipeline.forward |", "| poses |", "| **_process total** |")
    for row in rows:
        assert row in out.stdout, out.stdout
    res = json.loads((tmp_path / "node_overhead.json").read_text())
    assert res["objects"] == 6 and res["image"] == [120, 160] and res["estimator"] == "stub"
    assert set(res["scenarios"]) == {"none", "all"}
    for name, sc in res["scenarios"].items():
        st = sc["stages"]
        assert sc["total_ms"]["n"] == res["frames"] == 6
        for k in ("convert", "detections", "pipeline", "select", "build_inputs", "forward", "outputs"):
            assert st[k]["n"] == 6 and st[k]["p50"] >= 0.0, (name, k)
        assert sc["total_ms"]["p50"] >= st["pipeline"]["p50"]
        assert sc["non_model_ms"]["p50"] <= sc["total_ms"]["p50"]
    # Subscribed, every output is built and published; with no subscriber none is built (TF included: the
    # bench's own /tf subscription is the only one). The node's diagnostics average the same stages.
    assert all(v > 0 for v in res["scenarios"]["all"]["subscriptions"].values())
    assert not any(res["scenarios"]["none"]["subscriptions"].values())
    for k in ("poses", "detections_3d", "markers", "tf", "debug_image"):
        assert res["scenarios"]["all"]["stages"][k]["n"] == 6, k
        assert k not in res["scenarios"]["none"]["stages"], k
    assert "stage_ms_pipeline" in res["diagnostics"] and "stage_ms_markers" in res["diagnostics"]
