"""Frozen ULIP encoders built in the package: PointBERT (distillation teacher) and PointNet++ SSG (queue
init)."""

from cleanpose_training.ulip.loader import (
    UlipCheckpointError,
    load_pointbert_teacher,
    load_pointnet2_ssg,
    read_ulip_state_dict,
)
from cleanpose_training.ulip.pointbert import PointBertConfig, PointTransformer
from cleanpose_training.ulip.pointnet2_ssg import Pointnet2Ssg

__all__ = [
    "PointBertConfig",
    "PointTransformer",
    "Pointnet2Ssg",
    "UlipCheckpointError",
    "load_pointbert_teacher",
    "load_pointnet2_ssg",
    "read_ulip_state_dict",
]
