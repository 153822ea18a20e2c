"""The oracle study of the selfsup read-out (training/selfsup/oracle.py): with the ground-truth shape and
ground-truth correspondences the read-out (cycle filter + Umeyama + extents x scale) scored by the NOCS
metrics is near perfect, so the conventions (NOCS frame, unit diagonal, metric size, R applied to canonical
points, backprojection) agree end to end; the network variants run on a fresh network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cleanpose_model.selfsup import SelfSupNet, load_selfsup_config
from cleanpose_training.selfsup import oracle
from cleanpose_training.synthetic.__main__ import generate_nocs


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    generate_nocs(root, split="test", scenes=1, frames=3, seed=1, width=160, height=120, shadows=False)
    return root


def test_gt_shape_and_gt_correspondences_score_near_perfect(labelled):
    r = oracle.run(labelled, "test")["gt_shape+gt_corr"]
    assert r["objects"] >= 3
    assert r["ap"]["IoU25"] >= 99 and r["ap"]["IoU50"] >= 95, r
    assert r["ap"]["10°5cm"] >= 90, r
    assert r["median_rot_deg"] < 5 and r["median_shift_cm"] < 1.5, r
    assert abs(r["median_size_ratio"] - 1) < 0.1, r


def test_gt_coordinates_invert_the_label_pose(labelled):
    """x = R^T (p - t) / s of a model point posed by the label is the model point itself."""
    from cleanpose_training.datasets import NOCSTestDataset, safe_pickle

    ds = NOCSTestDataset(labelled, "synthetic", split="test")
    models = safe_pickle.load(labelled / "obj_models" / "test.pkl")
    item = ds[0]
    obj = oracle.gt_objects(labelled, "test", item, models)[0]
    posed = obj["scale"] * obj["model"] @ obj["R"].T + obj["t"]
    np.testing.assert_allclose(oracle.gt_coordinates(posed, obj), obj["model"], atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(obj["R"]), 1.0, atol=1e-6)


def test_network_variants_run(labelled):
    torch.manual_seed(0)
    net = SelfSupNet(load_selfsup_config("selfsup_tiny")).eval()
    r = oracle.run(labelled, "test", net, max_images=2)
    assert set(r) == set(oracle.VARIANTS)
    for v in r.values():
        assert all(np.isfinite(x) for x in v["ap"].values())
    table = oracle.table(r)
    assert "pred_shape+gt_corr" in table
