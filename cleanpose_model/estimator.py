"""The model API used by the ROS node, the tools and training evaluation (docs/DESIGN.md, "Model API").

    est = load_estimator("model.safetensors", device="cuda", mode="fast")   # any registered family
    est.inputs       # InputSpec: which ObjectBatch fields, crop size, points per object
    result = est.predict(ObjectBatch(rgb=..., pts=..., choose=..., category=...))
    result.rotation (B,3,3), result.translation (B,3) m, result.size (B,3) m, result.keypoints (B,K,3)

Every family implements ``Estimator`` (``cleanpose_model.families.base``) and is registered in
``cleanpose_model.families.FAMILIES``; a checkpoint's header names its family, so ``load_estimator`` needs
nothing but the file. ``PoseEstimator`` is the CleanPose/AG-Pose family's estimator.
"""

from __future__ import annotations

import os

from cleanpose_model.families import FAMILIES, Estimator, FamilyInfo, get_family
from cleanpose_model.families.cleanpose import PoseEstimator
from cleanpose_model.io import checkpoints
from cleanpose_model.types import InputSpec


def checkpoint_family(path: str | os.PathLike, config=None) -> FamilyInfo:
    """The family that reads ``path``: from our checkpoint's header, or for a published ``.pt/.pth`` (no
    metadata; only CleanPose/AG-Pose weights are published in that form) from its config's ``variant``."""
    if str(path).endswith(".safetensors"):
        return get_family(checkpoints.header_family(checkpoints.read_header(path)))
    if config is None:
        # The family's own loader names the missing config and the conversion command.
        return FAMILIES["cleanpose"]
    cfg = checkpoints.load_config(config) if isinstance(config, (str, os.PathLike)) else config
    return get_family(cfg.variant)


def load_estimator(path: str | os.PathLike, *, device="cpu", mode: str = "exact", **options) -> Estimator:
    """The estimator of the weights in ``path``, of whichever family wrote them, on ``device`` in ``mode``
    (``"exact"`` or ``"fast"``); ``options`` go to the family's ``from_checkpoint`` (for CleanPose:
    ``queue_mode``, ``seed``, ``dtype``, ``cuda_graphs``, ``compile``, and ``config``/``queue_path`` for
    published files)."""
    family = checkpoint_family(path, options.get("config"))
    return family.estimator.from_checkpoint(path, device=device, mode=mode, **options)


def build_estimator(family: str, cfg, *, device="cpu", mode: str = "exact", **options) -> Estimator:
    """An estimator of ``family`` with a freshly initialised network of configuration ``cfg``."""
    return get_family(family).estimator.from_config(cfg, device=device, mode=mode, **options)


__all__ = [
    "Estimator",
    "FamilyInfo",
    "InputSpec",
    "PoseEstimator",
    "build_estimator",
    "checkpoint_family",
    "load_estimator",
]
