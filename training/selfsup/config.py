"""Training configuration of the selfsup family (``training/configs/selfsup*.yaml``): one file holds both
stages; the CLI picks the stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from cleanpose_model.config import YamlConfig


@dataclass
class StageConfig:
    """The settings both stages have."""

    iterations: int = 20000
    batch_size: int = 16
    lr: float = 1e-3
    # Wall-clock limit of the stage in seconds (0: none): the run stops (and saves) at the first step past
    # it, so study runs fit a fixed GPU budget; a time-limited run is not reproducible step for step.
    time_budget_s: float = 0.0
    # A NOCS-layout root and its split. Stage 1: labelled shapes rendered beforehand (NocsShapes) instead of
    # rendering on the fly with Open3D, which the GPU box lacks; stage 2: the unlabeled frames.
    data: str = ""
    split: str = "train"


@dataclass
class Stage1Config(StageConfig):
    render_width: int = 160
    render_height: int = 120


@dataclass
class Stage2Weights:
    coarse: float = 1.0
    fine: float = 1.0
    cycle_pix: float = 1.0
    cycle_pt: float = 1.0
    commit: float = 1.0
    cycle_topk: float = 0.5


@dataclass
class Stage2Config(StageConfig):
    lr: float = 1e-4
    init: str = ""
    freeze_decoder: bool = True
    update_memory: bool = True
    weights: Stage2Weights = field(default_factory=Stage2Weights)
    # Input other than a NOCS-layout ``data`` root (one of the three): rosbag2 recordings, or one Wild6D
    # category folder (``wild6d_category`` names it; ``wild6d_list`` its optional sequence list).
    bags: list[str] = field(default_factory=list)
    wild6d: str = ""
    wild6d_category: str = ""
    wild6d_list: str = ""
    # "" (the full model) or one of ABLATIONS (cleanpose_training.selfsup.train applies it).
    ablation: str = ""


@dataclass
class SelfSupTrainConfig(YamlConfig):
    """``from_yaml`` / ``from_dict`` / ``to_dict`` as the other training configs (errors name the key path
    under ``config``, as TrainConfig's)."""

    section: ClassVar[str] = "config"

    model: str = "selfsup"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 1000
    stage1: Stage1Config
    stage2: Stage2Config
