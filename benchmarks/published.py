"""The published CleanPose network (its own code, from a checkout the caller provides) bound to our
parity weights and inputs, for the forward suite's side-by-side rows (``--published-root``).

Nothing of the published code is in this repository and nothing here builds it: the caller places a
checkout of github.com/chrislin0621/CleanPose at DIR (with its ``model/pointnet2`` CUDA extension built
and importable as ``pointnet2._ext``) and this module imports it the way the published ``test.py`` does:
DIR, DIR/model, DIR/model/pointnet2 and DIR/utils appended to ``sys.path``, then ``from Net import Net``,
``Net(cfg.pose_net, ULIP_model=None, tensor_list=...)``, ``load_state_dict(strict=True)``, ``eval()``.

Two things the published constructor would fetch from the network are supplied locally instead:
- ``torch.hub.load('facebookresearch/dinov2', 'dinov2_vits14')``: a local checkout of that repository
  (``dinov2_root``, loaded with ``source='local', pretrained=False``) when given, else a copy of our
  reference ViT (cleanpose_model/nn/dinov2.py, same keys and numbers) with the ``forward_features`` dict
  the published code reads; the weights come from our state dict either way. Which one ran is reported.
- its configuration: DIR/config/REAL/camera_real.yaml's ``pose_net`` section (the published test config).

The confounder queue is given as the ``tensor_list`` the published forward draws from: per category
exactly the ``select_num`` entries our deterministic mode selects, so its ``np.random.choice`` draws a
permutation of them, and the front-door attention (no positional terms over the queue) gives our
deterministic outputs; the suite reports the pose difference to ours.

On the GPU machine (PUB is any folder git ignores; nothing of it is committed):

    PUB/CleanPose/   a checkout of github.com/chrislin0621/CleanPose (904eea2), 5.9 MB
    PUB/dinov2/      a checkout of github.com/facebookresearch/dinov2 (optional), 3.3 MB
    # its PointNet++ ops exist only as a CUDA extension (model/pointnet2/setup.py: CUDAExtension, nvcc and
    # setuptools needed; the code has no torch fallback: pointnet2_utils raises ImportError without _ext).
    # build_ext --inplace writes pointnet2/_ext*.so below that folder; the published code imports it from the
    # folder itself (model/pointnet2 on sys.path), hence the copy (built on an H200 box with CUDA 13 in ~45 s)
    (cd PUB/CleanPose/model/pointnet2 && mkdir -p pointnet2 && python setup.py build_ext --inplace \
        && cp pointnet2/_ext*.so .)
    python -m benchmarks forward --device cuda --objects 1 6 16 --iterations 100 \
        --published-root PUB/CleanPose [--published-dinov2 PUB/dinov2] --out OUT

Imports only the standard library, torch, numpy and yaml (the worker's rules, benchmarks/worker.py).
"""

from __future__ import annotations

import contextlib
import copy
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

CONFIG = Path("config") / "REAL" / "camera_real.yaml"
# The subdirectories the published test.py puts on sys.path (it appends them, so nothing of ours is
# shadowed); "provider" is left out: the forward needs no data loader.
SYS_PATHS = ("", "model", "model/pointnet2", "utils")


class AttrDict(dict):
    """The attribute access the published modules use on their gorilla Config (``cfg.IAKD.kpt_num``)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def to_attr(obj):
    if isinstance(obj, dict):
        return AttrDict({k: to_attr(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [to_attr(v) for v in obj]
    return obj


def check_root(root: Path) -> Path:
    """``root`` resolved, or SystemExit naming what is missing of the expected layout."""
    root = Path(root).resolve()
    missing = [
        p
        for p in ("model/Net.py", "model/pointnet2/pointnet2_utils.py", str(CONFIG))
        if not (root / p).is_file()
    ]
    if missing:
        raise SystemExit(
            f"--published-root {root}: not a checkout of the published CleanPose code (missing {missing}); "
            "expected the repository's root, with model/pointnet2's extension built"
        )
    return root


def published_config(root: Path) -> AttrDict:
    import yaml

    with open(root / CONFIG) as f:
        return to_attr(yaml.safe_load(f)["pose_net"])


@contextlib.contextmanager
def hub_load_replaced(factory: Callable[[], torch.nn.Module]) -> Iterator[None]:
    """``torch.hub.load`` answers with ``factory()`` while the published constructor runs (it would
    download facebookresearch/dinov2 and its weights; the GPU box has no network)."""
    calls = []

    def load(repo, model, *args, **kwargs):
        calls.append((repo, model))
        if "dinov2" not in str(repo) or model != "dinov2_vits14":
            raise RuntimeError(
                f"the published code asked torch.hub for {repo}:{model}; only dinov2_vits14 is supplied"
            )
        return factory()

    saved = torch.hub.load
    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = saved
    if not calls:
        raise RuntimeError(
            "the published constructor did not call torch.hub.load for DINOv2 (another version?)"
        )


def dinov2_factory(reference_vit: torch.nn.Module, dinov2_root: Path | None) -> tuple[Callable, str]:
    """(factory, description) of the DINOv2 the published Net is given."""
    if dinov2_root is not None:
        root = Path(dinov2_root).resolve()
        if not (root / "hubconf.py").is_file():
            raise SystemExit(f"--published-dinov2 {root}: no hubconf.py (a facebookresearch/dinov2 checkout)")
        saved = torch.hub.load

        def hub():
            return saved(str(root), "dinov2_vits14", source="local", pretrained=False)

        return hub, f"facebookresearch/dinov2 at {root}"

    def ours():
        vit = copy.deepcopy(reference_vit)
        # The published code reads forward_features(x)["x_prenorm"]; our reference's forward returns
        # exactly those tokens (class token first). An instance attribute: no module, no state_dict key.
        vit.forward_features = lambda x: {"x_prenorm": vit(x)}
        return vit

    return ours, "cleanpose_model reference ViT (nn/dinov2.py)"


def _stub_tqdm() -> None:
    """utils/pytorch_utils.py imports tqdm at module level and never uses it in a forward; the GPU box may
    not have it."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        stub = types.ModuleType("tqdm")
        stub.tqdm = None
        sys.modules["tqdm"] = stub


def _name_missing_import() -> None:
    """The published model/Net.py (HEAD 904eea2) imports ``FrontDoorEncoder_mean`` from
    model/Net_modules.py, which does not define it, and never uses it: the name is given a placeholder
    that refuses to be built, so the import succeeds without touching the checkout."""
    try:
        import model.Net_modules as modules
    except ImportError:  # another layout: Net's own import names what is missing
        return
    if not hasattr(modules, "FrontDoorEncoder_mean"):

        class FrontDoorEncoder_mean:  # the published name
            def __init__(self, *args, **kwargs):
                raise RuntimeError("FrontDoorEncoder_mean is not in the published code; the harness named it")

        modules.FrontDoorEncoder_mean = FrontDoorEncoder_mean


def import_net_class(root: Path):
    for sub in SYS_PATHS:
        p = str(root / sub) if sub else str(root)
        if p not in sys.path:
            sys.path.append(p)
    _stub_tqdm()
    try:
        _name_missing_import()
        from Net import Net
    except ImportError as e:
        raise RuntimeError(
            f"importing the published Net from {root} failed ({e}); its PointNet++ extension must be built "
            "and importable as pointnet2._ext (benchmarks/published.py says how)"
        ) from e
    return Net


def tensor_list(selected: torch.Tensor) -> list[list[torch.Tensor]]:
    """``selected`` (cat_num, select_num, d) as the published ``tensor_list``: per category a list of
    (1, d) CPU tensors (the published forward moves each to the GPU on every call)."""
    return [[row[j : j + 1].detach().cpu().clone() for j in range(row.shape[0])] for row in selected]


class PublishedNet:
    """``fwd(rgb, pts, choose, category)`` -> the published eval dict, on ``device``, no autograd."""

    def __init__(
        self,
        root: Path,
        state_dict: dict[str, torch.Tensor],
        selected_queue: torch.Tensor,
        reference_vit: torch.nn.Module,
        device: torch.device,
        dinov2_root: Path | None = None,
    ) -> None:
        self.root = check_root(root)
        cfg = published_config(self.root)
        if int(cfg.select_num) != selected_queue.shape[1]:
            raise ValueError(
                f"published select_num {cfg.select_num} != {selected_queue.shape[1]} queue entries"
            )
        factory, self.dinov2 = dinov2_factory(reference_vit, dinov2_root)
        net_cls = import_net_class(self.root)
        with hub_load_replaced(factory):
            net = net_cls(cfg, ULIP_model=None, tensor_list=tensor_list(selected_queue))
        # strict=True as the published test.py's gorilla load_checkpoint: the key layouts must agree.
        net.load_state_dict(state_dict, strict=True)
        self.net = net.to(device).eval()
        self.device = device

    def __call__(self, rgb, pts, choose, category) -> dict:
        inputs = {"rgb": rgb, "pts": pts, "choose": choose, "category_label": category}
        with torch.no_grad():
            return self.net(inputs)


@contextlib.contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """None: the process's defaults (the published run: its code sets no flag); True/False: TF32 for
    matmul and cuDNN on/off, restored afterwards."""
    if enabled is None:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
