"""bench/module_memory.py in its CPU short mode: every probe runs, the table prints, the JSON is written
(the memory columns are only measured on CUDA)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_module_memory_cpu(tmp_path):
    script = REPO / "bench" / "module_memory.py"
    cmd = [sys.executable, str(script), "--device", "cpu", "--out", str(tmp_path)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads((tmp_path / "module_memory.json").read_text())
    ops = [r["op"] for r in report["rows"]]
    assert ops[0].startswith("CUDA context")
    # The op kinds the fast forward uses, including the heavy-module ones it may replace.
    for name in ("topk (GAFA kNN)", "cumsum int32", "scatter_", "gather", "F.linear fp16", "softmax fp32"):
        assert name in ops, name
    assert sorted(report["ranked"]) == sorted(ops[1:])
    assert "torch" in report and "CUDA_MODULE_LOADING" in report
    assert "| op | group | delta_mb" in res.stdout
