"""Loss terms against hand-computed values (training.md §3), the sub-batch mixing, the LR schedule and the
FIFO."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cleanpose_training import losses as L
from cleanpose_training.trainer import ScheduleConfig, fifo_update, lr_at


def rot_z(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def test_pose_loss_hand_computed():
    # R̂ = Rz(90°), R = I: columns x and y each differ by √2, z by 0 -> mean over columns = 2√2/3.
    pred_r = rot_z(90)[None]
    gt_r = torch.eye(3)[None]
    pred_t, gt_t = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.03, 0.04, 1.0]])  # ‖Δt‖ = 0.05
    pred_s, gt_s = torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[0.1, 0.2, 0.1]])  # ‖Δs‖ = 0.2
    got = L.pose_loss(pred_r, pred_t, pred_s, gt_r, gt_t, gt_s)
    assert got.item() == pytest.approx(2 * math.sqrt(2) / 3 + 0.05 + 0.2, abs=1e-6)


def test_pose_loss_batch_mean():
    pred_r = torch.stack([torch.eye(3), rot_z(180)])
    gt_r = torch.eye(3).expand(2, 3, 3)
    z = torch.zeros(2, 3)
    # sample 0: 0; sample 1: columns x, y differ by 2 -> mean over (b, j) = (0+0+0+2+2+0)/6
    assert L.pose_loss(pred_r, z, z, gt_r, z, z).item() == pytest.approx(4 / 6, abs=1e-6)


def test_nocs_loss_hand_computed():
    # GT pose: R = Rz(90°), t = (1, 0, 0), size (0.3, 0.4, 0) -> ‖s‖ = 0.5.
    R = rot_z(90)[None]
    t = torch.tensor([[1.0, 0.0, 0.0]])
    s = torch.tensor([[0.3, 0.4, 0.0]])
    kpt = torch.tensor([[[1.0, 0.1, 0.0], [1.0, 0.0, 0.2]]])
    # y_k = Rᵀ(k − t)/0.5: k0 − t = (0, 0.1, 0) -> Rᵀ·(0, 0.1, 0) = (0.1, 0, 0) -> (0.2, 0, 0)
    #                      k1 − t = (0, 0, 0.2) -> (0, 0, 0.2) -> (0, 0, 0.4)
    pred = torch.tensor([[[0.25, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    # k0: |0.05| -> 0.05²/0.2 = 0.0125 ; k1: |0.4| > 0.1 -> 0.4 − 0.05 = 0.35 ; mean over k of the xyz sums
    want = (0.0125 + 0.35) / 2
    assert L.nocs_loss(pred, kpt, R, t, s).item() == pytest.approx(want, abs=1e-6)


def test_nocs_target_keeps_gradient_to_keypoints():
    R = torch.eye(3)[None]
    t = torch.zeros(1, 3)
    s = torch.ones(1, 3)
    kpt = torch.tensor([[[0.3, 0.0, 0.0]]], requires_grad=True)
    L.nocs_loss(torch.zeros(1, 1, 3), kpt, R, t, s).backward()
    assert kpt.grad is not None and kpt.grad.abs().sum() > 0  # published: the target is not detached


def test_keypoint_cd_hand_computed():
    pts = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    kpt = torch.tensor([[[0.0, 0.0, 0.5], [1.0, 0.3, 0.4]]])  # nearest distances 0.5 and 0.5
    assert L.keypoint_cd_loss(kpt, pts).item() == pytest.approx(0.5, abs=1e-6)


def test_diversity_hand_computed():
    # K = 3 on a line: d01 = 0.004, d12 = 0.02, d02 = 0.024 (th = 0.01): only the (0,1) pair counts, twice.
    kpt = torch.tensor([[[0.0, 0.0, 0.0], [0.004, 0.0, 0.0], [0.024, 0.0, 0.0]]])
    want = 2 * (1 - 0.004 / 0.01) / (3 * 2)
    assert L.diversity_loss(kpt, 0.01).item() == pytest.approx(want, abs=1e-6)


def test_diversity_coincident_keypoints_finite_gradient():
    kpt = torch.zeros(1, 4, 3, requires_grad=True)
    loss = L.diversity_loss(kpt, 0.01)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)  # all off-diagonal pairs at distance 0
    loss.backward()
    assert torch.isfinite(kpt.grad).all()


def test_chamfer_and_object_aware_recon():
    x = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    y = torch.tensor([[[0.0, 0.1, 0.0], [1.0, 0.0, 0.3]]])
    # Full: x->y: 0.1, 0.3, dist((5,5,5), y1=(1,0,0.3)) ; y->x: 0.1, 0.3
    far = math.dist((5, 5, 5), (1, 0, 0.3))
    full = 0.5 * (0.1 + 0.3 + far) / 3 + 0.5 * (0.1 + 0.3) / 2
    assert L.chamfer_distance(x, y)[0].item() == pytest.approx(full, abs=1e-6)
    # Masked: the outlier (5,5,5) is dropped from both directions.
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    masked = 0.5 * (0.1 + 0.3) / 2 + 0.5 * (0.1 + 0.3) / 2
    assert L.chamfer_distance(x, y, mask)[0].item() == pytest.approx(masked, abs=1e-6)
    # A sample without valid points is skipped but still counts in the denominator (published).
    x2 = torch.cat([x, x], 0)
    y2 = torch.cat([y, y], 0)
    m2 = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert L.recon_loss(x2, y2, m2).item() == pytest.approx(masked / 2, abs=1e-6)
    assert L.recon_loss(x2, y2, None).item() == pytest.approx(full, abs=1e-6)


def test_delta_and_distillation():
    d = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]])
    assert L.delta_loss(d).item() == pytest.approx(2.5, abs=1e-6)
    z = torch.tensor([[1.0, 1.0], [0.0, 0.0]], requires_grad=True)
    u = torch.tensor([[1.0, 4.0], [3.0, 4.0]], requires_grad=True)
    loss = L.distillation_loss(z, u)
    assert loss.item() == pytest.approx((3 + 5) / 2, abs=1e-6)
    loss.backward()
    assert u.grad is None  # the teacher feature carries no gradient


def _fake_outputs(b: int, k: int = 4, m: int = 8, n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = {
        "pred_rotation": torch.linalg.qr(torch.randn(b, 3, 3, generator=g))[0],
        "pred_translation": torch.randn(b, 3, generator=g),
        "pred_size": torch.rand(b, 3, generator=g),
        "pred_kpt_3d": torch.randn(b, k, 3, generator=g) * 0.05,
        "kpt_nocs": torch.rand(b, k, 3, generator=g) - 0.5,
        "recon_model": torch.randn(b, 3, m, generator=g) * 0.05,  # the published (b, 3, M) layout
        "recon_delta": torch.randn(b, m, 3, generator=g) * 0.01,
        "distill_feat": torch.randn(b, 5, generator=g),
    }
    batch = {
        "pts": torch.randn(b, n, 3, generator=g) * 0.05,
        "rotation_label": torch.linalg.qr(torch.randn(b, 3, 3, generator=g))[0],
        "translation_label": torch.randn(b, 3, generator=g),
        "size_label": torch.rand(b, 3, generator=g) + 0.1,
        "pc_mask": (torch.rand(b, n, generator=g) > 0.3).float(),
        "category_label": torch.zeros(b, dtype=torch.long),
    }
    return out, batch


def test_total_mixes_sub_batches_by_size():
    out, batch = _fake_outputs(5)
    teacher = torch.randn(5, 5)
    crit = L.CleanPoseLoss()
    total, logged = crit(out, batch, [3, 2], teacher)

    def sub(sl):
        o = {k: v[sl] for k, v in out.items()}
        b = {k: v[sl] for k, v in batch.items()}
        terms = L.sub_batch_terms(o, b, crit.w, teacher[sl])
        return sum(crit.weight(k) * v for k, v in terms.items())

    want = (3 * sub(slice(0, 3)) + 2 * sub(slice(3, 5))) / 5
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert set(logged) == {*L.TERMS, "total"}
    w = L.DEFAULT_WEIGHTS
    assert crit.weight("recon") == w["recon"] == 15.0 and crit.weight("diversity") == 10.0


def test_no_teacher_no_distillation_term_and_unknown_key():
    out, batch = _fake_outputs(2)
    _, logged = L.CleanPoseLoss()(out, batch, [2])
    assert "distillation" not in logged
    with pytest.raises(ValueError, match=r"loss: unknown keys \['poses'\]"):
        L.LossWeights.from_dict({"poses": 1.0})


@pytest.mark.parametrize("mode", ["triangular", "triangular2"])
def test_cyclic_lr_matches_closed_form(mode):
    s = ScheduleConfig(
        iterations=100, base_lr=2e-5, max_lr=5e-4, step_size_up=20, step_size_down=20, mode=mode
    )
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.01)
    sch = torch.optim.lr_scheduler.CyclicLR(
        opt,
        base_lr=s.base_lr,
        max_lr=s.max_lr,
        step_size_up=20,
        step_size_down=20,
        mode=mode,
        cycle_momentum=False,
    )
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-5)  # the yaml lr (0.01) is overridden
    for i in range(100):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(i, s), rel=1e-9, abs=1e-12)
        opt.step()
        sch.step()
    assert lr_at(20, s) == pytest.approx(5e-4)  # first peak: full amplitude in both modes
    assert lr_at(40, s) == pytest.approx(2e-5)


def test_fifo_update_equals_sequential_pop_append():
    rng = np.random.default_rng(0)
    q = torch.tensor(rng.normal(size=(3, 5, 2)), dtype=torch.float32)
    feats = torch.tensor(rng.normal(size=(9, 2)), dtype=torch.float32)
    cats = torch.tensor([0, 2, 0, 0, 1, 2, 0, 0, 0])  # category 0 gets 6 > 5 entries: wraps past the length
    lists = [[q[c, i].clone() for i in range(5)] for c in range(3)]
    for f, c in zip(feats, cats.tolist()):
        lists[c].pop(0)
        lists[c].append(f)
    want = torch.stack([torch.stack(lst) for lst in lists])
    assert torch.equal(fifo_update(q, feats, cats), want)
