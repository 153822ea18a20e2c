"""benchmarks.harness: statistics, timing, same-run comparisons and the JSON report."""

from __future__ import annotations

import json

import pytest

from benchmarks import harness


def test_summarize_percentiles():
    s = harness.summarize(float(x) for x in range(1, 102))  # 1 .. 101 ms
    assert s["n"] == 101
    assert s["median_ms"] == 51.0 and s["p5_ms"] == 6.0 and s["p95_ms"] == 96.0
    assert s["min_ms"] == 1.0 and s["max_ms"] == 101.0 and s["mean_ms"] == 51.0
    with pytest.raises(ValueError):
        harness.summarize([])


def test_time_call_warms_up_then_times_each_call():
    calls = []
    samples = harness.time_call(lambda: calls.append(1), "cpu", warmup=3, iterations=5)
    assert len(calls) == 8 and len(samples) == 5 and all(t >= 0 for t in samples)
    with pytest.raises(ValueError):
        harness.time_call(lambda: None, "cpu", warmup=0, iterations=0)


def _report():
    return harness.Report("unit", None, "cpu")


def test_compare_only_between_rows_present_in_the_run():
    r = _report()
    r.add(tree="baseline", mode="exact", objects=1, median_ms=10.0)
    r.add(tree="current", mode="exact", objects=1, median_ms=9.0)
    r.add(tree="current", mode="exact", objects=6, median_ms=20.0)  # no baseline row for 6 objects
    r.add(tree="baseline", mode="fast", objects=1, median_ms=0.0)  # not a usable base
    r.add(tree="current", mode="fast", objects=1, median_ms=4.0)
    out = r.compare(key=("mode", "objects"), between="tree", base="baseline", other="current")
    assert len(out) == 1
    c = out[0]
    assert (c["mode"], c["objects"]) == ("exact", 1)
    assert c["ratio"] == pytest.approx(0.9)
    assert c["baseline_median_ms"] == 10.0 and c["current_median_ms"] == 9.0
    assert r.comparisons == out


def test_write_json_and_table(tmp_path):
    r = _report()
    r.add(form="a", objects=2, median_ms=1.5, extra=None)
    r.note("why something is missing")
    path = r.write(tmp_path)
    data = json.loads(path.read_text())
    assert path.name == "unit.json"
    assert data["suite"] == "unit" and data["rows"] == [
        {"form": "a", "objects": 2, "median_ms": 1.5, "extra": None}
    ]
    assert data["notes"] == ["why something is missing"] and data["machine"]["device"] == "cpu"
    assert data["run_id"] and data["finished_utc"]
    table = harness.Report.table(r.rows, ["form", "objects", "median_ms", "missing"])
    assert table.splitlines()[2] == "| a | 2 | 1.500 | - |"


def test_finish_args_quick_mode():
    ap = harness.common_parser("unit", "test")
    args = harness.finish_args(
        ap.parse_args(["--quick", "--device", "cuda"]), objects=[1, 6], quick_objects=[1]
    )
    assert (args.device, args.objects, args.iterations, args.warmup) == ("cpu", [1], 2, 1)
    args = harness.finish_args(ap.parse_args(["--objects", "3", "4"]), objects=[1, 6], quick_objects=[1])
    assert args.objects == [3, 4] and args.iterations == 50


def test_tables_render_written_report(tmp_path):
    r = _report()
    r.add(tree="baseline", objects=1, median_ms=10.0, stages={"nested": 1.0})
    r.add(tree="current", objects=1, median_ms=8.0)
    r.compare(key=("objects",), between="tree", base="baseline", other="current")
    path = r.write(tmp_path)
    from benchmarks.__main__ import main

    md = harness.render(json.loads(path.read_text()))
    lines = md.splitlines()
    assert "| tree | objects | median_ms |" in lines  # nested values stay in the JSON only
    assert "| baseline | 1 | 10.000 |" in lines and "| current | 1 | 8.000 |" in lines
    assert "Same-run ratios, current / baseline:" in lines and "| 1 | 10.000 | 8.000 | 0.800 |" in lines
    assert main(["tables", str(path)]) == 0
