"""Datasets: NOCS (DPDN layout), HouseCat6D and the synthetic generator's output through the NOCS loader."""

from cleanpose_model.preprocess.reference import get_bbox

from .common import DatasetError
from .depth_fill import fill_in_multiscale, fill_missing
from .housecat6d import HouseCat6DTestDataset, HouseCat6DTrainingDataset
from .nocs import NOCSTestDataset, NOCSTrainingDataset

__all__ = [
    "DatasetError",
    "HouseCat6DTestDataset",
    "HouseCat6DTrainingDataset",
    "NOCSTestDataset",
    "NOCSTrainingDataset",
    "fill_in_multiscale",
    "fill_missing",
    "get_bbox",
]
