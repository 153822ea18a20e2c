"""The codecs suite's decode part (no ROS): one row per input kind, sizes and times that mean something."""

from __future__ import annotations

import json

from benchmarks import codecs as suite


def test_decode_part_rows(tmp_path, capsys):
    assert suite.main(["--quick", "--parts", "decode", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "codecs.json").read_text())
    rows = {(r["input"], r["codec"]): r for r in data["rows"]}
    assert set(rows) == {("colour", "jpeg q95"), ("colour", "png l3"), ("depth", "compressedDepth png l3")}
    for r in rows.values():
        assert r["image"] == "320x240" and r["kb"] > 0 and r["decode_ms"] > 0 and r["raw_to_array_ms"] > 0
        assert r["decode_p95_ms"] >= r["decode_ms"]
    # jpeg at quality 95 is lossy: smaller than the lossless png of the same frames
    assert rows[("colour", "jpeg q95")]["kb"] < rows[("colour", "png l3")]["kb"]
    assert rows[("depth", "compressedDepth png l3")]["ratio"] > 1.0
    assert "decode cost per frame" in capsys.readouterr().out
