"""A tiny procedural training set for CPU tests: box surfaces in random poses (preprocessing.md §3.10
dict)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch.utils.data import Dataset

from cleanpose_training.datasets.common import worker_rng


class ToyObjects(Dataset):
    def __init__(
        self,
        n: int = 16,
        n_points: int = 1024,
        cat_num: int = 6,
        seed: int = 0,
        image_size: int = 224,
        fixed_points: bool = False,
    ):
        self.n, self.n_points, self.cat_num, self.seed = n, n_points, cat_num, seed
        self.image_size, self.fixed_points = image_size, fixed_points
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        fixed = np.random.default_rng([self.seed, int(index)])  # the object itself is fixed per index
        # what varies per epoch: the point subset (unless fixed, for overfitting tests)
        rng = (
            np.random.default_rng([self.seed, int(index), 1])
            if self.fixed_points
            else worker_rng(self.seed, self.epoch, int(index))
        )
        cat = int(fixed.integers(self.cat_num))
        size = fixed.uniform(0.05, 0.2, 3)
        R = Rotation.random(random_state=int(fixed.integers(1 << 31))).as_matrix()
        t = np.array([fixed.uniform(-0.2, 0.2), fixed.uniform(-0.2, 0.2), fixed.uniform(0.5, 1.0)])
        face = rng.integers(3, size=self.n_points)
        u = rng.uniform(-0.5, 0.5, (self.n_points, 3))
        u[np.arange(self.n_points), face] = np.sign(u[np.arange(self.n_points), face]) * 0.5
        pts = (u * size) @ R.T + t
        rgb = np.full((3, self.image_size, self.image_size), (cat - 2.5) / 3.0, np.float32)
        choose = rng.integers(self.image_size * self.image_size, size=self.n_points)
        return {
            "pts": torch.tensor(pts, dtype=torch.float32),
            "rgb": torch.from_numpy(rgb),
            "choose": torch.tensor(choose, dtype=torch.int64),
            "category_label": torch.tensor([cat]),
            "translation_label": torch.tensor(t, dtype=torch.float32),
            "rotation_label": torch.tensor(R, dtype=torch.float32),
            "size_label": torch.tensor(size, dtype=torch.float32),
            "pc_mask": torch.ones(self.n_points),
        }
