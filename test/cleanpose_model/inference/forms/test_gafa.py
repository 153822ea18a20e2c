"""GAFA's inference form (inference/forms/gafa.py) computes the published module (its torch paths here;
the kernels are tested against the same torch references in test/cleanpose_model/ops)."""

from __future__ import annotations

import torch

from cleanpose_model.inference.forms.gafa import FusedGAFA
from cleanpose_model.inference.forms.pointwise import fold_for_inference
from cleanpose_model.nn.gafa import GAFA


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_gafa_inference_form_matches():
    torch.manual_seed(0)
    gafa = GAFA(256, [16, 32]).eval()
    bsz, n_kpt, n = 2, 96, 300
    kf, kpt = _rand(bsz, n_kpt, 256, seed=7), _rand(bsz, n_kpt, 3, seed=8) * 0.1
    feats, pts = _rand(bsz, n, 256, seed=9), _rand(bsz, n, 3, seed=10) * 0.1
    form = FusedGAFA(fold_for_inference(gafa))
    assert not form.GAFA_blocks[0].knn_kernel and form.GAFA_blocks[0].precision is None
    with torch.no_grad():
        ref = gafa(kf, kpt, feats, pts)
        got = form(kf, kpt, feats, pts)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_neighbour_kernel_only_for_power_of_two_neighbour_counts():
    form = FusedGAFA(GAFA(64, [16, 12]).eval(), knn_kernel=True, precision="tf32")
    assert [b.neighbour_precision for b in form.GAFA_blocks] == ["tf32", None]
    assert [b.precision for b in form.GAFA_blocks] == ["tf32", "tf32"]
