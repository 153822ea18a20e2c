"""`make demo ARGS="--family selfsup"`: the node serves a selfsup checkpoint end to end (the smoke run's until
the GPU-trained one lands in models/selfsup_demo/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleanpose_tools import demo
from cleanpose_training.selfsup import train

SMOKE = Path(__file__).resolve().parents[3] / "training" / "configs" / "selfsup_smoke.yaml"


def test_family_selfsup_without_a_checkpoint_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    pytest.importorskip("rclpy")
    monkeypatch.setattr(demo, "SELFSUP_DEMO_DIR", tmp_path / "none")
    assert demo.main(["--family", "selfsup", "--short", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "selfsup_study_gpu.sh" in err and str(tmp_path / "none") in err


@pytest.mark.ros
@pytest.mark.slow
def test_family_selfsup_demo_end_to_end(tmp_path, ros_overlay, monkeypatch, capsys):
    run = tmp_path / "s1"
    argv = ["--stage", "1", "--config", str(SMOKE), "--out", str(run), "--iterations", "1", "--no-progress"]
    assert train.main(argv) == 0
    shipped = tmp_path / "selfsup_demo"
    shipped.mkdir()
    (shipped / "selfsup_demo.safetensors").write_bytes((run / train.MODEL_FILE).read_bytes())
    monkeypatch.setattr(demo, "SELFSUP_DEMO_DIR", shipped)
    out = tmp_path / "demo"
    code = demo.main(["--family", "selfsup", "--short", "--frames", "3", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text + (out / "node.log").read_text()
    summary = json.loads((out / "demo.json").read_text())
    assert summary["checkpoint"].endswith("selfsup_demo.safetensors")
    assert summary["received"] > 0 and summary["objects_estimated"] > 0 and summary["debug_images"] > 0
