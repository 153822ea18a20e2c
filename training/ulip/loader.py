"""Loading the frozen ULIP encoders from local ULIP checkpoints (nothing is downloaded).

The ULIP releases store ``{"state_dict": {"module.point_encoder....": ...}, "args": argparse.Namespace,
...}``.
They are read with ``torch.load(weights_only=True)``; ``argparse.Namespace`` (a plain attribute container)
is the
one non-tensor global allowed, because the released files carry their training arguments. Only the
``point_encoder.*`` keys are used (the image/text towers and projections are not needed for the features
CleanPose
uses); those are loaded strictly.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from cleanpose_training.ulip.pointbert import PointBertConfig, PointTransformer
from cleanpose_training.ulip.pointnet2_ssg import Pointnet2Ssg

log = logging.getLogger(__name__)


class UlipCheckpointError(RuntimeError):
    pass


def read_ulip_state_dict(path: str | os.PathLike, prefix: str = "point_encoder.") -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UlipCheckpointError(f"ULIP checkpoint {path!r} not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError names the offending global
        raise UlipCheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) "
            f"({str(exc).strip().splitlines()[0]}). The file needs pickled objects other than tensors and "
            "argparse.Namespace; re-save only its weights from a trusted environment, e.g. "
            "torch.save(torch.load(p)['state_dict'], 'pointbert_sd.pt')"
        ) from None
    sd = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise UlipCheckpointError(f"{path}: expected a state_dict (or a dict with 'state_dict') of tensors")
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}
    picked = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if not picked:
        # A bare encoder state_dict (already stripped of the wrapper prefix) is accepted too.
        picked = sd
    return picked


def _load_strict(module: torch.nn.Module, sd: dict, path: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(expected) & set(sd) if tuple(expected[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        raise UlipCheckpointError(
            f"{path}: point encoder keys do not match ({type(module).__name__}); missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, wrong shape {wrong[:8]}"
        )
    module.load_state_dict(sd, strict=True)


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def load_pointbert_teacher(path, cfg: PointBertConfig | None = None) -> PointTransformer:
    """Frozen ULIP-2 PointBERT (``pointbert_ULIP-2.pt``); its 768-d CLS‖max feature is the distillation
    target."""
    net = PointTransformer(cfg)
    _load_strict(net, read_ulip_state_dict(path), os.fspath(path))
    log.info("distillation teacher: ULIP-2 PointBERT from %s", path)
    return _freeze(net)


def load_pointnet2_ssg(path) -> Pointnet2Ssg:
    """Frozen ULIP PointNet++ SSG (``checkpoint_pointnet2_ssg.pt``) for the queue initialisation, eval
    mode."""
    net = Pointnet2Ssg()
    _load_strict(net, read_ulip_state_dict(path), os.fspath(path))
    return _freeze(net).eval()
