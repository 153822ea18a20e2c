"""The model API used by the ROS node, the benchmarks and training evaluation (docs/DESIGN.md, "Model API").

est = PoseEstimator.from_checkpoint("model.safetensors", device="cuda", queue_mode="deterministic")
result = est.predict(ObjectBatch(rgb=..., pts=..., choose=..., category=...))
result.rotation (B,3,3), result.translation (B,3) m, result.size (B,3) m, result.keypoints (B,K,3)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np
import torch

from cleanpose_model.io.errors import DeviceUnavailableError, QueueError
from cleanpose_model.queue import ConfounderQueue

NOCS_CATEGORIES = ["bottle", "bowl", "camera", "can", "laptop", "mug"]


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


def resolve_device(device) -> torch.device:
    """``torch.device`` for ``device``; raises ``DeviceUnavailableError`` instead of silently falling back."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {str(device)!r} requested but CUDA is not available in this process "
            "(torch.cuda.is_available() is False); use device='cpu'"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"device {str(device)!r} requested but only {torch.cuda.device_count()} "
            "CUDA device(s) are visible"
        )
    return dev


def _config_categories(cfg, cat_num: int) -> list[str]:
    cats = getattr(cfg, "categories", None) if cfg is not None else None
    if cats:
        return list(cats)
    if cat_num == len(NOCS_CATEGORIES):
        return list(NOCS_CATEGORIES)
    return [str(i) for i in range(cat_num)]


class PoseEstimator:
    """Runs a ``CleanPoseNet`` (CleanPose or AG-Pose) on batches of objects.

    ``queue_mode`` picks the confounder-queue entries for CleanPose (see ``cleanpose_model.queue``):
    ``"deterministic"`` (default: same input, same pose) or ``"random"`` (the published behaviour, drawn from
    ``np.random.RandomState(seed)``, cat_num draws per ``predict`` call).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        cfg=None,
        queue: ConfounderQueue | torch.Tensor | None = None,
        *,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        queue_mode: str = "deterministic",
        seed: int = 0,
        precision: str = "fp32",
        cuda_graphs: bool | None = None,
        compile: bool = False,
    ):
        """``precision``: ``"fp32"`` (exact: the parity path) or ``"fast"`` (CUDA only: DINOv2 in fp16
        autocast, TF32 elsewhere; see ``cleanpose_model.fast``). ``cuda_graphs`` (default: on for CUDA)
        replays the forward from CUDA graphs, one per batch-size bucket; outputs equal the eager ones.
        ``compile`` (CUDA graphs only) also runs the network through ``torch.compile`` before capture:
        ~1.5x faster again on an H200, at the price of tens of seconds of compilation per bucket."""
        if precision not in ("fp32", "fast"):
            raise ValueError(f"precision must be 'fp32' or 'fast', got {precision!r}")
        self.device = resolve_device(device)
        self.precision = precision if self.device.type == "cuda" else "fp32"
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs needs a CUDA device")
        self._graphed: dict[int, object] = {}
        self._folded = None  # the eager network with its per-point layers folded (nn/pointwise.py)
        self.compile = bool(compile)
        if self.compile and not self.cuda_graphs:
            raise ValueError("compile needs cuda_graphs (a CUDA device)")
        self.dtype = dtype
        self.cfg = cfg if cfg is not None else getattr(net, "cfg", None)
        self.net = net.to(device=self.device, dtype=dtype).eval()
        self.uses_queue = getattr(net, "FD_Encoder", None) is not None
        if isinstance(queue, torch.Tensor):
            queue = ConfounderQueue(queue, getattr(self.cfg, "select_num", 12))
        if self.uses_queue and queue is None:
            raise QueueError("this CleanPose network needs a confounder queue (tensor_list.pkl); none given")
        self.queue = queue.to(self.device, dtype) if (queue is not None and self.uses_queue) else None
        if queue_mode not in ("deterministic", "random", "all", "spread"):
            raise ValueError(f"queue_mode must be 'deterministic' or 'random', got {queue_mode!r}")
        self.queue_mode = queue_mode
        self.reseed(seed)
        cat_num = self.queue.cat_num if self.queue is not None else int(getattr(self.cfg, "cat_num", 6))
        self.categories = _config_categories(self.cfg, cat_num)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        queue_mode: str = "deterministic",
        seed: int = 0,
        *,
        config=None,
        queue_path=None,
        dinov2_path=None,
        **options,
    ) -> PoseEstimator:
        """Build from our ``.safetensors`` checkpoint, or from a published ``.pt/.pth`` when ``config`` (name
        or YAML path) and, for CleanPose, ``queue_path`` are given."""
        from cleanpose_model.io import checkpoints

        resolve_device(device)
        if str(path).endswith(".safetensors"):
            net, cfg, queue = checkpoints.load_checkpoint(path, device=device, dtype=dtype)
        else:
            net, cfg, queue = checkpoints.load_published(
                path, config=config, queue_path=queue_path, dinov2_path=dinov2_path
            )
        return cls(net, cfg, queue, device=device, dtype=dtype, queue_mode=queue_mode, seed=seed, **options)

    def reseed(self, seed: int) -> None:
        """Restart the random queue draws (``queue_mode='random'``) from ``seed``."""
        self.rng = np.random.RandomState(seed)

    def predict(self, batch: ObjectBatch) -> PoseResult:
        n = len(batch)
        if n == 0:
            return self._empty()
        b = batch.to(self.device, self.dtype)
        if int(b.category.min()) < 0 or int(b.category.max()) >= len(self.categories):
            raise ValueError(
                f"category ids must be in [0, {len(self.categories) - 1}], got {b.category.tolist()}"
            )
        with torch.inference_mode():
            queue_feats = None
            if self.queue is not None:
                queue_feats = self.queue.select(b.category, self.queue_mode, self.rng)
            out = self._forward(queue_feats)(b.rgb, b.pts, b.choose, b.category, queue_feats=queue_feats)
        return PoseResult(
            rotation=out["pred_rotation"],
            translation=out["pred_translation"],
            size=out["pred_size"],
            keypoints=out["pred_kpt_3d"],
        )

    def _forward(self, queue_feats: torch.Tensor | None):
        """The eager network, or its graphed replay for this queue width (graphs have fixed shapes)."""
        if not self.cuda_graphs or self.dtype != torch.float32:
            if self._folded is None:
                from cleanpose_model.nn.fused_attention import fuse_for_inference
                from cleanpose_model.nn.pointwise import fold_for_inference

                self._folded = fuse_for_inference(fold_for_inference(self.net.eval()))
            return self._folded
        entries = 0 if queue_feats is None else int(queue_feats.shape[1])
        if entries not in self._graphed:
            from cleanpose_model.fast import GraphedForward

            self._graphed[entries] = GraphedForward(
                self.net, precision=self.precision, queue_entries=entries or None, compile=self.compile
            )
        return self._graphed[entries]

    def warmup(self, n_objects: int = 1, n_points: int = 1024) -> None:
        """Forwards on synthetic inputs (allocator, kernel selection and, with CUDA graphs, the capture of
        every batch bucket up to ``n_objects``, so no frame pays for a capture); the random-mode RNG state
        is restored afterwards."""
        from cleanpose_model.fast import DEFAULT_BUCKETS

        sizes = [n_objects]
        if self.cuda_graphs:
            sizes = [b for b in DEFAULT_BUCKETS if b < n_objects] + [n_objects]
        state = self.rng.get_state()
        try:
            for n in sizes:
                g = torch.Generator().manual_seed(n)
                pts = torch.rand(n, n_points, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])
                self.predict(
                    ObjectBatch(
                        rgb=torch.randn(n, 3, self.image_size, self.image_size, generator=g),
                        pts=pts,
                        choose=torch.randint(0, self.image_size**2, (n, n_points), generator=g),
                        category=torch.arange(n) % len(self.categories),
                    )
                )
        finally:
            self.rng.set_state(state)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def image_size(self) -> int:
        return int(getattr(self.cfg, "image_size", 224) or 224)

    def _empty(self) -> PoseResult:
        kpt = int(getattr(self.cfg, "kpt_num", 96) or 96)
        z = {"device": self.device, "dtype": self.dtype}
        return PoseResult(
            rotation=torch.zeros(0, 3, 3, **z),
            translation=torch.zeros(0, 3, **z),
            size=torch.zeros(0, 3, **z),
            keypoints=torch.zeros(0, kpt, 3, **z),
        )
