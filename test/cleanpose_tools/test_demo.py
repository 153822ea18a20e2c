"""The main job end to end (short mode): synthetic bag -> node over DDS -> table, overlays, contact sheet."""

from __future__ import annotations

import json

import pytest

from cleanpose_tools import demo


@pytest.mark.ros
@pytest.mark.slow
def test_demo_short_end_to_end(tmp_path, ros_overlay, capsys):
    out = tmp_path / "demo"
    code = demo.main(["--short", "--frames", "3", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text + (out / "node.log").read_text()
    summary = json.loads((out / "demo.json").read_text())
    assert summary["sent"] == 3 and summary["received"] + summary["dropped"] == 3 and summary["received"] > 0
    assert summary["objects_estimated"] > 0 and summary["debug_images"] > 0
    assert (out / "contact_sheet.png").stat().st_size > 1000
    assert len(list((out / "debug").glob("frame_*.png"))) == summary["debug_images"]
    assert "| frame | objects | class |" in text and "5°2cm" in text and "Frames in 3" in text
    trk = summary["accuracy"]["tracking"]  # the node's track ids scored against ground truth
    assert trk["tracks"] > 0 and trk["id_switches"] >= 0 and "Tracking: " in text
    assert str(out.resolve()) in text
    if not summary["trained_model"]:
        assert "UNTRAINED MODEL" in text


def test_demo_reports_missing_ros_env(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("cleanpose_msgs"):
            raise ImportError("No module named 'cleanpose_msgs'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert demo.main(["--short"]) == 2
    assert "scripts/setup.sh" in capsys.readouterr().err


def test_demo_bag_reuse_is_said_and_regenerate_makes_it_again(tmp_path, monkeypatch, capsys):
    """A bag an earlier run left is reused with its path printed; --regenerate replaces it."""
    import cleanpose_training.synthetic.__main__ as synth

    made = []

    def fake_generate_bag(path, **kw):
        path.mkdir(parents=True)
        (path / "metadata.yaml").write_text("new")
        made.append(kw)

    monkeypatch.setattr(synth, "generate_bag", fake_generate_bag)
    bag = tmp_path / "bag_30f_1-4obj_s0"
    bag.mkdir()
    (bag / "metadata.yaml").write_text("old")
    assert demo.ensure_bag(bag, 30, (1, 4), 0) == bag
    assert f"reusing the bag an earlier run generated: {bag}" in capsys.readouterr().out
    assert not made and (bag / "metadata.yaml").read_text() == "old"
    assert demo.ensure_bag(bag, 30, (1, 4), 0, regenerate=True) == bag
    assert made == [{"frames": 30, "objects": (1, 4), "seed": 0, "shadows": False}]
    assert (bag / "metadata.yaml").read_text() == "new"
    assert "generated synthetic bag" in capsys.readouterr().out
