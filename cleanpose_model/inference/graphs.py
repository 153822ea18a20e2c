"""Launch-free inference on CUDA: a bound inference network's forward captured in CUDA graphs.

At robot batch sizes (1-30 objects) the forward is bound by kernel-launch latency and Python,
not by arithmetic (the published forward barely changes from 1 to 16 objects). Capturing the
whole forward once per batch-size bucket and replaying it removes both. Batches are padded
up to the next bucket by repeating the last object; padded rows are computed and dropped,
and since every object is processed independently they cannot change the real rows.

The two backbones are independent: PointNet++ (a chain of small, latency-bound kernels: FPS,
ball query, three-NN, narrow MLPs) runs on side streams while DINOv2 (throughput-bound) runs
on the main one; all branches are captured into the same graph, which replays them
concurrently. Inside PointNet++ the furthest-point-sampling chain (each level samples the
previous level's centres, ~960 dependent argmax steps) runs on its own stream, and each level's
ball query and feature MLPs start as soon as that level's centres exist, so only the FPS chain
plus the last level's work stays on the critical path. The rest of the network starts when
both backbones are done.

The inference builder (build.py) decides the mode and hands this runner the bound network
(forms/net.py), whether float32 products may use TF32 (`tf32_products`, the fast mode) and
whether to ``torch.compile`` the backbone and the head before capture.
"""

from __future__ import annotations

import bisect
from contextlib import contextmanager

import torch

from cleanpose_model.inference.forms.net import InferenceNet
from cleanpose_model.net import centre_points

# Padding wastes the difference: 6 objects in an 8-object graph cost ~1 ms more in the fp32 mode on an H100
# (DINOv2 alone 3.5 ms at 8), so the buckets are ~1.5x apart rather than 2x. Each bucket is one more
# capture at warm-up (and one more compilation with torch.compile); all share one memory pool.
DEFAULT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)

# The global switches cuBLAS and cuDNN read when a float32 product is launched (a CUDA graph keeps the
# kernels chosen at capture).
_TF32_SWITCHES = (torch.backends.cuda.matmul, torch.backends.cudnn)


def _set_tf32(values) -> None:
    for switch, value in zip(_TF32_SWITCHES, values, strict=True):
        switch.allow_tf32 = value


@contextmanager
def tf32_products(enabled: bool):
    """float32 products in TF32 (the fast mode) or in full fp32 (exact) while a bound network runs or is
    captured; the caller's settings are restored afterwards. The one place the inference modes set torch's
    global precision switches."""
    old = [switch.allow_tf32 for switch in _TF32_SWITCHES]
    _set_tf32([enabled] * len(old))
    try:
        yield
    finally:
        _set_tf32(old)


class GraphedForward:
    """Replays a bound inference network's forward (``model``, on a CUDA device) from CUDA graphs, one per
    batch-size bucket. Built by `build_inference`, which decides ``tf32`` and ``compile``.

    Graphs are captured lazily on first use of a bucket (or eagerly with ``capture(sizes)``); they share one
    memory pool. Queue features, when the network uses them, are inputs of the graph with a fixed number of
    entries (``queue_entries``).
    """

    def __init__(
        self,
        model: InferenceNet,
        *,
        tf32: bool,
        compile: bool = False,
        queue_entries: int | None = None,
        buckets=DEFAULT_BUCKETS,
        n_points: int = 1024,
    ) -> None:
        dev = next(model.parameters()).device
        if dev.type != "cuda":
            raise ValueError("GraphedForward needs the network on a CUDA device")
        self.model = model
        self.net = model.net
        self.device = dev
        self.tf32 = tf32
        self.buckets = tuple(sorted(buckets))
        self.n_points = n_points
        cfg = model.cfg
        self.image_size = cfg.image_size
        self.uses_queue = cfg.use_front_door
        self.queue_entries = queue_entries
        self.d_model = cfg.d_model
        rgb_fn, head_fn = self.net.rgb_extractor, model.head
        if compile:
            # torch.compile fuses the many small elementwise kernels that remain after graph capture.
            # PointNet++ is left eager: its pieces are spread over streams (see _points).
            rgb_fn, head_fn = (torch.compile(f, dynamic=False) for f in (rgb_fn, head_fn))
        self._rgb_fn, self._head_fn = rgb_fn, head_fn
        self._side = torch.cuda.Stream(dev)
        self._fps_stream = torch.cuda.Stream(dev)
        self._pool = None
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict, dict]] = {}

    # ------------------------------------------------------------------ capture
    def _static_inputs(self, bsz: int) -> dict[str, torch.Tensor]:
        s, n, dev = self.image_size, self.n_points, self.device
        g = torch.Generator(device="cpu").manual_seed(0)
        pts = torch.rand(bsz, n, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7])
        inputs = {
            "rgb": torch.randn(bsz, 3, s, s, generator=g).to(dev),
            "pts": pts.to(dev),
            "choose": torch.randint(0, s * s, (bsz, n), generator=g).to(dev),
            "category": torch.zeros(bsz, dtype=torch.long, device=dev),
        }
        if self.uses_queue:
            if self.queue_entries is None:
                raise ValueError("queue_entries must be given for a network with a front-door encoder")
            inputs["queue_feats"] = torch.randn(bsz, self.queue_entries, self.d_model, generator=g).to(dev)
        return inputs

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        main = torch.cuda.current_stream(self.device)
        pts = inputs["pts"]
        with tf32_products(self.tf32):
            pts_local = self._points(pts, main)
            tokens = self._rgb_fn(inputs["rgb"])
            main.wait_stream(self._side)
            self._hand_over(pts_local, main)
            out = self._head_fn(
                pts, inputs["choose"], inputs["category"], inputs.get("queue_feats"), tokens, pts_local
            )
        return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}

    @staticmethod
    def _hand_over(t: torch.Tensor, stream: torch.cuda.Stream) -> None:
        # A tensor allocated on one stream and read on another: keep the allocator from reusing its
        # block before that stream is done (inside a capture the graph's private pool does this).
        if not torch.cuda.is_current_stream_capturing():
            t.record_stream(stream)

    def _points(self, pts: torch.Tensor, main: torch.cuda.Stream) -> torch.Tensor:
        """PointNet++ features of the centred cloud, computed on two side streams (see module doc);
        the result lives on ``self._side``. Same operations as ``PointNet2MSG.forward``."""
        pn = self.net.pts_extractor
        fps_s, side = self._fps_stream, self._side
        fps_s.wait_stream(main)
        side.wait_stream(main)
        with torch.cuda.stream(fps_s):
            l_xyz = [centre_points(pts)[0]]
            ready = []
            for sa in pn.SA_modules:
                l_xyz.append(sa.centres(l_xyz[-1]))
                ev = torch.cuda.Event()
                ev.record(fps_s)
                ready.append(ev)
            interp = [m.interpolation(l_xyz[i], l_xyz[i + 1]) for i, m in enumerate(pn.FP_modules)]
        for t in l_xyz + [x for pair in interp for x in pair]:
            self._hand_over(t, side)
        with torch.cuda.stream(side):
            l_feat: list[torch.Tensor | None] = [None]
            for lvl, sa in enumerate(pn.SA_modules):
                side.wait_event(ready[lvl])
                groups = sa.neighbours(l_xyz[lvl], l_xyz[lvl + 1])
                l_feat.append(sa.aggregate(l_xyz[lvl], l_xyz[lvl + 1], groups, l_feat[-1]))
            side.wait_stream(fps_s)
            for i in range(len(pn.FP_modules) - 1, -1, -1):
                l_feat[i] = pn.FP_modules[i](l_xyz[i], l_xyz[i + 1], l_feat[i], l_feat[i + 1], interp[i])
        return l_feat[0]

    def capture(self, sizes=None) -> None:
        for b in sizes or self.buckets:
            self._graph_for(self._bucket(b))

    def _graph_for(self, bucket: int):
        if bucket in self._graphs:
            return self._graphs[bucket]
        inputs = self._static_inputs(bucket)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(2):  # kernel selection and allocator warm-up outside the capture
                self._run(inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            outputs = self._run(inputs)
        self._graphs[bucket] = (graph, inputs, outputs)
        return self._graphs[bucket]

    def _bucket(self, n: int) -> int:
        i = bisect.bisect_left(self.buckets, n)
        if i == len(self.buckets):
            raise ValueError(f"batch of {n} objects exceeds the largest bucket {self.buckets[-1]}")
        return self.buckets[i]

    # ------------------------------------------------------------------ replay
    def __call__(
        self,
        rgb: torch.Tensor,
        pts: torch.Tensor,
        choose: torch.Tensor,
        category: torch.Tensor,
        queue_feats: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        n = pts.shape[0]
        if n > self.buckets[-1]:
            # Larger than any graph: split into chunks of the largest bucket.
            step = self.buckets[-1]
            parts = [
                self(
                    rgb[i : i + step],
                    pts[i : i + step],
                    choose[i : i + step],
                    category[i : i + step],
                    None if queue_feats is None else queue_feats[i : i + step],
                )
                for i in range(0, n, step)
            ]
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        graph, inputs, outputs = self._graph_for(self._bucket(n))
        bsz = inputs["pts"].shape[0]
        given = {"rgb": rgb, "pts": pts, "choose": choose, "category": category.reshape(-1)}
        if self.uses_queue:
            if queue_feats is None or queue_feats.shape[1] != inputs["queue_feats"].shape[1]:
                raise ValueError(f"queue_feats must be (B, {inputs['queue_feats'].shape[1]}, {self.d_model})")
            given["queue_feats"] = queue_feats
        for name, src in given.items():
            dst = inputs[name]
            dst[:n].copy_(src)
            if n < bsz:
                dst[n:].copy_(src[n - 1 : n].expand(bsz - n, *src.shape[1:]))
        graph.replay()
        # Clone: the static outputs are overwritten by the next replay.
        return {k: v[:n].clone() for k, v in outputs.items()}
