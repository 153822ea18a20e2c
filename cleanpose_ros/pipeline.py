"""The frame path as one straight line, with no ROS types inside so it can be tested and reused in-process
(benchmarks): detections -> class map / score / count filters -> per-object inputs (published protocol)
-> one batched forward over all objects of all classes -> poses in the camera optical frame.

    pipe = FramePipeline(load_estimator(...), PipelineConfig())
    result = pipe.process(rgb_uint8, depth_m, K, detections)
    # detections: cleanpose_ros.detections.Detections, or a raw cleanpose_msgs/InstanceSegmentation
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, fields

import numpy as np

from cleanpose_model.preprocess import GraphedInputBuilder, build_object_inputs_np
from cleanpose_ros.class_map import ClassMap
from cleanpose_ros.params import NodeParams

# Defaults of the PipelineConfig fields that are node parameters: the node's own (their meaning is described
# there).
_NODE = NodeParams()


@dataclass
class PipelineConfig:
    score_threshold: float = _NODE.score_threshold
    max_objects: int = _NODE.max_objects
    min_points: int = _NODE.min_points
    n_points: int = 1024
    min_depth: float = _NODE.min_depth  # m; depth outside [min_depth, max_depth] is invalid (0 = no bound)
    max_depth: float = _NODE.max_depth
    class_map: list[str] = field(default_factory=lambda: list(_NODE.class_map))
    # Base of every object's own sampling seed (with its window, valid-pixel count and category: see
    # cleanpose_model.preprocess.reference.object_rng): the same object gives the same pose whatever the
    # other detections of the frame are and wherever it stands in the message.
    seed: int = _NODE.seed
    box_source: str = _NODE.box_source  # used when process() is given a raw InstanceSegmentation message
    # "auto": on a CUDA estimator the fixed-shape torch form replayed from CUDA graphs (GraphedInputBuilder,
    # same pixels), else the numpy path; "numpy" / "torch" force one ("torch" on the CPU: that form, eager).
    preprocess: str = "auto"

    @classmethod
    def from_params(cls, p: NodeParams) -> PipelineConfig:
        """The node's values of the fields that are node parameters (copies: the node edits its own); the
        others keep their defaults."""
        node = set(p.names())
        return cls(**{f.name: copy.copy(getattr(p, f.name)) for f in fields(cls) if f.name in node})


@dataclass
class ObjectResult:
    class_name: str
    class_id: int
    score: float
    instance_id: str
    detection_index: int  # index in the Detections given to process()
    rotation: np.ndarray  # (3, 3) columns = object x, y, z axes in the camera frame
    translation: np.ndarray  # (3,) m
    size: np.ndarray  # (3,) m full extents
    num_points: int
    # (6, 6) over (x, y, z, rotation about x, y, z) when the temporal filter gives one (filtering.PoseStream)
    covariance: np.ndarray | None = None


@dataclass
class FrameResult:
    objects: list[ObjectResult]
    n_detections: int = 0
    skipped_unknown_class: list[str] = field(default_factory=list)
    skipped_low_score: int = 0
    skipped_max_objects: int = 0
    skipped_few_points: int = 0
    few_points: list[int] = field(default_factory=list)  # indices (in the Detections) of those objects
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class PreparedFrame:
    """One frame's selection and per-object inputs (FramePipeline.prepare), waiting for the forward."""

    det: object  # detections.Detections
    idx: list  # detection index of each selected object
    res: FrameResult  # filled by forward()
    batch: object  # ObjectBatch on the estimator's device
    kept: np.ndarray  # indices into idx of the objects with enough points (the batch's rows)
    category: np.ndarray
    num_points: np.ndarray
    # the batch is the CUDA input builder's static buffers (the next prepare overwrites them): `own` copies
    shared: bool = False


class FrameUploader:
    """Host frame (depth, rgb, masks) -> device tensors in ONE copy, through a pinned staging buffer kept
    across frames (grown when a frame needs more).

    Three pageable `.to(cuda)` copies each wait for the stream to drain and then block the thread for their
    own staging through the driver's bounce buffer; here the thread only fills pinned memory (one memcpy per
    array) and queues one asynchronous copy. The buffer is reused by the next frame after that frame waits
    for the previous copy's event (long done by then: the pipeline synchronises every frame).

    Layout in bytes: depth float32 | rgb uint8 | masks (bool/uint8), each start aligned to 16.

    FramePipeline's CUDA path now stages the frame in GraphedInputBuilder's own pinned buffer (same idea,
    plus the window table); this stays for callers that want the frame as device tensors."""

    def __init__(self, device):
        import torch

        self.device = torch.device(device)
        self._host = None  # pinned uint8 tensor
        self._event = None

    @staticmethod
    def _layout(arrays) -> tuple[list[int], int]:
        offs, n = [], 0
        for a in arrays:
            offs.append(n)
            n += (a.nbytes + 15) // 16 * 16
        return offs, n

    def upload(self, depth: np.ndarray, rgb: np.ndarray, masks: np.ndarray):
        import torch

        depth = np.asarray(depth)
        masks = masks if masks.dtype in (np.bool_, np.uint8) else (masks != 0)
        arrays = (depth, rgb, masks)
        offs, total = self._layout(arrays)
        if self._event is not None:
            self._event.synchronize()  # the previous frame's copy left the buffer
        if self._host is None or self._host.numel() < total:
            self._host = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=True)
        host = self._host.numpy()
        for a, o in zip(arrays, offs):
            # np.copyto through a byte view: also makes non-contiguous inputs contiguous
            np.copyto(host[o : o + a.nbytes].view(a.dtype).reshape(a.shape), a)
        with torch.cuda.device(self.device):
            dev = self._host[:total].to(self.device, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        return tuple(
            dev[o : o + a.nbytes].view(torch.from_numpy(np.empty(0, a.dtype)).dtype).view(a.shape)
            for a, o in zip(arrays, offs)
        )


class FramePipeline:
    def __init__(self, estimator, cfg: PipelineConfig | None = None):
        self.estimator = estimator
        self.cfg = cfg or PipelineConfig()
        self.class_map = ClassMap(estimator.categories, self.cfg.class_map)
        self._builder = None  # GraphedInputBuilder, made on the first CUDA frame
        self._builder_device = None
        self._builder_sizes: set = set()  # (depth shape, dtype) whose input graphs are captured

    @classmethod
    def from_checkpoint(
        cls, path, device="cpu", dtype=None, queue_mode="deterministic", cfg: PipelineConfig | None = None
    ) -> FramePipeline:
        import torch

        from cleanpose_model.estimator import load_estimator

        est = load_estimator(path, device=device, dtype=dtype or torch.float32, queue_mode=queue_mode)
        return cls(est, cfg)

    def update_config(self, cfg: PipelineConfig) -> None:
        """Swap in a new config (validated first: a bad class map raises and leaves the old one)."""
        cmap = ClassMap(self.estimator.categories, cfg.class_map)
        self.cfg, self.class_map = cfg, cmap

    def select(self, det) -> tuple[list[int], list[int], FrameResult]:
        """Indices of the detections to estimate and their model categories (score, class, count filters)."""
        cfg = self.cfg
        res = FrameResult(objects=[], n_detections=len(det))
        cand = []
        for j in range(len(det)):
            cat = self.class_map.lookup(det.class_ids[j])
            if cat is None:
                res.skipped_unknown_class.append(det.class_ids[j])
                continue
            if det.scores[j] < cfg.score_threshold:
                res.skipped_low_score += 1
                continue
            cand.append((j, cat))
        if len(cand) > cfg.max_objects:
            # keep the most confident; stable so equal scores keep message order
            order = sorted(range(len(cand)), key=lambda i: -float(det.scores[cand[i][0]]))
            keep = sorted(order[: cfg.max_objects])
            res.skipped_max_objects = len(cand) - len(keep)
            cand = [cand[i] for i in keep]
        return [j for j, _ in cand], [c for _, c in cand], res

    def prepare_depth(self, depth_m: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        d = depth_m
        if cfg.min_depth > 0 or cfg.max_depth > 0:
            d = d.copy()
            if cfg.min_depth > 0:
                d[d < cfg.min_depth] = 0.0
            if cfg.max_depth > 0:
                d[d > cfg.max_depth] = 0.0
        return d

    def build_inputs(self, rgb, depth, K, masks, boxes, cats):
        """Per-object inputs on the estimator's device -> (ObjectBatch, kept, category, num_points), the last
        three host arrays. Both paths draw the same samples from the same per-object seeds (same poses)."""
        dev = self.estimator.device
        kw = dict(object_seed=self.cfg.seed, n_points=self.cfg.n_points, min_points=self.cfg.min_points)
        mode = self.cfg.preprocess
        if mode not in ("auto", "numpy", "torch"):
            raise ValueError(f"preprocess must be 'auto', 'numpy' or 'torch', got {mode!r}")
        if mode == "torch" or (mode == "auto" and dev.type == "cuda"):
            if dev.type == "cuda":
                # The fixed-shape version of the batched path: the host arrays are staged with the window
                # table in one pinned buffer and go up while it fills; each device phase is one graph replay.
                if self._builder is None or self._builder_device != dev:
                    self._builder, self._builder_device = GraphedInputBuilder(dev), dev
                    self._builder_sizes = set()
                frame_key = (depth.shape, depth.dtype)
                if frame_key not in self._builder_sizes:
                    # Capture every bucket the forward warm-up covers now, on the first frame of this size, so
                    # a later frame with a new object count does not stall for a capture.
                    self._builder_sizes.add(frame_key)
                    self._builder.capture(
                        range(1, min(self.cfg.max_objects, 8) + 1),
                        *depth.shape[:2],
                        depth_dtype=depth.dtype,
                        n_points=self.cfg.n_points,
                    )
                batch, kept, num_points, _ = self._builder(rgb, depth, K, masks, boxes, cats, **kw)
                return batch, kept, np.asarray(cats, np.int64).reshape(-1)[kept], num_points

            batch, kept, num_points, _ = GraphedInputBuilder(dev)(rgb, depth, K, masks, boxes, cats, **kw)
            return batch, kept, np.asarray(cats, np.int64).reshape(-1)[kept], num_points
        objs = build_object_inputs_np(rgb, depth, K, masks, boxes, cats, **kw)
        return objs.to_batch(dev, self.estimator.dtype), objs.kept, objs.category, objs.num_points

    def process(self, rgb: np.ndarray, depth_m: np.ndarray, K: np.ndarray, det) -> FrameResult:
        """`timings_ms`: "select" (parse when given a message, filters, depth bounds), "build_inputs",
        "forward" (model + host copy), "results"; "preprocess" = select + build_inputs, "inference" =
        forward."""
        return self.forward([self.prepare(rgb, depth_m, K, det)])[0]

    def prepare(self, rgb: np.ndarray, depth_m: np.ndarray, K: np.ndarray, det, own_copy: bool = False):
        """One frame up to its per-object inputs (PreparedFrame). `own_copy`: the inputs must outlive the next
        frame's prepare (several frames in one forward): the CUDA builder's outputs are its static buffers,
        which the next frame overwrites, so they are copied (now, or later by `own` when known only then)."""
        t0 = time.perf_counter()
        if hasattr(det, "format") and hasattr(det, "detections"):  # a raw cleanpose_msgs/InstanceSegmentation
            from cleanpose_ros.detections import parse_instance_segmentation

            det = parse_instance_segmentation(det, rgb.shape[0], rgb.shape[1], self.cfg.box_source)
        idx, cats, res = self.select(det)
        depth = self.prepare_depth(depth_m)
        ts = time.perf_counter()
        if idx == list(range(len(det))):  # every detection: no (n, H, W) mask copy
            masks, boxes = det.masks, det.boxes
        else:
            masks, boxes = det.masks[idx], det.boxes[idx]
        batch, kept, category, num_points = self.build_inputs(rgb, depth, K, masks, boxes, cats)
        shared = bool(len(kept)) and self._builder is not None
        if own_copy and shared:
            batch, shared = _clone_batch(batch), False
        res.skipped_few_points = len(idx) - len(kept)
        if res.skipped_few_points:
            kept_set = {int(k) for k in kept}
            res.few_points = [j for i, j in enumerate(idx) if i not in kept_set]
        t1 = time.perf_counter()
        tm = res.timings_ms
        tm["select"] = (ts - t0) * 1e3
        tm["build_inputs"] = (t1 - ts) * 1e3
        tm["preprocess"] = (t1 - t0) * 1e3
        return PreparedFrame(det, idx, res, batch, kept, category, num_points, shared)

    @staticmethod
    def own(prepared: PreparedFrame) -> None:
        """Make `prepared`'s inputs its own before another frame is prepared (prepare's own_copy, after the
        fact: a cycle learns only then that a second camera's set joins the forward)."""
        if prepared.shared:
            prepared.batch, prepared.shared = _clone_batch(prepared.batch), False

    def forward(self, frames: list[PreparedFrame]) -> list[FrameResult]:
        """The objects of every prepared frame in ONE batched forward (estimator.predict called once, or not
        at all when no frame has an object), split back into one FrameResult per frame. Each frame's
        "forward" time is the shared forward's; "forward_frames" says how many frames shared it."""
        live = [f for f in frames if len(f.kept)]
        for f in frames:
            if not len(f.kept):
                f.res.timings_ms.update(forward=0.0, inference=0.0, results=0.0)
        if not live:
            return [f.res for f in frames]
        t1 = time.perf_counter()
        if len(live) == 1:
            batch = live[0].batch
        else:
            import torch

            b0 = live[0].batch
            batch = type(b0)(
                **{
                    fl.name: torch.cat(
                        [
                            getattr(f.batch, fl.name).reshape((-1, *getattr(f.batch, fl.name).shape[1:]))
                            for f in live
                        ]
                    )
                    for fl in fields(b0)
                }
            )
        out = self.estimator.predict(batch).as_numpy()
        t2 = time.perf_counter()
        start = 0
        for f in live:
            res, det, tm = f.res, f.det, f.res.timings_ms
            tm["forward"] = tm["inference"] = (t2 - t1) * 1e3
            tm["forward_frames"] = float(len(live))
            t3 = time.perf_counter()
            for i, k in enumerate(f.kept):
                j = f.idx[int(k)]
                cat = int(f.category[i])
                r = start + i
                res.objects.append(
                    ObjectResult(
                        class_name=self.class_map.name(cat),
                        class_id=cat,
                        score=float(det.scores[j]),
                        instance_id=det.instance_ids[j],
                        detection_index=j,
                        rotation=out["rotation"][r].astype(np.float64),
                        translation=out["translation"][r].astype(np.float64),
                        size=out["size"][r].astype(np.float64),
                        num_points=int(f.num_points[i]),
                    )
                )
            start += len(f.kept)
            tm["results"] = (time.perf_counter() - t3) * 1e3
        return [f.res for f in frames]


def _clone_batch(batch):
    return type(batch)(**{f.name: getattr(batch, f.name).clone() for f in fields(batch)})
