"""Typed model configuration, loaded from YAML.

Every width of the network is a field here so that the published configuration
(`configs/cleanpose_nocs.yaml`) and the small demo network (`configs/demo.yaml`)
share one code path. Defaults reproduce the published CleanPose NOCS network.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from cleanpose_model.categories import NOCS, dataset_with

# The category lists live in cleanpose_model.categories; these names are kept for the config defaults and
# for code that imports them from here.
NOCS_CATEGORIES = NOCS.names
NOCS_SYMMETRIC = NOCS.symmetric_names

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _is_dataclass_type(hint) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


class YamlConfig:
    """``to_dict`` / ``from_dict`` / ``from_yaml`` of a config dataclass, through :func:`dataclass_from_dict`.
    ``section``: the key the block may sit under in a larger YAML file, and the name errors give it.
    A field annotated with a dataclass and given no default (``dino: DinoConfig``) is a nested block: it
    defaults to that dataclass's defaults, as :func:`dataclass_from_dict` builds it from a nested mapping."""

    section: ClassVar[str] = "model"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        own = inspect.get_annotations(cls)
        for name, hint in typing.get_type_hints(cls).items():
            if name in own and name not in cls.__dict__ and _is_dataclass_type(hint):
                setattr(cls, name, field(default_factory=hint))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None):
        return dataclass_from_dict(cls, data, cls.section)

    @classmethod
    def from_yaml(cls, path: str | Path):
        return dataclass_from_yaml(cls, path, section=cls.section)


@dataclass
class DinoConfig:
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 14
    # Size of the stored positional-embedding grid (518 -> 37x37 for the hub ViT-S/14).
    img_size: int = 518
    mlp_ratio: float = 4.0
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    layer_norm_eps: float = 1e-6
    init_values: float = 1.0
    # The published network keeps DINOv2 frozen; the demo network trains it from scratch.
    frozen: bool = True


@dataclass
class PointNet2Config:
    npoints: list[int] = field(default_factory=lambda: [512, 256, 128, 64])
    radii: list[list[float]] = field(
        default_factory=lambda: [[0.01, 0.02], [0.02, 0.04], [0.04, 0.08], [0.08, 0.16]]
    )
    nsamples: list[list[int]] = field(default_factory=lambda: [[16, 32], [16, 32], [16, 32], [16, 32]])
    # Per SA level, the MLP widths used by every scale of that level.
    sa_mlps: list[list[int]] = field(
        default_factory=lambda: [[16, 16, 32], [32, 32, 64], [64, 64, 128], [128, 128, 256]]
    )
    # Indexed like `FP_modules.{i}`; FP_modules.0 produces the per-point features.
    fp_mlps: list[list[int]] = field(default_factory=lambda: [[128, 128], [256, 256], [256, 256], [512, 512]])


@dataclass
class AttentionConfig:
    num_heads: int = 4
    dim_ffn: int = 256


@dataclass
class KeypointConfig:
    kpt_num: int = 96
    block_num: int = 4
    temperature: float = 0.1


@dataclass
class GafaConfig:
    ks: list[int] = field(default_factory=lambda: [16, 32])
    delta_hidden: int = 64
    tau: float = 5.0


@dataclass
class NocsConfig:
    bins_num: int = 64
    block_num: int = 2
    mlp: list[int] = field(default_factory=lambda: [512, 512])
    atten_hidden: int = 512


@dataclass
class FrontDoorConfig:
    cross_block_num: int = 4
    self_block_num: int = 2
    select_num: int = 12
    queue_length: int = 80


@dataclass
class ReconstructorConfig:
    pts_per_kpt: int = 10
    pos_hidden: list[int] = field(default_factory=lambda: [64, 128])
    decoder_hidden: list[int] = field(default_factory=lambda: [512, 512])


@dataclass
class EstimatorConfig:
    pts_mlp: list[int] = field(default_factory=lambda: [32, 64])
    pose_mlp1: list[int] = field(default_factory=lambda: [512, 256])
    pose_mlp2: list[int] = field(default_factory=lambda: [512, 512])
    head_hidden: list[int] = field(default_factory=lambda: [512, 256])


@dataclass
class DistillConfig:
    feat_dim: int = 768
    alpha: float = 0.1


@dataclass
class AugmentationConfig:
    max_translation: float = 0.02
    max_angle_deg: float = 20.0
    scale_min: float = 0.8
    scale_max: float = 1.2


@dataclass
class ModelConfig(YamlConfig):
    variant: str = "cleanpose"
    categories: list[str] = field(default_factory=lambda: list(NOCS_CATEGORIES))
    symmetric_categories: list[str] = field(default_factory=lambda: list(NOCS_SYMMETRIC))
    n_points: int = 1024
    image_size: int = 224
    d_model: int = 256
    pts_feat_dim: int = 128
    rgb_feat_dim: int = 128
    use_front_door: bool = True
    has_distill_head: bool = True
    # Sample the RGB features only at the chosen pixels instead of upsampling the whole map first;
    # both are the same linear map, the literal path exists for checking.
    rgb_sparse_gather: bool = True
    dino: DinoConfig
    pointnet2: PointNet2Config
    attention: AttentionConfig
    keypoints: KeypointConfig
    gafa: GafaConfig
    nocs: NocsConfig
    front_door: FrontDoorConfig
    reconstructor: ReconstructorConfig
    estimator: EstimatorConfig
    distill: DistillConfig
    augmentation: AugmentationConfig

    def __post_init__(self) -> None:
        self.validate()

    @property
    def cat_num(self) -> int:
        return len(self.categories)

    @property
    def kpt_num(self) -> int:
        return self.keypoints.kpt_num

    @property
    def select_num(self) -> int:
        return self.front_door.select_num

    @property
    def symmetric_ids(self) -> list[int]:
        return [self.categories.index(c) for c in self.symmetric_categories]

    def validate(self) -> None:
        if self.variant not in ("cleanpose", "agpose"):
            raise ValueError(f"unknown variant {self.variant!r} (expected 'cleanpose' or 'agpose')")
        if len(set(self.categories)) != len(self.categories) or not self.categories:
            raise ValueError(f"categories must be a non-empty list of unique names, got {self.categories}")
        unknown = [c for c in self.symmetric_categories if c not in self.categories]
        if unknown:
            raise ValueError(f"symmetric categories {unknown} are not in categories {self.categories}")
        if self.pts_feat_dim + self.rgb_feat_dim != self.d_model:
            raise ValueError(
                f"pts_feat_dim + rgb_feat_dim must equal d_model: "
                f"{self.pts_feat_dim} + {self.rgb_feat_dim} != {self.d_model}"
            )
        pn = self.pointnet2
        n_levels = len(pn.npoints)
        for name in ("radii", "nsamples", "sa_mlps", "fp_mlps"):
            if len(getattr(pn, name)) != n_levels:
                raise ValueError(f"pointnet2.{name} must have {n_levels} entries (one per SA level)")
        for lvl in range(n_levels):
            if len(pn.radii[lvl]) != len(pn.nsamples[lvl]):
                raise ValueError(f"pointnet2 level {lvl}: radii and nsamples differ in length")
        if pn.fp_mlps[0][-1] != self.pts_feat_dim:
            raise ValueError(
                f"pointnet2.fp_mlps[0][-1] ({pn.fp_mlps[0][-1]}) must equal "
                f"pts_feat_dim ({self.pts_feat_dim})"
            )
        if self.d_model % self.attention.num_heads:
            raise ValueError("d_model must be divisible by attention.num_heads")
        if self.dino.embed_dim % self.dino.num_heads:
            raise ValueError("dino.embed_dim must be divisible by dino.num_heads")
        if self.image_size % self.dino.patch_size:
            raise ValueError("image_size must be a multiple of dino.patch_size")
        if self.use_front_door and self.front_door.select_num > self.front_door.queue_length:
            raise ValueError("front_door.select_num must not exceed front_door.queue_length")
        if self.estimator.pose_mlp2[0] <= 0 or self.keypoints.kpt_num <= 0:
            raise ValueError("widths must be positive")

    @classmethod
    def named(cls, name: str) -> ModelConfig:
        """One of the shipped configs: cleanpose_nocs, cleanpose_housecat6d, agpose_nocs, demo."""
        path = CONFIG_DIR / f"{name}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise ValueError(f"no shipped config named {name!r}; available: {shipped}")
        return cls.from_yaml(path)


T = TypeVar("T")


def dataclass_from_dict(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """``cls(**data)`` with nested dataclass fields built from nested mappings, and a key the dataclass does
    not have raised as ``ValueError`` naming where it sits (``where``, e.g. ``"model.dino"``) and what is
    allowed: a misspelt key in a config must not silently fall back to a default."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = hints.get(name)
        nested = _is_dataclass_type(sub)
        kwargs[name] = dataclass_from_dict(sub, value, f"{where}.{name}") if nested else value
    return cls(**kwargs)


def dataclass_from_yaml(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """:func:`dataclass_from_dict` of a YAML file (of its ``section`` mapping when the file has one); errors
    name the file."""
    path = Path(path)
    with path.open("r", encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    if section is not None and isinstance(data.get(section), dict):
        data = data[section]
    try:
        return dataclass_from_dict(cls, data, section or cls.__name__)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def config_categories(cfg, cat_num: int) -> list[str]:
    """The category names of a network: its config's list, else those of the dataset with ``cat_num`` classes,
    else indices."""
    cats = getattr(cfg, "categories", None) if cfg is not None else None
    if cats:
        return list(cats)
    dataset = dataset_with(cat_num)
    return list(dataset.names) if dataset is not None else [str(i) for i in range(cat_num)]
