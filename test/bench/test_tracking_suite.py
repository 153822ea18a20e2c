"""Suite ``tracking`` in its --quick CPU mode (the demo checkpoint on short synthetic sequences, detections
shuffled, 5% dropped, no detector ids): its JSON holds one row per filtering frame and mode with identity and
jitter figures, and the filtered rows are smoother than the unfiltered ones of the same run."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_suites import run_suite  # same folder (rootdir-relative imports, no packages)

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "demo.safetensors"


@pytest.mark.skipif(not DEMO.exists(), reason="demo checkpoint not present")
def test_tracking_quick_rows_identities_and_jitter(tmp_path):
    data = run_suite("tracking", tmp_path, "--frames", "10", "--save-estimates", str(tmp_path / "est.json"))
    rows = {(r["frame"], r["mode"]): r for r in data["rows"]}
    assert sorted(rows) == sorted((f, m) for f in ("camera", "world") for m in ("none", "light", "full"))
    for r in rows.values():
        assert r["published"] > 0 and r["ms_per_frame"] > 0
        assert r["id_switches"] == 0 and r["merged"] == 0
        assert 0 <= r["lag_frames"] <= 4
    for frame in ("camera", "world"):
        raw = rows[(frame, "none")]
        for mode in ("light", "full"):
            f = rows[(frame, mode)]
            assert f["jitter_rot_deg"] < raw["jitter_rot_deg"] / 1.5
            assert f["jitter_trans_mm"] < raw["jitter_trans_mm"] / 1.5
    # one ratio per (frame, jitter kind, filter mode), all from this run
    assert len(data["comparisons"]) == 8 and all(c["ratio"] < 1 for c in data["comparisons"])
    # the saved estimates give the same figures without the estimator
    again = run_suite("tracking", tmp_path / "again", "--estimates", str(tmp_path / "est.json"))
    for r in again["rows"]:
        ref = rows[(r["frame"], r["mode"])]
        assert {k: r[k] for k in ("id_switches", "jitter_rot_deg", "rot_err_deg")} == {
            k: ref[k] for k in ("id_switches", "jitter_rot_deg", "rot_err_deg")
        }
