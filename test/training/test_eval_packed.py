"""Evaluation on a packed test split: records, per-object errors, the table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "datasets"))
from pack_fixture import pack_object, write_pack


def test_packed_evaluation_scores_a_perfect_prediction_100(tmp_path):
    from scipy.spatial.transform import Rotation

    from cleanpose_training.datasets.packed import PackedDataset
    from cleanpose_training.eval_packed import build_records, markdown_table, per_object_errors
    from cleanpose_training.evaluation.metrics import NOCS_PROTOCOL, evaluate_records

    rng = np.random.default_rng(1)
    objects = [
        pack_object(
            i,
            i // 3,
            rotation=Rotation.random(random_state=i).as_matrix().astype(np.float32),
            translation=np.array([0.1 * i, 0, 0.8], np.float32),
            size=rng.uniform(0.05, 0.2, 3).astype(np.float32),
        )
        for i in range(6)
    ]
    write_pack(tmp_path, objects, (1, 1, 0, 0), (48, 64), per_shard=10, model_points=4)
    ds = PackedDataset(tmp_path, augment=False)
    perfect = {"rotation": ds.rotation.copy(), "translation": ds.translation.copy(), "size": ds.size.copy()}
    recs = build_records(ds, perfect)
    assert len(recs) == 2 and [len(r["gt_class_ids"]) for r in recs] == [3, 3]
    res = evaluate_records(recs, NOCS_PROTOCOL)
    assert res.iou_ap("nocs", 0.5) == pytest.approx(1.0) and res.pose_ap(5, 2) == pytest.approx(1.0)
    # 20° off about the x axis: fails 5°/10° for asymmetric categories
    bad = dict(
        perfect,
        rotation=perfect["rotation"]
        @ Rotation.from_euler("x", 20, degrees=True).as_matrix().astype(np.float32),
    )
    err = per_object_errors(ds, bad)
    assert np.allclose(err["rot_deg"][[2, 4, 5]], 20, atol=1e-3) and np.allclose(err["trans_cm"], 0)
    res_bad = evaluate_records(build_records(ds, bad), NOCS_PROTOCOL)
    assert res_bad.pose_ap(10, 5, cls=3) == pytest.approx(0.0)  # camera (class id 3)
    cols = ["IoU25", "IoU50", "IoU75", "IoU50_catre", "5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm"]
    table = markdown_table(
        {
            "table": {"mean": dict.fromkeys(cols, 50.0), "bowl": dict.fromkeys(cols, float("nan"))},
            "objects": 6,
            "per_category_objects": {"bowl": 0},
            "classes_left_out_of_mean": ["bowl"],
        }
    )
    assert "| mean | 6 | 50.0 |" in table and "| bowl | 0 | – |" in table and "nan" not in table
    assert "No test objects of bowl: left out of the mean" in table
