import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from cleanpose_model.selfsup.correspondence import (
    IGNORE,
    c2f_loss,
    cycle_loss,
    downsample_max,
    hungarian_labels,
    occupied,
    pseudo_labels,
)


def test_hungarian_labels_are_one_to_one_and_optimal():
    rng = np.random.default_rng(0)
    cost = rng.random((30, 80))
    lab = hungarian_labels(cost)
    assert (lab >= 0).all() and len(set(lab.tolist())) == 30  # every region, each to its own point
    # The paper's form: pad N - rows virtual rows of equal cost, solve the square problem, drop them.
    padded = np.vstack([cost, np.full((50, 80), 0.5)])
    rows, cols = linear_sum_assignment(padded)
    assert cost[np.arange(30), lab].sum() == pytest.approx(padded[rows[:30], cols[:30]].sum())
    greedy = cost.argmin(1)  # many-to-one in general: the ambiguity the matching removes
    assert cost[np.arange(30), lab].sum() >= cost[np.arange(30), greedy].sum() - 1e-12


def test_more_regions_than_points_leave_regions_unmatched():
    lab = hungarian_labels(np.random.default_rng(1).random((12, 5)))
    assert (lab == IGNORE).sum() == 7
    assert sorted(lab[lab != IGNORE].tolist()) == [0, 1, 2, 3, 4]


def test_pseudo_labels_only_label_foreground_regions():
    s_c = torch.rand(2, 16, 20)
    fg = torch.zeros(2, 16, dtype=torch.bool)
    fg[0, [1, 5, 6]] = True
    labels, seconds = pseudo_labels(s_c, fg)
    assert (labels[1] == IGNORE).all() and seconds >= 0
    assert (labels[0, ~fg[0]] == IGNORE).all()
    got = labels[0, fg[0]]
    assert len(set(got.tolist())) == 3 and (got >= 0).all()


def test_occupied_cells_follow_choose():
    size, stride = 8, 4  # 2x2 cells
    choose = torch.tensor([[0, 1, 9, 63]])  # (0,0), (0,1), (1,1) -> cell 0; (7,7) -> cell 3
    assert occupied(choose, size, stride).tolist() == [[True, False, False, True]]
    assert occupied(choose, size, stride, min_pixels=2).tolist() == [[True, False, False, False]]


def test_downsample_max_is_the_max_over_foreground_pixels_of_each_region():
    g = torch.Generator().manual_seed(0)
    s_f = torch.rand(1, 16, 3, generator=g)  # 4x4 pixels, 2x2 regions of 2x2 pixels
    fg = torch.rand(1, 16, generator=g) > 0.3
    got = downsample_max(s_f, fg, pixel_grid=4, factor=2)
    for r in range(2):
        for c in range(2):
            idx = [(2 * r + dr) * 4 + 2 * c + dc for dr in (0, 1) for dc in (0, 1)]
            idx = [i for i in idx if fg[0, i]]
            want = s_f[0, idx].amax(0) if idx else torch.full((3,), float("-inf"))
            torch.testing.assert_close(got[0, r * 2 + c], want)


def test_c2f_loss_is_low_when_similarities_agree_with_labels():
    labels = torch.tensor([[0, 1, IGNORE, 2]])
    good = torch.full((1, 4, 3), -1.0)
    good[0, [0, 1, 3], [0, 1, 2]] = 1.0
    bad = good[:, :, [1, 2, 0]]
    l_c, l_f = c2f_loss(good, good, labels, tau=0.1)
    b_c, b_f = c2f_loss(bad, bad, labels, tau=0.1)
    assert l_c < 1e-6 and l_f < 1e-6 and b_c > 10 and b_f > 10
    z_c, _ = c2f_loss(good, good, torch.full((1, 4), IGNORE), tau=0.1)
    assert z_c.item() == 0.0


def test_cycle_loss_vanishes_for_consistent_correspondences():
    g = torch.Generator().manual_seed(0)
    canon = torch.rand(2, 50, 3, generator=g) - 0.5
    obs = 0.3 * canon @ torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]).T + torch.tensor([0.1, 0.0, 0.8])
    sim = torch.eye(50)[None].expand(2, -1, -1) * 2 - 1  # pixel i <-> point i, sharp
    l_pix, l_pt = cycle_loss(sim, canon, obs, tau=0.01, topk=1.0)
    assert l_pix < 1e-4 and l_pt < 1e-4
    shuffled = sim[:, torch.randperm(50, generator=g)]
    s_pix, s_pt = cycle_loss(shuffled, canon, obs, tau=0.01, topk=1.0)
    assert s_pix > 0.1 and s_pt > 0.1


def test_cycle_loss_does_not_reward_collapsed_correspondences():
    g = torch.Generator().manual_seed(1)
    canon = torch.rand(1, 50, 3, generator=g) - 0.5
    obs = 0.3 * canon + torch.tensor([0.1, 0.0, 0.8])
    flat = torch.zeros(1, 50, 50)  # every pixel matches every point alike: soft points all at the centroid
    l_pix, _ = cycle_loss(flat, canon, obs, tau=0.1, topk=1.0)
    sharp, _ = cycle_loss(torch.eye(50)[None] * 2 - 1, canon, obs, tau=0.01, topk=1.0)
    assert l_pix > 0.5 and sharp < 1e-4
