"""Configuration of the self-supervised family (``selfsup``): every width and every choice the paper leaves
open is a field here; the shipped YAMLs (``cleanpose_model/configs/selfsup*.yaml``) say why each value was
chosen."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanpose_model.categories import NOCS
from cleanpose_model.config import CONFIG_DIR, dataclass_from_dict, dataclass_from_yaml

# The U-Net's two similarity levels sit at fixed strides of the ResNet18-style encoder: F2 (regions) at the
# stride-16 level, F3 (pixels) at the stride-4 level; the region grid is image_size / 16 per side.
REGION_STRIDE = 16
PIXEL_STRIDE = 4


@dataclass
class SelfSupConfig:
    variant: str = "selfsup"
    categories: list[str] = field(default_factory=lambda: list(NOCS.names))
    image_size: int = 256
    n_points: int = 1024
    encoder_widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    feat_dim: int = 128
    patch_grid: int = 4
    code_dim: int = 64
    codebook_size: int = 512
    beta: float = 0.25
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    category_conditioned: bool = True
    shape_points: int = 2048
    decoder_hidden: list[int] = field(default_factory=lambda: [512, 1024])
    pointnet_widths: list[int] = field(default_factory=lambda: [64, 128, 256])
    corr_points: int = 512
    tau: float = 0.1
    region_min_pixels: int = 1
    cycle_keep: float = 0.5
    min_pairs: int = 8
    n_keypoints: int = 64

    def __post_init__(self) -> None:
        if self.image_size % (REGION_STRIDE * 2) or self.image_size < 64:
            raise ValueError(f"image_size must be a multiple of 32, at least 64; got {self.image_size}")
        if self.shape_points % self.corr_points:
            raise ValueError(
                f"corr_points ({self.corr_points}) must divide shape_points ({self.shape_points})"
            )
        if len(self.encoder_widths) != 4:
            raise ValueError(f"encoder_widths needs 4 stage widths, got {self.encoder_widths}")
        if self.n_keypoints > self.shape_points:
            raise ValueError("n_keypoints must not exceed shape_points")

    @property
    def region_grid(self) -> int:
        return self.image_size // REGION_STRIDE

    @property
    def pixel_grid(self) -> int:
        return self.image_size // PIXEL_STRIDE

    @property
    def n_patches(self) -> int:
        return self.patch_grid**2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelfSupConfig:
        return dataclass_from_dict(cls, data, "model")

    @classmethod
    def from_yaml(cls, path: str | Path) -> SelfSupConfig:
        return dataclass_from_yaml(cls, path, section="model")

    @classmethod
    def named(cls, name: str) -> SelfSupConfig:
        """A shipped config: ``selfsup`` (the paper's sizes) or ``selfsup_tiny`` (CPU tests, smoke runs)."""
        path = CONFIG_DIR / f"{name}.yaml"
        if not name.startswith("selfsup") or not path.is_file():
            shipped = sorted(p.stem for p in CONFIG_DIR.glob("selfsup*.yaml"))
            raise ValueError(f"no shipped selfsup config named {name!r}; available: {shipped}")
        return cls.from_yaml(path)


def load_selfsup_config(cfg) -> SelfSupConfig:
    """``cfg`` as a ``SelfSupConfig``: one already, a mapping, a YAML path or a shipped config name."""
    if isinstance(cfg, SelfSupConfig):
        return cfg
    if isinstance(cfg, dict):
        return SelfSupConfig.from_dict(cfg)
    path = Path(cfg)
    return SelfSupConfig.from_yaml(path) if path.is_file() else SelfSupConfig.named(str(cfg))
