"""What every model family takes and returns: per-object inputs (``ObjectBatch``), the declaration of which of
them a family needs (``InputSpec``) and per-object poses (``PoseResult``). Plain data, no model code, so that
preprocessing, estimators, checkpoints and the ROS runtime can all share them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

# How an estimator runs its network: "exact" reproduces the reference network's fp32 numbers; "fast" may trade
# precision for speed where the device allows it (CUDA). Every family and every inference form takes these.
MODES = ("exact", "fast")


@dataclass
class ObjectBatch:
    """Per-object network inputs: ``rgb`` (B,3,224,224) normalised crops, ``pts`` (B,N,3) camera-frame metres,
    ``choose`` (B,N) int64 crop pixel indices, ``category`` (B,) int64 0-based class ids."""

    rgb: torch.Tensor
    pts: torch.Tensor
    choose: torch.Tensor
    category: torch.Tensor

    def __len__(self) -> int:
        return int(self.category.reshape(-1).shape[0])

    def to(self, device=None, dtype: torch.dtype | None = None) -> ObjectBatch:
        """Move to ``device``; ``dtype`` applies to the float inputs only (indices stay int64)."""
        return ObjectBatch(
            rgb=self.rgb.to(device=device, dtype=dtype),
            pts=self.pts.to(device=device, dtype=dtype),
            choose=self.choose.to(device=device, dtype=torch.long),
            category=self.category.reshape(-1).to(device=device, dtype=torch.long),
        )


@dataclass(frozen=True)
class InputSpec:
    """The per-object inputs an estimator reads: ``fields`` names the ``ObjectBatch`` fields it uses,
    ``image_size`` is the square crop side of ``rgb`` and ``n_points`` the points per object of ``pts`` and
    ``choose``. A caller builds its batches to this declaration (one family may need depth points and an RGB
    crop only, another pixel indices too)."""

    image_size: int
    n_points: int
    fields: tuple[str, ...] = ("rgb", "pts", "choose", "category")

    def __post_init__(self) -> None:
        known = tuple(f.name for f in fields(ObjectBatch))
        unknown = [f for f in self.fields if f not in known]
        if unknown or not self.fields:
            raise ValueError(f"input fields must be a non-empty subset of {known}, got {self.fields}")
        if self.image_size <= 0 or self.n_points <= 0:
            raise ValueError(
                f"image_size and n_points must be positive, got {self.image_size}, {self.n_points}"
            )


@dataclass
class PoseResult:
    """Per-object outputs in the camera frame: ``rotation`` (B,3,3) (columns = object x, y, z axes),
    ``translation`` (B,3) m, ``size`` (B,3) full box extents in m, ``keypoints`` (B,K,3) m."""

    rotation: torch.Tensor
    translation: torch.Tensor
    size: torch.Tensor
    keypoints: torch.Tensor

    def __len__(self) -> int:
        return int(self.rotation.shape[0])

    def as_numpy(self) -> dict[str, np.ndarray]:
        """Host copies; half-precision results are widened to float32 (NumPy has no bfloat16)."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name).detach()
            if t.dtype in (torch.float16, torch.bfloat16):
                t = t.float()
            out[f.name] = t.cpu().numpy()
        return out
