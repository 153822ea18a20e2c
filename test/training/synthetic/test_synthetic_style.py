"""Rendering styles: style a is the generator unchanged, style b a second domain whose labels follow its
stretched shapes."""

from __future__ import annotations

import numpy as np

from cleanpose_training.datasets import safe_pickle
from cleanpose_training.synthetic.__main__ import generate_nocs


def _gen(root, style=None):
    kw = {} if style is None else {"style": style}
    generate_nocs(root, split="train", scenes=1, frames=2, seed=4, width=128, height=96, shadows=False, **kw)
    return root


def test_style_a_is_the_default_and_b_differs(tmp_path):
    default, a, b = _gen(tmp_path / "d"), _gen(tmp_path / "a", "a"), _gen(tmp_path / "b", "b")
    frame = "train/scene_1/0000"
    for suffix in ("_color.png", "_depth.png", "_mask.png", "_label.pkl"):
        assert (default / f"{frame}{suffix}").read_bytes() == (a / f"{frame}{suffix}").read_bytes(), suffix
    assert (a / f"{frame}_color.png").read_bytes() != (b / f"{frame}_color.png").read_bytes()


def test_style_b_labels_follow_the_stretched_models(tmp_path):
    a, b = _gen(tmp_path / "a", "a"), _gen(tmp_path / "b", "b")
    la = safe_pickle.load(a / "train/scene_1/0000_label.pkl")
    lb = safe_pickle.load(b / "train/scene_1/0000_label.pkl")
    models_b = safe_pickle.load(b / "obj_models/train.pkl")
    assert all(m.endswith("-b") for m in lb["model_list"])
    common = set(la["instance_ids"]) & set(lb["instance_ids"])
    assert common
    for inst in common:
        ia, ib = la["instance_ids"].index(inst), lb["instance_ids"].index(inst)
        # The same base model, stretched up (y) by >= 1 and across by <= 1: a larger share of the diagonal.
        assert lb["sizes"][ib][1] > la["sizes"][ia][1]
        pts = models_b[lb["model_list"][ib]]
        np.testing.assert_allclose(pts.max(0) - pts.min(0), lb["sizes"][ib], atol=0.03)
        np.testing.assert_allclose(np.linalg.norm(lb["sizes"][ib]), 1.0, atol=1e-5)
