"""The self-supervised family (issue 16): ``SelfSupNet`` (part-level shape memory + coarse-to-fine
correspondences, ``cleanpose_model.selfsup``) behind the ``Estimator`` interface, and its registry entry
``SELFSUP``. Checkpoints are our safetensors format with ``family: selfsup``, so ``load_estimator`` and the
ROS node serve them unchanged."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from cleanpose_model.categories import NOCS
from cleanpose_model.device import resolve_device
from cleanpose_model.errors import StateDictMismatch
from cleanpose_model.families.base import Estimator, FamilyInfo, check_mode
from cleanpose_model.io import checkpoints
from cleanpose_model.selfsup import SelfSupConfig, SelfSupNet, load_selfsup_config
from cleanpose_model.types import InputSpec, ObjectBatch, PoseResult

FAMILY_NAME = "selfsup"


def save_selfsup_checkpoint(path, net: SelfSupNet, metadata: dict | None = None) -> dict:
    """Write ``net`` as our checkpoint format (header ``family: selfsup``); returns the header written."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}
    header = {"family": FAMILY_NAME, "variant": FAMILY_NAME, "categories": list(net.cfg.categories)}
    return checkpoints.write_checkpoint(path, tensors, net.cfg.to_dict(), {**(metadata or {}), **header})


def load_selfsup_net(path) -> SelfSupNet:
    """The network of a ``selfsup`` checkpoint, strictly loaded (every key, every shape)."""
    header, tensors = checkpoints.read_checkpoint(path)
    family = checkpoints.header_family(header)
    if family != FAMILY_NAME:
        raise ValueError(f"{path} holds a {family!r} model, not {FAMILY_NAME!r}: use load_estimator")
    net = SelfSupNet(SelfSupConfig.from_dict(header["config"]))
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise StateDictMismatch(
            f"{path}: missing keys {missing}, unexpected keys {unexpected}", missing, unexpected
        )
    return net


def resize_batch(batch: ObjectBatch, image_size: int) -> ObjectBatch:
    """``batch`` with its crops resized to ``image_size`` and its ``choose`` pixel indices mapped onto the
    new crop: the node builds its inputs at the preprocessing protocol's crop size, which need not be this
    network's."""
    side = batch.rgb.shape[-1]
    if side == image_size:
        return batch
    rgb = F.interpolate(batch.rgb, size=(image_size, image_size), mode="bilinear", align_corners=False)
    row, col = batch.choose // side, batch.choose % side
    choose = (row * image_size // side) * image_size + col * image_size // side
    return ObjectBatch(rgb=rgb, pts=batch.pts, choose=choose, category=batch.category)


class SelfSupEstimator(Estimator):
    """Runs a ``SelfSupNet``: reconstruct the object, match its pixels to the reconstruction, keep the
    cycle-consistent pairs and fit (scale, R, t) by Umeyama; size = the reconstruction's extents x scale,
    keypoints = ``n_keypoints`` reconstructed points in the camera frame.

    ``mode``: "fast" is recorded on CUDA but has no separate path yet (both run fp32); a CPU estimator runs
    exact. Options the CleanPose estimator
    takes and this family has no use for (``queue_mode``, ``seed``, ``cuda_graphs``, ``compile``) are
    accepted and ignored, so callers such as the ROS node pass one set of options to any family."""

    _IGNORED = frozenset({"queue_mode", "seed", "cuda_graphs", "compile", "config", "queue_path"})

    def __init__(self, net: SelfSupNet, *, device="cpu", mode: str = "exact", dtype=torch.float32, **options):
        unknown = sorted(set(options) - self._IGNORED)
        if unknown:
            raise TypeError(f"SelfSupEstimator got unknown options {unknown}")
        mode = check_mode(mode)
        self.device = resolve_device(device).device
        self.mode = mode if self.device.type == "cuda" else "exact"  # as every family: CPU runs exact
        self.dtype = dtype
        self.cfg = net.cfg
        self.net = net.to(self.device, dtype).eval()
        self._inputs = InputSpec(image_size=self.cfg.image_size, n_points=self.cfg.n_points)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, device="cpu", mode: str = "exact", **options
    ) -> SelfSupEstimator:
        return cls(load_selfsup_net(path), device=device, mode=mode, **options)

    @classmethod
    def from_config(cls, cfg, *, device="cpu", mode: str = "exact", seed: int = 0, **options):
        """Fresh weights drawn from ``seed`` (the global torch RNG is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = SelfSupNet(load_selfsup_config(cfg))
        return cls(net, device=device, mode=mode, **options)

    def save(self, path, metadata: dict | None = None) -> dict:
        return save_selfsup_checkpoint(path, self.net, metadata)

    @property
    def family(self) -> FamilyInfo:
        return SELFSUP

    @property
    def categories(self) -> list[str]:
        return list(self.cfg.categories)

    @property
    def inputs(self) -> InputSpec:
        return self._inputs

    def predict(self, batch: ObjectBatch) -> PoseResult:
        n = len(batch)
        if n == 0:
            z = {"device": self.device, "dtype": self.dtype}
            return PoseResult(
                rotation=torch.zeros(0, 3, 3, **z),
                translation=torch.zeros(0, 3, **z),
                size=torch.zeros(0, 3, **z),
                keypoints=torch.zeros(0, self.cfg.n_keypoints, 3, **z),
            )
        b = resize_batch(batch.to(self.device, self.dtype), self.cfg.image_size)
        if int(b.category.min()) < 0 or int(b.category.max()) >= len(self.categories):
            raise ValueError(
                f"category ids must be in [0, {len(self.categories) - 1}], got {b.category.tolist()}"
            )
        with torch.inference_mode():
            out = self.net.estimate(b.rgb, b.pts, b.choose, b.category)
        return PoseResult(
            rotation=out["rotation"],
            translation=out["translation"],
            size=out["size"],
            keypoints=out["keypoints"],
        )

    def warmup(self, n_objects: int = 1) -> None:
        g = torch.Generator().manual_seed(n_objects)
        side, n = self.cfg.image_size, self.cfg.n_points
        self.predict(
            ObjectBatch(
                rgb=torch.randn(n_objects, 3, side, side, generator=g),
                pts=torch.rand(n_objects, n, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7]),
                choose=torch.randint(0, side * side, (n_objects, n), generator=g),
                category=torch.arange(n_objects) % len(self.categories),
            )
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


SELFSUP = FamilyInfo(
    name=FAMILY_NAME,
    title="Self-supervised: part-level shape memory + coarse-to-fine correspondences (no pose labels)",
    datasets=(NOCS,),
    configs=("selfsup", "selfsup_tiny"),
    # The published configuration's inputs (configs/selfsup.yaml): 256x256 crops (the paper), 1024 depth
    # points; predict() also takes batches built at another crop size (resize_batch).
    inputs=InputSpec(image_size=256, n_points=1024),
    build_net=lambda cfg: SelfSupNet(load_selfsup_config(cfg)),
    estimator=SelfSupEstimator,
)
