"""cleanpose-bench: the real node over DDS on a small generated bag (numbers internally consistent), the
statistics, the accuracy scoring, and the error paths (missing topic, no ground truth)."""

from __future__ import annotations

import json
import os
from typing import ClassVar

import numpy as np
import pytest
from test_replay import write_tiny_bag

from cleanpose_tools import bench
from cleanpose_tools.replay import RunResult, SendRecord, TopicConfig, load_frames


def test_latency_and_jitter_stats():
    s = bench.latency_stats([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["p50"] == 3.0 and s["max"] == 5.0 and s["min"] == 1.0
    assert s["p50"] <= s["p95"] <= s["p99"] <= s["max"]
    assert bench.latency_stats([])["p50"] is None
    # a perfectly steady stream has no jitter whatever its rate
    assert bench.jitter_stats([0.0, 0.1, 0.2, 0.3])["max"] == pytest.approx(0.0, abs=1e-9)
    assert bench.jitter_stats([0.0, 0.1, 0.3])["mean"] == pytest.approx(100.0)


def test_run_stats_counts():
    recs = [SendRecord(i, 1 + i % 2, i, 10.0 + i * 0.1) for i in range(5)]
    for r in recs[:3]:
        r.t_recv = r.t_send + 0.05
    run = RunResult("rate", 10.0, 0, recs, 10.0, 11.0)
    st = bench.run_stats(run)
    assert (st["sent"], st["received"], st["dropped"]) == (5, 3, 2)
    assert st["latency_ms"]["p50"] == pytest.approx(50.0)
    lvo = bench.latency_by_objects(recs)
    assert sum(v["count"] for v in lvo.values()) == 3 and set(lvo) == {1, 2}


def test_accuracy_perfect_and_rotation_symmetry(tmp_path):
    bag = load_frames(write_tiny_bag(tmp_path / "bag", frames=3))
    acc = bench.score_frames([(f.index, f.gt, f.gt) for f in bag.frames])
    s = acc["per_object_success"]
    assert s["gt_objects"] == 6 and s["5deg2cm"] == 100.0 and s["iou50"] == 100.0
    assert acc["nocs_map"].get("10deg5cm") == pytest.approx(100.0)
    # about y, bottles are symmetric, laptops are not
    a = np.radians(70)
    Ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    assert bench.rotation_error_deg(Ry, np.eye(3), "bottle") == pytest.approx(0.0, abs=1e-6)
    assert bench.rotation_error_deg(Ry, np.eye(3), "laptop") == pytest.approx(70.0)


def test_bag_without_gt_skips_accuracy_with_message(tmp_path):
    bag = load_frames(write_tiny_bag(tmp_path / "bag", frames=2, with_gt=False))
    run = RunResult("max", None, 0, [SendRecord(0, 1, 0, 0.0, 0.1)], 0.0, 1.0)
    acc = bench.accuracy_section(bag, TopicConfig(), run)
    assert (
        "no ground truth topic '/ground_truth/poses'" in acc["skipped"]
        and "accuracy skipped" in acc["skipped"]
    )


def test_stage_means_and_table():
    diag = {
        "other: x": {"stage_ms_forward": "99"},
        "cleanpose_node: pose estimation": {
            "stage_ms_receive": "3.0",
            "stage_ms_forward": "5.0",
            "stage_ms_pipeline": "6.0",
            "inputs": "4",
        },
    }
    diag["other: x"] = {"inputs": "1"}
    st = bench.stage_means_of(diag, "/cleanpose_node")
    assert st == {"receive": 3.0, "forward": 5.0, "pipeline": 6.0}
    lines = bench.stage_table([("30 Hz", st, 10.0), ("max", {}, 5.0)])
    assert lines[0] == "| mode | receive | forward | pipeline | sum | latency mean | rest |"
    # "forward" is inside "pipeline": counted once
    assert lines[2] == "| 30 Hz | 3.00 | 5.00 | 6.00 | 9.00 | 10.00 | 1.00 |" and len(lines) == 3
    assert bench.stage_table([]) == []


def test_cli_missing_topic_names_topics_found(tmp_path, capsys):
    path = write_tiny_bag(tmp_path / "bag", frames=1)
    code = bench.main([str(path), "--detections-topic", "/mask_rcnn/result", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "/mask_rcnn/result" in err and "/camera/color/image_raw" in err and "--detections-topic" in err


@pytest.mark.ros
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bench_real_node_small_bag(tmp_path, ros_overlay, storage, capsys):
    """The whole bench, node as a subprocess, on a 3-frame 160x120 synthetic bag; only the mcap case runs
    the in-process comparison (the sqlite3 case checks the storage path end to end)."""
    from cleanpose_training.synthetic.__main__ import generate_bag

    bag_path = tmp_path / "bag"
    generate_bag(
        bag_path, frames=3, objects=(1, 2), seed=3, width=160, height=120, storage=storage, shadows=False
    )
    out = tmp_path / "out"
    args = [str(bag_path), "--rates", "20,max", "--iterations", "1", "--warmup", "1", "--out", str(out)]
    if storage == "sqlite3":
        args.append("--no-in-process")
    assert bench.main(args) == 0, (out / "node.log").read_text() if (out / "node.log").exists() else ""
    res = json.loads((out / "bench.json").read_text())
    assert res["bag"]["storage"] == storage and res["bag"]["frames"] == 3
    assert [a["mode"] for a in res["dds"]] == ["rate", "max"]
    for agg in res["dds"]:
        assert agg["sent"] == agg["received"] + agg["dropped"]
        for run in agg["runs"]:
            assert run["sent"] == run["received"] + run["dropped"] == 3
        L = agg["latency_ms"]
        if agg["received"]:
            assert 0 < L["min"] <= L["p50"] <= L["p95"] <= L["p99"] <= L["max"]
    closed = res["dds"][1]
    assert closed["received"] == 3, "closed loop waits for every answer"
    assert closed["cpu_percent_max"] is not None and closed["cpu_percent_max"] > 0
    assert res["accuracy"]["per_object_success"]["gt_objects"] > 0
    trk = res["accuracy"]["tracking"]  # the node's track ids scored against ground truth
    assert trk["tracks"] > 0 and trk["id_switches"] >= 0
    assert sum(v["count"] for v in res["latency_vs_objects"].values()) == closed["received"]
    if storage == "mcap":
        ip = res["in_process"]
        assert ip["frames"] == 3 and ip["latency_ms"]["p50"] > 0
        assert "ros_overhead" in res
    assert (out / "bench.png").stat().st_size > 1000
    # the node's stage means per mode, in the JSON and in the printed table
    for agg in res["dds"]:
        st = agg["stage_ms"]
        for k in ("receive", "queue", "convert", "detections", "build_inputs", "forward", "pipeline"):
            assert k in st and st[k] >= 0.0, (k, st)
    printed = capsys.readouterr().out
    assert "Node stages (ms" in printed and "| max (closed loop) | " in printed, printed
    assert "Tracking: " in printed and " id switches" in printed, printed
    assert os.environ.get("ROS_DOMAIN_ID")  # ran on the session's own domain


class _FakeNode:
    """Stands in for the node subprocess: records the command it was started with."""

    commands: ClassVar[list[list[str]]] = []

    def __init__(self, cmd, log_path, *a, **k):
        _FakeNode.commands.append(cmd)
        self.log_path = log_path
        self.pid = None

    def alive(self) -> bool:
        return True

    def log_tail(self) -> str:
        return ""

    def stop(self) -> int:
        return 0


class _FakeReplayer:
    """Answers frame i after 5 + i ms; the closed-loop rate (rate None) raises, as a node that dies would."""

    def __init__(self, bag, topics, node_name, **kw):
        self.diagnostics: dict = {}

    def wait_for_node(self, timeout_s):
        pass

    def send(self, frame):
        return SendRecord(frame.index, frame.n_objects, 0, 0.0, 0.005)

    def wait_answer(self, rec, timeout_s):
        return True

    def run(self, frames, rate_hz=None, iteration=0, answer_timeout_s=10.0):
        if rate_hz is None:
            raise RuntimeError("node gone")
        recs = [
            SendRecord(f.index, f.n_objects, i, 0.1 * i, 0.1 * i + 0.005 + 0.001 * i)
            for i, f in enumerate(frames)
        ]
        return RunResult("rate", rate_hz, iteration, recs, 0.0, len(frames) * 0.1)

    def close(self):
        pass


def _no_pipeline(checkpoint, device):
    raise RuntimeError("in-process model failed to load")


def test_failed_passes_keep_finished_measurements(tmp_path, monkeypatch, capsys):
    """A pass that raises: bench.json still holds the passes that finished, an 'errors' entry names the
    failed ones, and the exit code is 1."""
    monkeypatch.setattr(bench, "NodeProcess", _FakeNode)
    monkeypatch.setattr(bench, "Replayer", _FakeReplayer)
    monkeypatch.setattr(bench, "make_pipeline", _no_pipeline)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    monkeypatch.setattr(bench, "wait_stage_means", lambda rep, name: {})
    monkeypatch.setattr(bench, "default_checkpoint", lambda: (tmp_path / "model.safetensors", True))
    path = write_tiny_bag(tmp_path / "bag", frames=2)
    out = tmp_path / "out"
    args = [str(path), "--rates", "10,max", "--iterations", "2", "--warmup", "1", "--device", "cpu"]
    code = bench.main([*args, "--sample-period", "0", "--out", str(out)])
    assert code == 1
    res = json.loads((out / "bench.json").read_text())
    assert [a["rate_hz"] for a in res["dds"]] == [10.0], "the finished 10 Hz pass is kept"
    assert res["dds"][0]["received"] == 4 and res["dds"][0]["latency_ms"]["p50"] == pytest.approx(5.5)
    assert res["errors"] == [
        {"pass": "DDS max (closed loop)", "error": "RuntimeError: node gone"},
        {"pass": "in-process", "error": "RuntimeError: in-process model failed to load"},
    ]
    assert "in_process" not in res
    err = capsys.readouterr().err
    assert "FAILED DDS max (closed loop): RuntimeError: node gone" in err and "bench.json" in err


def test_cuda_request_without_cuda_falls_back_with_reason(tmp_path, monkeypatch, capsys):
    """--device cuda where torch sees no CUDA: the node and the in-process pass get the CPU, and the reason
    is printed and kept in bench.json."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.resolve_tool_device("cpu") == ("cpu", None)
    device, reason = bench.resolve_tool_device("cuda")
    assert device == "cpu" and "CUDA is not available" in reason
    assert "CUDA is not available" in capsys.readouterr().err

    monkeypatch.setattr(bench, "NodeProcess", _FakeNode)
    monkeypatch.setattr(bench, "Replayer", _FakeReplayer)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    monkeypatch.setattr(bench, "wait_stage_means", lambda rep, name: {})
    monkeypatch.setattr(bench, "default_checkpoint", lambda: (tmp_path / "model.safetensors", True))
    _FakeNode.commands.clear()
    path = write_tiny_bag(tmp_path / "bag", frames=2)
    out = tmp_path / "out"
    args = [str(path), "--rates", "10", "--iterations", "1", "--device", "cuda", "--no-in-process"]
    assert bench.main([*args, "--sample-period", "0", "--out", str(out)]) == 0
    assert "device:=cpu" in _FakeNode.commands[0]
    res = json.loads((out / "bench.json").read_text())
    assert res["device_requested"] == "cuda" and res["device"].startswith("CPU")
    assert res["errors"] == [] and "CUDA is not available" in res["notes"][0]
    assert res["host"]["cpu_count"] == os.cpu_count()


def test_busy_machine_is_noted(monkeypatch):
    cores = os.cpu_count() or 1
    notes: list[str] = []
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (cores * 0.1, 0.0, 0.0))
    assert bench.busy_machine_note(notes) == pytest.approx(cores * 0.1) and notes == []
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (cores * 2.0, 0.0, 0.0))
    bench.busy_machine_note(notes)
    assert len(notes) == 1 and f"load average {cores * 2.0:.1f} on {cores} cores" in notes[0]
