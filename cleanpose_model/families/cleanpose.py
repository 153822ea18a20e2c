"""The CleanPose family and its AG-Pose sibling: one network class (``CleanPoseNet``; AG-Pose is the network
without the front-door encoder and its confounder queue), one estimator (``PoseEstimator``), two registry
entries (``CLEANPOSE``, ``AGPOSE``)."""

from __future__ import annotations

import os

import numpy as np
import torch

from cleanpose_model.categories import HOUSECAT6D, NOCS
from cleanpose_model.config import config_categories
from cleanpose_model.device import resolve_device
from cleanpose_model.errors import QueueError
from cleanpose_model.families.base import Estimator, FamilyInfo, check_mode
from cleanpose_model.io import checkpoints
from cleanpose_model.net import CleanPoseNet
from cleanpose_model.queue import ConfounderQueue
from cleanpose_model.types import InputSpec, ObjectBatch, PoseResult


class PoseEstimator(Estimator):
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
        mode: str = "exact",
        cuda_graphs: bool | None = None,
        compile: bool = False,
    ):
        """``mode``: ``"exact"`` (fp32: the parity path) or ``"fast"`` (CUDA only: DINOv2 in fp16 autocast,
        TF32 elsewhere; a CPU estimator always runs exact). ``cuda_graphs`` (default: on for CUDA) replays
        the forward from CUDA graphs, one per batch-size bucket; outputs equal the eager ones. ``compile``
        (CUDA graphs only) also runs the network through ``torch.compile`` before capture: ~1.5x faster
        again on an H200, at the price of tens of seconds of compilation per bucket."""
        mode = check_mode(mode)
        self.device = resolve_device(device).device
        self.mode = mode if self.device.type == "cuda" else "exact"
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs needs a CUDA device")
        self._graphed: dict[int, object] = {}  # queue width -> the bound inference network
        self.compile = bool(compile)
        if self.compile and not self.cuda_graphs:
            raise ValueError("compile needs cuda_graphs (a CUDA device)")
        self.dtype = dtype
        self.cfg = cfg if cfg is not None else getattr(net, "cfg", None)
        self.net = net.to(device=self.device, dtype=dtype).eval()
        self.uses_queue = checkpoints.uses_queue(net)
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
        self._categories = config_categories(self.cfg, cat_num)
        self._family = CLEANPOSE if self.uses_queue else AGPOSE
        self._inputs = InputSpec(
            image_size=int(getattr(self.cfg, "image_size", 224) or 224),
            n_points=int(getattr(self.cfg, "n_points", 1024) or 1024),
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        queue_mode: str = "deterministic",
        seed: int = 0,
        *,
        mode: str = "exact",
        config=None,
        queue_path=None,
        dinov2_path=None,
        **options,
    ) -> PoseEstimator:
        """Build from our ``.safetensors`` checkpoint, or from a published ``.pt/.pth`` when ``config`` (name,
        YAML path or ``ModelConfig``) and, for CleanPose, ``queue_path`` are given."""
        resolve_device(device)
        if str(path).endswith(".safetensors"):
            net, cfg, queue = checkpoints.load_checkpoint(path, device=device, dtype=dtype)
        else:
            net, cfg, queue = checkpoints.load_published(
                path, config=config, queue_path=queue_path, dinov2_path=dinov2_path
            )
        return cls(
            net,
            cfg,
            queue,
            device=device,
            dtype=dtype,
            queue_mode=queue_mode,
            seed=seed,
            mode=mode,
            **options,
        )

    @classmethod
    def from_config(
        cls, cfg, *, device="cpu", mode: str = "exact", seed: int = 0, queue=None, **options
    ) -> PoseEstimator:
        """A network with fresh weights (initialised from ``seed``; the global torch RNG is left as it was)
        and, for CleanPose without a given ``queue``, a unit-normal confounder queue, as training starts."""
        cfg = checkpoints.load_config(cfg) if isinstance(cfg, (str, os.PathLike)) else cfg
        family = CLEANPOSE if cfg.use_front_door else AGPOSE
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = family.build_net(cfg)
        if queue is None and cfg.use_front_door:
            queue = ConfounderQueue.random(
                cfg.cat_num, cfg.front_door.queue_length, cfg.d_model, seed, cfg.select_num
            )
        return cls(net, cfg, queue, device=device, mode=mode, seed=seed, **options)

    @property
    def family(self) -> FamilyInfo:
        return self._family

    @property
    def categories(self) -> list[str]:
        return self._categories

    @property
    def inputs(self) -> InputSpec:
        return self._inputs

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
        """The network bound to this estimator's mode (cleanpose_model.inference.build_inference); with CUDA
        graphs one per queue width (graphs have fixed shapes)."""
        from cleanpose_model.inference import InferenceMode, build_inference

        graphs = self.cuda_graphs and self.dtype == torch.float32
        entries = 0 if queue_feats is None or not graphs else int(queue_feats.shape[1])
        if entries not in self._graphed:
            mode = InferenceMode(self.mode, cuda_graphs=graphs, compile=self.compile and graphs)
            self._graphed[entries] = build_inference(self.net, mode, queue_entries=entries or None)
        return self._graphed[entries]

    def warmup(self, n_objects: int = 1, n_points: int = 1024) -> None:
        """Forwards on synthetic inputs (allocator, kernel selection and, with CUDA graphs, the capture of
        every batch bucket up to ``n_objects``, so no frame pays for a capture); the random-mode RNG state
        is restored afterwards."""
        from cleanpose_model.inference import DEFAULT_BUCKETS

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
        return self.inputs.image_size

    def _empty(self) -> PoseResult:
        kpt = int(getattr(self.cfg, "kpt_num", 96) or 96)
        z = {"device": self.device, "dtype": self.dtype}
        return PoseResult(
            rotation=torch.zeros(0, 3, 3, **z),
            translation=torch.zeros(0, 3, **z),
            size=torch.zeros(0, 3, **z),
            keypoints=torch.zeros(0, kpt, 3, **z),
        )


# Published inputs of both families (model.md): a 224x224 crop for DINOv2, 1024 depth points with their crop
# pixel indices, and the category id (category-specific heads and queue rows).
_PUBLISHED_INPUTS = InputSpec(image_size=224, n_points=1024)

CLEANPOSE = FamilyInfo(
    name="cleanpose",
    title="CleanPose (front-door causal adjustment over AG-Pose)",
    datasets=(NOCS, HOUSECAT6D),
    configs=("cleanpose_nocs", "cleanpose_housecat6d", "demo"),
    inputs=_PUBLISHED_INPUTS,
    build_net=CleanPoseNet,
    estimator=PoseEstimator,
)
AGPOSE = FamilyInfo(
    name="agpose",
    title="AG-Pose (instance-adaptive keypoints, geometry-aware features)",
    datasets=(NOCS,),
    configs=("agpose_nocs",),
    inputs=_PUBLISHED_INPUTS,
    build_net=CleanPoseNet,
    estimator=PoseEstimator,
)
