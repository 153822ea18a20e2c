"""benchmarks forward --family selfsup: one row per object count, written to forward_selfsup.json."""

from __future__ import annotations

import json

from benchmarks import forward


def test_forward_selfsup_rows(tmp_path):
    argv = ["--family", "selfsup", "--selfsup-config", "selfsup_tiny", "--quick", "--objects", "1", "3"]
    assert forward.main([*argv, "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "forward_selfsup.json").read_text())
    rows = data["rows"]
    assert [r["objects"] for r in rows] == [1, 3]
    assert all(r["median_ms"] > 0 and r["n"] == 2 for r in rows)
    assert data["selfsup_config"] == "selfsup_tiny"
    assert not (tmp_path / "forward.json").exists()
