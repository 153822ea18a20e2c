"""Weights in and out: published ``.pt/.pth`` state_dicts, DINOv2 hub weights, and our safetensors format.

Published files are read with ``torch.load(weights_only=True)`` only. Loading into a network is strict
(model.md §8, as ``gorilla.solver.load_checkpoint(strict=True)``) with the published exceptions: a missing
``num_batches_tracked`` is tolerated, and the training-only distillation keys are accepted even when the
network does not have them. Every failure raises a ``cleanpose_model.errors`` type whose message names the
file and lists the offending keys.

Our format is one ``.safetensors`` file: all ``net.state_dict()`` tensors, the confounder queue under the key
``queue`` (CleanPose), and a JSON header in the safetensors metadata entry ``cleanpose``. The header's
``family`` names the model family (``cleanpose_model.families``) that reads the file; files written before
that entry existed have only ``variant``, whose value is the family name (``header_family``).
``write_checkpoint`` / ``read_checkpoint`` are the format for any family; ``save_checkpoint`` /
``load_checkpoint`` put a CleanPose / AG-Pose network (and its queue) through it.

This module knows the file format and the published key layout, not the estimators: they import it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping

import torch

from cleanpose_model.errors import (
    CheckpointFormatError,
    InvalidCheckpointFile,
    QueueError,
    StateDictMismatch,
    WrongVariantError,
)

FORMAT_NAME = "cleanpose_ros.checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "cleanpose"
QUEUE_KEY = "queue"
_LIST_LIMIT = 20

# cat_num -> (dataset, config-name suffix); the configs are named <variant>_<suffix>.
_DATASETS = {6: ("NOCS (CAMERA25/REAL275)", "nocs"), 10: ("HouseCat6D", "housecat6d")}
_NOCS_HEAD_KEY = "nocs_predictor.atten_mlp.4.weight"


def _is_distill_key(key: str) -> bool:
    return key == "pointnet2ulip" or key.startswith("projector_pts.")


def _listing(items, limit: int = _LIST_LIMIT) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _shape_mismatches(expected: Mapping, sd: Mapping) -> list[tuple[str, tuple, tuple]]:
    """(key, expected shape, got shape) for every key of both whose shapes differ."""
    return [
        (k, tuple(expected[k].shape), tuple(sd[k].shape))
        for k in sd
        if k in expected and expected[k].shape != sd[k].shape
    ]


def _key_report(missing, unexpected, shapes) -> list[str]:
    """The message lines of a key mismatch, each list counted and shortened."""
    lines = []
    if missing:
        lines.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        lines.append(f"shape mismatches ({len(shapes)}, as (key, expected, got)): {_listing(shapes)}")
    return lines


def _torch_load(path) -> object:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidCheckpointFile(path, "file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InvalidCheckpointFile(
            path, f"refused by the weights-only loader (holds objects other than tensors): {first}"
        ) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = f"truncated or corrupt file ({type(exc).__name__}: {first})"
        raise InvalidCheckpointFile(path, reason) from None


def _as_state_dict(obj, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise InvalidCheckpointFile(path, f"expected a state_dict (tensor dict), not {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidCheckpointFile(path, f"entries that are not named tensors: {_listing(bad)}")
    return dict(obj)


def load_published_state_dict(path) -> dict[str, torch.Tensor]:
    """Read a published state_dict (``epoch_30.pt``): raw or wrapped in "model"/"state_dict", ``module.``
    prefix stripped, the frozen ULIP teacher (``ULIP_model.*``) dropped."""
    path = os.fspath(path)
    sd = _as_state_dict(_torch_load(path), path)
    if next(iter(sd)).startswith("module."):
        sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not k.startswith("ULIP_model.")}


def _variant_problem(expected: Mapping, sd: Mapping) -> str | None:
    net_fd = any(k.startswith("FD_Encoder.") for k in expected)
    file_fd = any(k.startswith("FD_Encoder.") for k in sd)
    if net_fd and not file_fd:
        return (
            "every FD_Encoder.* key is missing: this is an AG-Pose checkpoint, use variant agpose "
            "(e.g. config agpose_nocs)"
        )
    if file_fd and not net_fd:
        return (
            "the file has FD_Encoder.* keys the network lacks: this is a CleanPose checkpoint, use "
            "variant cleanpose (e.g. config cleanpose_nocs)"
        )
    if _NOCS_HEAD_KEY in expected and _NOCS_HEAD_KEY in sd:
        want, got = expected[_NOCS_HEAD_KEY].shape, sd[_NOCS_HEAD_KEY].shape
        if want != got and want[1:] == got[1:] and want[0] % 192 == 0 and got[0] % 192 == 0:
            n_net, n_file = want[0] // 192, got[0] // 192
            variant = "cleanpose" if file_fd else "agpose"
            ds, suffix = _DATASETS.get(n_file, (f"a {n_file}-category dataset", f"<{n_file}-category>"))
            net_ds = _DATASETS.get(n_net, (f"{n_net} categories",))[0]
            return (
                f"{_NOCS_HEAD_KEY} has {got[0]} = {n_file}x3x64 output channels: the checkpoint was "
                f"trained for {n_file} categories ({ds}), the network was built for {n_net} ({net_ds}); "
                f"use the dataset config {variant}_{suffix}"
            )
    return None


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    sd: Mapping[str, torch.Tensor],
    source: str,
    allow_missing_prefixes: tuple[str, ...] = (),
) -> None:
    """Raise ``WrongVariantError``/``StateDictMismatch`` unless ``sd`` loads strictly into ``expected``."""
    problem = _variant_problem(expected, sd)
    missing = [
        k
        for k in expected
        if k not in sd and not k.endswith("num_batches_tracked") and not k.startswith(allow_missing_prefixes)
    ]
    unexpected = [k for k in sd if k not in expected and not _is_distill_key(k)]
    shapes = _shape_mismatches(expected, sd)
    if problem is None and not (missing or unexpected or shapes):
        return
    lines = [f"state_dict from {source} does not match the network:"]
    if problem:
        lines.append(problem)
    lines += _key_report(missing, unexpected, shapes)
    cls = WrongVariantError if problem else StateDictMismatch
    raise cls("\n  ".join(lines), missing, unexpected, shapes)


def load_into(
    net: torch.nn.Module,
    sd: Mapping[str, torch.Tensor],
    source: str = "<state_dict>",
    allow_missing_prefixes: tuple[str, ...] = (),
) -> torch.nn.Module:
    """Strictly load ``sd`` into ``net`` (in place, values cast to the net's dtypes); returns ``net``."""
    expected = net.state_dict()
    check_state_dict(expected, sd, source, allow_missing_prefixes)
    net.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=False)
    return net


def load_dinov2_weights(net: torch.nn.Module, path, prefix: str = "rgb_extractor.") -> torch.nn.Module:
    """Load a DINOv2 hub weight file (``dinov2_vits14_pretrain.pth``: keys without ``rgb_extractor.``, no
    head, possibly ``mask_token``) into the network's backbone."""
    path = os.fspath(path)
    sd = _as_state_dict(_torch_load(path), path)
    sd = {
        (k if k.startswith(prefix) else prefix + k): v
        for k, v in sd.items()
        if not k.startswith(("head.", prefix + "head."))
    }
    expected = {k: v for k, v in net.state_dict().items() if k.startswith(prefix)}
    if not expected:
        raise StateDictMismatch(f"the network has no '{prefix}' backbone to load {path} into")
    if any("register_tokens" in k for k in sd):
        raise WrongVariantError(
            f"{path} is a DINOv2 checkpoint with register tokens (dinov2_*_reg); the "
            "network uses dinov2_vits14 without registers"
        )
    missing = [k for k in expected if k not in sd and not k.endswith("mask_token")]
    unexpected = [k for k in sd if k not in expected]
    shapes = _shape_mismatches(expected, sd)
    if missing or unexpected or shapes:
        lines = [f"DINOv2 weights {path} do not match the backbone '{prefix[:-1]}':"]
        got, want = sd.get(prefix + "cls_token"), expected.get(prefix + "cls_token")
        if got is not None and want is not None and got.shape != want.shape:
            lines.append(
                f"embedding width {got.shape[-1]} != {want.shape[-1]}: not the ViT-S/14 "
                "(dinov2_vits14) weights"
            )
        lines += _key_report(missing, unexpected, shapes)
        raise StateDictMismatch("\n  ".join(lines), missing, unexpected, shapes)
    net.load_state_dict(sd, strict=False)
    return net


# ----------------------------------------------------------------------------------------------------------
# Config <-> dict (the header stores the full model config)


def config_to_dict(cfg) -> dict:
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict):
    from cleanpose_model.config import ModelConfig

    if hasattr(ModelConfig, "from_dict"):
        return ModelConfig.from_dict(d)
    return ModelConfig(**d)


def load_config(name_or_path):
    """A ``ModelConfig`` from a YAML path or the name of a shipped config (``cleanpose_nocs``)."""
    from cleanpose_model.config import ModelConfig

    path = os.fspath(name_or_path)
    if os.path.isfile(path):
        return ModelConfig.from_yaml(path)
    return ModelConfig.named(path)


def uses_queue(net: torch.nn.Module) -> bool:
    """True for the CleanPose variant (front-door encoder present), which needs the confounder queue."""
    return getattr(net, "FD_Encoder", None) is not None


def _variant_name(net: torch.nn.Module, cfg) -> str:
    v = getattr(cfg, "variant", None)
    return str(v) if v else ("cleanpose" if uses_queue(net) else "agpose")


def _categories(cfg, cat_num: int) -> list[str]:
    from cleanpose_model.config import config_categories

    return config_categories(cfg, cat_num)


def _build_net(cfg) -> torch.nn.Module:
    from cleanpose_model.net import CleanPoseNet

    return CleanPoseNet(cfg)


# ----------------------------------------------------------------------------------------------------------
# Our format


def save_checkpoint(path, net: torch.nn.Module, cfg, queue=None, metadata: dict | None = None) -> dict:
    """Write ``net`` (+ queue) as one safetensors file, atomically. Returns the JSON header written."""
    from cleanpose_model.queue import ConfounderQueue

    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in net.state_dict().items()}
    if QUEUE_KEY in tensors:
        raise CheckpointFormatError(f"the network has a tensor named {QUEUE_KEY!r}; the format reserves it")
    if isinstance(queue, ConfounderQueue):
        queue = queue.features
    if uses_queue(net) and queue is None:
        raise QueueError("a CleanPose checkpoint needs its confounder queue (tensor_list.pkl); none given")
    if queue is not None:
        tensors[QUEUE_KEY] = queue.detach().to("cpu", torch.float32).clone().contiguous()
    cat_num = tensors[QUEUE_KEY].shape[0] if queue is not None else int(getattr(cfg, "cat_num", 6))
    variant = _variant_name(net, cfg)
    # CleanPoseNet's two variants are the two families cleanpose and agpose.
    header = {"family": variant, "variant": variant, "categories": _categories(cfg, cat_num)}
    clash = [k for k in ("family", "variant") if k in (metadata or {})]
    if clash:
        raise ValueError(f"metadata may not override {clash[0]!r}")
    return write_checkpoint(path, tensors, config_to_dict(cfg), dict(header, **(metadata or {})))


def write_checkpoint(path, tensors: Mapping[str, torch.Tensor], config: dict, header: Mapping) -> dict:
    """Write ``tensors`` as one safetensors file in our format, atomically, for any model family: ``header``
    must name the ``family``; ``config`` is the family's config as a dict. Returns the JSON header written."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    if not header.get("family"):
        raise ValueError("the header must name the model family ('family')")
    reserved = [k for k in ("format", "version", "config") if k in header]
    if reserved:
        raise ValueError(f"metadata may not override {reserved[0]!r}")
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": config,
        "source": "",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **header,
    }
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(header)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return header


def read_header(path) -> dict:
    """The JSON header of our checkpoint, validated (format name and version)."""
    header, _ = read_checkpoint(path, tensors=False)
    return header


def header_family(header: Mapping) -> str:
    """The model family of a checkpoint header: ``family``, or for files written before that entry existed
    their ``variant`` (``cleanpose``/``agpose``, which are the family names)."""
    return str(header.get("family") or header["variant"])


def read_checkpoint(path, tensors: bool = True) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """``(header, tensors)`` of our checkpoint, any model family; the header validated (format, version, a
    family named), ``tensors`` None when not asked for."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidCheckpointFile(path, "file not found")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] == b"PK" or magic[:1] == b"\x80":
        raise CheckpointFormatError(
            f"{path} is a torch pickle/zip file (a published .pt/.pth checkpoint?), not our safetensors "
            "format: convert it with "
            "`cleanpose-convert --checkpoint <file> --config <name> --out model.safetensors`"
        )
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else None  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own SafetensorError and plain OSErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidCheckpointFile(path, f"truncated or corrupt safetensors file ({first})") from None
    if METADATA_KEY not in meta:
        raise CheckpointFormatError(
            f"{path} has no '{METADATA_KEY}' metadata header: it is a safetensors "
            "file but was not written by cleanpose_model's save_checkpoint"
        )
    try:
        header = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"{path}: metadata header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        found = header.get("format") if isinstance(header, dict) else header
        raise CheckpointFormatError(f"{path}: header format is {found!r}, expected {FORMAT_NAME!r}")
    version = header.get("version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "; update cleanpose_model" if newer else ""
        raise CheckpointFormatError(
            f"{path}: checkpoint format version {version!r} is not supported (this "
            f"code reads version {FORMAT_VERSION}{hint})"
        )
    if "config" not in header:
        raise CheckpointFormatError(f"{path}: metadata header lacks 'config'")
    if not (header.get("family") or header.get("variant")):
        raise CheckpointFormatError(f"{path}: metadata header names no model family ('family' or 'variant')")
    return header, data


def load_checkpoint(path, device="cpu", dtype: torch.dtype = torch.float32):
    """Load our safetensors checkpoint -> ``(net, cfg, queue)``; ``net`` in eval mode on ``device``/``dtype``,
    ``queue`` a ``ConfounderQueue`` (or None for AG-Pose)."""
    from cleanpose_model.device import resolve_device
    from cleanpose_model.queue import ConfounderQueue

    dev = resolve_device(device).device
    header, tensors = read_checkpoint(path)
    family = header_family(header)
    if family not in ("cleanpose", "agpose"):
        raise WrongVariantError(
            f"{path} holds a {family!r} model, not a CleanPose/AG-Pose network: load it with "
            "cleanpose_model.estimator.load_estimator"
        )
    cfg = config_from_dict(header["config"])
    net = _build_net(cfg)
    queue_t = tensors.pop(QUEUE_KEY, None)
    load_into(net, tensors, source=os.fspath(path))
    queue = None
    if queue_t is not None:
        queue = ConfounderQueue(queue_t, int(getattr(cfg, "select_num", 12))).to(dev, dtype)
    elif uses_queue(net):
        raise QueueError(f"{path}: CleanPose checkpoint without a '{QUEUE_KEY}' tensor")
    return net.to(device=dev, dtype=dtype).eval(), cfg, queue


def load_published(path, config, queue_path=None, dinov2_path=None):
    """Build ``(net, cfg, queue)`` from published files: state_dict, queue pickle (CleanPose) and optionally a
    DINOv2 hub file for a checkpoint saved without its frozen backbone."""
    from cleanpose_model.io.queue_pickle import load_tensor_list
    from cleanpose_model.queue import ConfounderQueue

    if config is None:
        raise CheckpointFormatError(
            f"{path} is a published checkpoint: give its config (config='cleanpose_nocs' or a YAML path) "
            "and, for CleanPose, queue_path, or convert it once with `cleanpose-convert`"
        )
    cfg = load_config(config) if isinstance(config, (str, os.PathLike)) else config
    net = _build_net(cfg)
    sd = load_published_state_dict(path)
    allow = ()
    if dinov2_path is not None:
        load_dinov2_weights(net, dinov2_path)
        allow = ("rgb_extractor.",)
    load_into(net, sd, source=os.fspath(path), allow_missing_prefixes=allow)
    queue = None
    if uses_queue(net):
        if queue_path is None:
            raise QueueError(
                f"{path} is a CleanPose checkpoint: its confounder queue (tensor_list.pkl, "
                "saved next to the .pt files) is required; pass --queue / queue_path"
            )
        queue = ConfounderQueue.from_tensor_list(
            load_tensor_list(queue_path), int(getattr(cfg, "select_num", 12))
        )
        cat_num = int(sd[_NOCS_HEAD_KEY].shape[0] // 192) if _NOCS_HEAD_KEY in sd else queue.cat_num
        if queue.cat_num != cat_num:
            raise QueueError(f"queue {queue_path} has {queue.cat_num} categories, the checkpoint {cat_num}")
        w = net.state_dict().get("FD_Encoder.mlp_global.weight")
        d = w.shape[0] if w is not None else queue.dim
        if queue.dim != d:
            raise QueueError(f"queue {queue_path} has {queue.dim}-d features, the front-door encoder: {d}")
    return net.eval(), cfg, queue
