import json
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cleanpose_training.datasets import NOCSTestDataset
from cleanpose_training.evaluation.evaluate import load_records, main, pose_to_record, predict_records

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
from nocs_fixture import make_nocs_test_root


def _perfect_record(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    m = 6
    rts = np.tile(np.eye(4), (m, 1, 1))
    sizes = rng.uniform(0.05, 0.3, (m, 3))
    for k in range(m):
        q = np.linalg.qr(rng.standard_normal((3, 3)))[0]
        q *= np.sign(np.linalg.det(q))
        rts[k, :3, :3] = q * np.linalg.norm(sizes[k])
        rts[k, :3, 3] = [0.4 * k - 1.0, 0.1, 1.0]
    scales = sizes / np.linalg.norm(sizes, axis=1, keepdims=True)
    ids = np.arange(1, 7)
    return {
        "gt_class_ids": ids,
        "gt_bboxes": np.ones((m, 4)),
        "gt_RTs": rts,
        "gt_scales": scales,
        "gt_handle_visibility": np.ones(m),
        "pred_class_ids": ids,
        "pred_bboxes": np.ones((m, 4)),
        "pred_scores": rng.uniform(0.5, 1, m),
        "pred_RTs": rts.copy(),
        "pred_scales": scales.copy(),
    }


def test_cli_on_result_folder_writes_tables_json_png(tmp_path, capsys):
    res_dir = tmp_path / "results"
    res_dir.mkdir()
    for i in range(3):
        with open(res_dir / f"results_real_test_scene_1_{i:04d}.pkl", "wb") as f:
            pickle.dump(_perfect_record(i), f)
    out = tmp_path / "out"
    assert main(["--results", str(res_dir), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| NOCS IoU (original) | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in text
    assert "| CATRE IoU (corrected) | 100.0 |" in text
    assert "| mug |" in text and "| average |" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"]["catre_iou"] == "CATRE IoU (corrected)"
    assert all(v == 100.0 for v in metrics["mean"].values())
    assert metrics["per_category"]["bowl"]["catre_iou_75"] == 100.0
    png = (out / "ap_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "tables.md").read_text().startswith("## ")


def test_cli_clear_error_for_missing_results(tmp_path, capsys):
    assert main(["--results", str(tmp_path / "nope"), "--no-plot", "--out", str(tmp_path / "o")]) == 2
    assert "missing results directory" in capsys.readouterr().err


class OracleEstimator:
    """Returns the GT pose of each kept detection (fixture detections follow GT order)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.calls = 0

    def predict(self, batch):
        item = self.dataset[self.calls]
        self.calls += 1
        gt = item["gt"]
        n = len(batch)
        assert n == len(gt["pred_class_ids"]) and batch.pts.shape == (n, 1024, 3)
        norms = np.linalg.norm(gt["gt_RTs"][:n, :3, 0], axis=1)
        R = gt["gt_RTs"][:n, :3, :3] / norms[:, None, None]
        size = gt["gt_scales"][:n] * norms[:, None]
        t = gt["gt_RTs"][:n, :3, 3]
        return SimpleNamespace(
            rotation=torch.from_numpy(R), translation=torch.from_numpy(t), size=torch.from_numpy(size)
        )


def test_predict_records_over_test_split(tmp_path):
    root = make_nocs_test_root(tmp_path / "data")
    ds = NOCSTestDataset(root, "REAL275")
    recs = predict_records(OracleEstimator(ds), ds, tmp_path / "out" / "results", log=None)
    assert len(recs) == 2
    assert recs[0]["pred_RTs"].shape == (2, 4, 4)  # the 4-pixel detection was dropped
    loaded = load_records(tmp_path / "out" / "results")
    np.testing.assert_allclose(loaded[0]["pred_RTs"], loaded[0]["gt_RTs"], atol=1e-12)
    args = ["--results", str(tmp_path / "out" / "results"), "--no-plot", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["per_category"]["bottle"]["5deg_2cm"] == 100.0
    assert metrics["per_category"]["mug"]["nocs_iou_75"] == 100.0
    # classes without GT have no AP and are left out of the mean (the published mean would be NaN)
    missing = metrics["classes_left_out_of_mean"]
    assert missing and all(metrics["per_category"][c]["5deg_2cm"] is None for c in missing)
    assert metrics["mean"]["5deg_2cm"] == 100.0
    tables = (tmp_path / "o" / "tables.md").read_text()
    assert "nan" not in tables and f"No ground truth for {', '.join(missing)}" in tables


def test_pose_to_record_roundtrip():
    R = np.eye(3)[None]
    rts, scales = pose_to_record(R, np.array([[0.1, 0.2, 0.3]]), np.array([[0.3, 0.4, 0.0]]))
    np.testing.assert_allclose(rts[0, :3, :3], 0.5 * np.eye(3))
    np.testing.assert_allclose(scales, [[0.6, 0.8, 0.0]])
    assert rts[0, 3].tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("flag", ["--checkpoint"])
def test_cli_checkpoint_needs_data(tmp_path, flag, capsys):
    assert main([flag, str(tmp_path / "m.safetensors"), "--out", str(tmp_path)]) == 2
