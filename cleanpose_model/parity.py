"""Parity weights and checks against the vectors recorded from the published networks.

The parity vectors (`test/data/parity/*.npz`) were produced by the published code with every
state_dict entry overwritten by a deterministic function of its key name (spec parity.md), so
the weights can be rebuilt here from the key list alone and nothing large is stored.
"""

from __future__ import annotations

import ast
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_DIR = Path(__file__).resolve().parent / "data"

# parity-file stem -> (shipped config name, official key list)
VARIANTS = {
    "cleanpose": ("cleanpose_nocs", "official_keys_cleanpose_nocs.txt"),
    "agpose": ("agpose_nocs", "official_keys_agpose_nocs.txt"),
}

# Recorded intermediates and outputs: npz name -> our forward's output name.
TENSOR_NAMES = {
    "dino_x_prenorm": "dino_x_prenorm",
    "iakd_rgb_local": "iakd_rgb_local",
    "iakd_pts_local": "iakd_pts_local",
    "iakd_kpt_query": "iakd_kpt_query",
    "iakd_heatmap": "iakd_heatmap",
    "gafa_out": "gafa_out",
    "fd_global_in": "fd_global_in",
    "fd_out": "fd_out",
    "out_pred_rotation": "pred_rotation",
    "out_pred_translation": "pred_translation",
    "out_pred_size": "pred_size",
    "out_pred_kpt_3d": "pred_kpt_3d",
    "out_kpt_nocs": "kpt_nocs",
}
ABS_CHECKED = ("out_pred_rotation", "out_pred_translation", "out_pred_size")
REL_TOL = 1e-4
ABS_TOL = 1e-4

_DTYPES = {"float32": torch.float32, "int64": torch.int64, "float64": torch.float64}


@dataclass(frozen=True)
class KeySpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def read_key_list(path: str | Path) -> list[KeySpec]:
    """Lines `key (d0, d1, ...) dtype` as in `official_keys_*.txt`."""
    specs = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, rest = line.split(" ", 1)
        shape_txt, dtype_txt = rest.rsplit(" ", 1)
        shape = ast.literal_eval(shape_txt)
        if dtype_txt not in _DTYPES or not isinstance(shape, tuple):
            raise ValueError(f"{path}:{lineno}: cannot parse {line!r}")
        specs.append(KeySpec(name, tuple(int(s) for s in shape), _DTYPES[dtype_txt]))
    return specs


def official_keys(config_name: str) -> list[KeySpec]:
    """Published key list for 'cleanpose_nocs', 'cleanpose_housecat6d' or 'agpose_nocs'."""
    return read_key_list(DATA_DIR / f"official_keys_{config_name}.txt")


def parity_tensor(spec: KeySpec) -> torch.Tensor:
    """The deterministic parity value of one state_dict entry (parity.md)."""
    if not spec.dtype.is_floating_point:
        return torch.zeros(spec.shape, dtype=spec.dtype)
    key = spec.name
    u = np.random.default_rng(zlib.crc32(key.encode())).random(spec.shape)
    if key.endswith("running_var"):
        v = 0.5 + u
    elif key.endswith("running_mean"):
        v = 0.2 * (2 * u - 1)
    elif len(spec.shape) <= 1:
        v = 0.1 * (2 * u - 1) if key.endswith("bias") else 1 + 0.2 * (2 * u - 1)
    else:
        fan_in = math.prod(spec.shape) / spec.shape[0]
        v = (2 * u - 1) * math.sqrt(3.0 / fan_in)
    return torch.from_numpy(np.asarray(v)).to(spec.dtype)


def parity_state_dict(config_name: str) -> dict[str, torch.Tensor]:
    return {s.name: parity_tensor(s) for s in official_keys(config_name)}


def build_parity_net(variant: str, device: torch.device | str = "cpu"):
    """CleanPoseNet of `variant` ('cleanpose' | 'agpose') with parity weights, eval mode."""
    from cleanpose_model.config import ModelConfig
    from cleanpose_model.net import CleanPoseNet

    config_name, _ = VARIANTS[variant]
    net = CleanPoseNet(ModelConfig.named(config_name))
    net.load_state_dict(parity_state_dict(config_name), strict=True)
    return net.to(device).eval()


def load_vectors(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def queue_sample(vectors: dict[str, np.ndarray]) -> np.ndarray:
    """(B, select_num, d): object b gets queue[cls_b, queue_selected_idx[cls_b]], as recorded."""
    cls = vectors["category_label"].reshape(-1)
    sel = vectors["queue_selected_idx"][cls]  # (B, S)
    return vectors["queue"][cls[:, None], sel]


def run_parity(
    variant: str, vectors_path: str | Path, device: torch.device | str = "cpu", net=None, forward=None
) -> dict[str, dict[str, float]]:
    """Run the parity inputs through our network; per recorded tensor: rel error, max abs error.

    ``forward(rgb, pts, choose, category, queue_feats)`` replaces the eager call (e.g. a CUDA-graph
    runner); only the tensors it returns are compared (the final outputs, no intermediates).
    """
    vec = load_vectors(vectors_path)
    net = net if net is not None else build_parity_net(variant, device)
    dev = torch.device(device)

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(dev)

    queue = t(queue_sample(vec)) if net.cfg.use_front_door else None
    args = (t(vec["rgb"]), t(vec["pts"]), t(vec["choose"]), t(vec["category_label"]))
    with torch.no_grad():
        if forward is None:
            out = net(*args, queue_feats=queue, return_intermediates=True)
        else:
            out = forward(*args, queue_feats=queue)
    report: dict[str, dict[str, float]] = {}
    for npz_name, ours_name in TENSOR_NAMES.items():
        if npz_name not in vec or ours_name not in out:
            continue
        ref = torch.from_numpy(vec[npz_name]).double()
        got = out[ours_name].detach().double().cpu()
        if got.shape != ref.shape:
            raise ValueError(f"{npz_name}: shape {tuple(got.shape)} != recorded {tuple(ref.shape)}")
        diff = got - ref
        report[npz_name] = {
            "rel_err": float(diff.norm() / ref.norm().clamp_min(1e-30)),
            "max_abs_err": float(diff.abs().max()),
        }
    return report


def failures(report: dict[str, dict[str, float]]) -> list[str]:
    bad = []
    for name, err in report.items():
        if err["rel_err"] > REL_TOL:
            bad.append(f"{name}: rel err {err['rel_err']:.3e} > {REL_TOL}")
        if name in ABS_CHECKED and err["max_abs_err"] > ABS_TOL:
            bad.append(f"{name}: max abs err {err['max_abs_err']:.3e} > {ABS_TOL}")
    return bad


def format_report(report: dict[str, dict[str, float]]) -> str:
    lines = [f"{'tensor':<24} {'rel err':>11} {'max abs err':>12}"]
    for name, err in report.items():
        lines.append(f"{name:<24} {err['rel_err']:>11.3e} {err['max_abs_err']:>12.3e}")
    return "\n".join(lines)
