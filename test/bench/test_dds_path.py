"""bench/dds_path.py in its CI quick mode: the real node (stub model) and the echo floor in their own
processes over DDS, latency rows for each, and the node's receive / queue / frame stages from its
/diagnostics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]


def test_dds_path_quick_mode(tmp_path, ros_overlay):
    cmd = [sys.executable, str(REPO / "bench" / "dds_path.py"), "--quick", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "| stub | max |" in out.stdout and "| echo | 30 Hz |" in out.stdout, out.stdout
    res = json.loads((tmp_path / "dds_path.json").read_text())
    assert res["image"] == [120, 160] and res["objects"] == 6
    assert res["fastdds_profile"] and res["fastdds_profile"].endswith("fastdds_large_data.xml")
    rows = {(r["node"], r["rate"]): r for r in res["rows"]}
    assert set(rows) == {("echo", "30 Hz"), ("echo", "max"), ("stub", "30 Hz"), ("stub", "max")}
    for r in rows.values():
        assert r["sent"] == 20 and r["received"] + r["dropped"] == 20
        L = r["latency_ms"]
        assert 0 < L["p50"] <= L["p95"] <= L["p99"] <= L["max"]
    assert rows[("stub", "max")]["received"] == 20  # closed loop waits for each answer
    st = rows[("stub", "max")]["stages"]
    for k in ("receive", "queue", "convert", "detections", "build_inputs", "forward", "poses"):
        assert k in st and st[k] >= 0.0, (k, st)
    # the set arrives after it was sent, and the whole frame path fits in the latency it produced
    assert 0.0 < st["receive"] < rows[("stub", "max")]["latency_ms"]["max"]
    assert not rows[("echo", "max")]["stages"]  # the echo node has no diagnostics
