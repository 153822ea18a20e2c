"""The interface every model family implements (``Estimator``) and what the registry knows of a family
(``FamilyInfo``). Nothing here knows a particular family: family modules import this, the registry in
``cleanpose_model.families`` collects them, and ``cleanpose_model.estimator.load_estimator`` dispatches on
it."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cleanpose_model.categories import CategorySet
from cleanpose_model.types import MODES, InputSpec, ObjectBatch, PoseResult

# "fp32" is the ROS parameter's older name of "exact".
_MODE_ALIASES = {"fp32": "exact"}


def check_mode(mode: str) -> str:
    """``mode`` by its canonical name; ``ValueError`` for an unknown one."""
    mode = _MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class FamilyInfo:
    """What a model family is, in one place (the pattern of torchvision's weights metadata).

    ``name`` is what checkpoint headers store (``family``); ``datasets`` the category sets the family is
    published for (the first is its default); ``configs`` its shipped config names; ``inputs`` the per-object
    inputs of its published configuration; ``build_net(cfg)`` makes its network with fresh weights and
    ``estimator`` is its ``Estimator`` class."""

    name: str
    title: str
    datasets: tuple[CategorySet, ...]
    configs: tuple[str, ...]
    inputs: InputSpec
    build_net: Callable[[Any], torch.nn.Module]
    estimator: type[Estimator]

    @property
    def categories(self) -> tuple[str, ...]:
        return self.datasets[0].names

    @property
    def symmetric(self) -> frozenset[str]:
        return self.datasets[0].symmetric


class Estimator(abc.ABC):
    """One model family's inference: per-object inputs in, poses out, on one device in one mode.

    Built from a checkpoint (``from_checkpoint``: weights and config from the file) or from a config
    (``from_config``: fresh weights, for training and tests). ``inputs`` declares the ``ObjectBatch`` fields
    and sizes ``predict`` reads; ``categories`` the class names of its category ids."""

    device: torch.device
    mode: str

    @classmethod
    @abc.abstractmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, device="cpu", mode: str = "exact", **options
    ) -> Estimator:
        """The estimator of the weights in ``path``."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg, *, device="cpu", mode: str = "exact", **options) -> Estimator:
        """An estimator with a freshly initialised network of configuration ``cfg``."""

    @abc.abstractmethod
    def predict(self, batch: ObjectBatch) -> PoseResult:
        """Poses of the objects of ``batch`` (an empty batch gives an empty result)."""

    @abc.abstractmethod
    def warmup(self, n_objects: int = 1) -> None:
        """Forwards on synthetic inputs of up to ``n_objects`` objects, so the first frame pays no set-up."""

    @property
    @abc.abstractmethod
    def family(self) -> FamilyInfo: ...

    @property
    @abc.abstractmethod
    def categories(self) -> list[str]: ...

    @property
    @abc.abstractmethod
    def inputs(self) -> InputSpec: ...
