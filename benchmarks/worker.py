"""One source tree's estimator in its own process, for the forward and memory suites.

Started as a script (``python benchmarks/worker.py``) with ``PYTHONPATH=<tree root>``, so ``cleanpose_model``
is that tree's: the current checkout or an older one (``--baseline-root``). Besides that tree it imports
only torch and the sibling ``harness`` module (this file's folder is ``sys.path[0]`` when run as a script).

Protocol: one JSON request per stdin line, one reply per request on stdout as a line starting with
``@@bench `` (other output of the libraries may share stdout). Requests:
    {"op": "setup", "fixture": PATH, "device": "cuda", "variant": "cleanpose"}
    {"op": "time", "mode": "exact"|"fast", "objects": N, "warmup": W, "iterations": K, "compile": false}
    {"op": "memory", "mode": "exact"|"fast", "objects": N}     (N = 0: weights only, nothing run)
    {"op": "published_setup", "root": DIR, "dinov2": DIR|null}   (the published code, benchmarks/published.py)
    {"op": "time_published", "objects": N, "warmup": W, "iterations": K, "tf32": null|false}
    {"op": "profile", "mode": "exact"|"fast", "objects": N, "iterations": K, "graphs": true, "top": 25}
    {"op": "quit"}
"""

from __future__ import annotations

import copy
import inspect
import json
import resource
import sys
import traceback

import harness
import torch

REPLY = "@@bench "


def estimator_api():
    """(PoseEstimator, ObjectBatch, module name): the split API (``cleanpose_model.estimator`` +
    ``cleanpose_model.types``) or, in trees before the split (commit fd36f34),
    ``cleanpose_model.inference``."""
    try:
        from cleanpose_model.estimator import PoseEstimator
        from cleanpose_model.types import ObjectBatch

        return PoseEstimator, ObjectBatch, "cleanpose_model.estimator"
    except ImportError:
        from cleanpose_model.inference import ObjectBatch, PoseEstimator

        return PoseEstimator, ObjectBatch, "cleanpose_model.inference"


def mode_options(cls, mode: str) -> dict:
    """The estimator's keyword for ``mode``: ``mode="exact"|"fast"`` in the current API, ``precision=
    "fp32"|"fast"`` in the older one."""
    params = inspect.signature(cls.__init__).parameters
    if "mode" in params:
        return {"mode": mode}
    return {"precision": {"exact": "fp32", "fast": "fast"}[mode]}


def weights_checksum(net: torch.nn.Module) -> str:
    """A fingerprint of the state dict (names, shapes, float64 sums), equal in two trees iff they built
    the same weights (up to a coincidence no benchmark meets)."""
    sd = net.state_dict()
    total = sum(float(t.double().sum()) + float(t.double().abs().sum()) for t in sd.values())
    return f"{len(sd)}:{sum(t.numel() for t in sd.values())}:{total:.9e}"


class Worker:
    def __init__(self, fixture: str, device: str, variant: str) -> None:
        import cleanpose_model
        from cleanpose_model.parity import build_parity_net

        self.cls, self.batch_cls, self.api = estimator_api()
        self.device = torch.device(device)
        self.fixture = torch.load(fixture, weights_only=True)
        self.net = build_parity_net(variant, "cpu")
        self.checksum = weights_checksum(self.net)
        self.queue = self.fixture["queue"] if variant == "cleanpose" else None
        self.tree = cleanpose_model.__file__
        self._estimators: dict[tuple[str, bool], object] = {}

    def info(self) -> dict:
        return {
            "tree": self.tree,
            "api": self.api,
            "weights_checksum": self.checksum,
            "torch": torch.__version__,
        }

    def estimator(self, mode: str, compile: bool = False):
        """One estimator per (mode, compile), each on its own copy of the network: an inference form may
        prepare (fold, fuse) the module it is given, and the other mode must start from the reference."""
        key = (mode, compile)
        if key not in self._estimators:
            net = copy.deepcopy(self.net)
            options = {"cuda_graphs": True, "compile": compile} if self.device.type == "cuda" else {}
            self._estimators[key] = self.cls(
                net, net.cfg, self.queue, device=self.device, **options, **mode_options(self.cls, mode)
            )
        return self._estimators[key]

    def batch(self, n: int):
        t = {k: self.fixture[f"{n}/{k}"].to(self.device) for k in ("rgb", "pts", "choose", "category")}
        return self.batch_cls(rgb=t["rgb"], pts=t["pts"], choose=t["choose"], category=t["category"])

    def time(self, mode: str, objects: int, warmup: int, iterations: int, compile: bool = False) -> dict:
        est, batch = self.estimator(mode, compile), self.batch(objects)
        last = {}

        def call():
            last["out"] = est.predict(batch)

        samples = harness.time_call(call, self.device, warmup=warmup, iterations=iterations)
        out = last["out"]
        return {
            "samples_ms": samples,
            "outputs": {
                k: getattr(out, k).detach().float().cpu().reshape(objects, -1).tolist()
                for k in ("rotation", "translation", "size")
            },
        }

    def profile(self, mode: str, objects: int, iterations: int, graphs: bool = True, top: int = 25) -> dict:
        """Where the device time of one forward goes (torch.profiler over ``iterations`` calls): kernels per
        call, their summed device time per call (the GPU-busy floor of the forward) against the wall time
        of the same calls, and the ``top`` kernels by device time. ``graphs`` False profiles the eager form
        (every kernel named by the op that launched it; graphs replay the same kernels)."""
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        if graphs:
            est = self.estimator(mode)
        else:
            net = copy.deepcopy(self.net)
            est = self.cls(net, net.cfg, self.queue, device=self.device, **mode_options(self.cls, mode))
        batch = self.batch(objects)
        for _ in range(5):
            est.predict(batch)
        harness.synchronize(self.device)
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            wall = harness.time_call(lambda: est.predict(batch), self.device, warmup=0, iterations=iterations)
        kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]

        def device_us(e) -> float:
            return float(
                getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
            )

        busy = sum(device_us(e) for e in kernels) / iterations
        rows = sorted(kernels, key=device_us, reverse=True)[:top]
        return {
            "mode": mode,
            "objects": objects,
            "graphs": graphs,
            "wall_ms_median": float(sorted(wall)[len(wall) // 2]),
            "device_busy_ms": busy / 1e3,
            "kernels_per_call": sum(e.count for e in kernels) / iterations,
            "top": [
                {
                    "kernel": e.key[:90],
                    "calls": e.count / iterations,
                    "us_per_call": device_us(e) / iterations,
                    "share": device_us(e) / iterations / busy if busy else 0.0,
                }
                for e in rows
            ],
        }

    def published_setup(self, root: str, dinov2: str | None = None) -> dict:
        """The published network of the checkout at ``root`` with this worker's weights, in this process
        (its rows share the process, device and inputs with ours). Its queue: per category the 12 entries
        of our "spread" mode, of which its forward draws all 12 in a random order (the work of its default
        12-of-N draw); the reply's ``max_pose_diff_same_queue`` compares its poses with our exact forward
        given those same entries, on the fixture's smallest batch."""
        import published

        est = self.estimator("exact")
        queue = est.queue
        if queue is None:
            raise ValueError("the published CleanPose network needs a confounder queue (variant cleanpose)")
        selected = queue.gather(torch.arange(queue.cat_num), queue.indices("spread"))
        self.published = published.PublishedNet(
            root, self.net.state_dict(), selected, self.net.rgb_extractor, self.device, dinov2
        )
        n = min(int(k.split("/")[0]) for k in self.fixture if k.endswith("/rgb"))
        b = self.batch(n)
        pub = self.published(b.rgb, b.pts, b.choose, b.category)
        feats = selected[b.category.to(selected.device)]
        with torch.inference_mode():
            ours = est._forward(feats)(b.rgb, b.pts, b.choose, b.category, queue_feats=feats)
        diff = max(
            float((pub[k].float() - ours[k].float()).abs().max())
            for k in ("pred_rotation", "pred_translation", "pred_size")
        )
        return {
            "root": str(self.published.root),
            "dinov2": self.published.dinov2,
            "parity_objects": n,
            "max_pose_diff_same_queue": diff,
        }

    def time_published(self, objects: int, warmup: int, iterations: int, tf32: bool | None) -> dict:
        import published

        fwd, b = self.published, self.batch(objects)
        last = {}

        def call():
            last["out"] = fwd(b.rgb, b.pts, b.choose, b.category)

        with published.tf32(tf32):
            samples = harness.time_call(call, self.device, warmup=warmup, iterations=iterations)
        out = last["out"]
        keys = {"rotation": "pred_rotation", "translation": "pred_translation", "size": "pred_size"}
        return {
            "samples_ms": samples,
            "outputs": {
                k: out[v].detach().float().cpu().reshape(objects, -1).tolist() for k, v in keys.items()
            },
        }

    def memory(self, mode: str, objects: int) -> dict:
        """Memory of this process after building the estimator and, for objects > 0, one forward (with CUDA
        graphs: their capture for every bucket up to ``objects``)."""
        est = self.estimator(mode)
        if objects > 0:
            with torch.inference_mode():
                est.predict(self.batch(objects))
        harness.synchronize(self.device)
        row = {"rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            row.update(
                {
                    "peak_allocated_mb": torch.cuda.max_memory_allocated(self.device) / 2**20,
                    "reserved_mb": torch.cuda.memory_reserved(self.device) / 2**20,
                    "device_used_mb": (total - free) / 2**20,
                }
            )
        return row


def serve() -> int:
    worker = None
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.pop("op")
        try:
            if op == "quit":
                reply = {"ok": True}
            elif op == "setup":
                worker = Worker(**req)
                reply = worker.info()
            elif worker is None:
                raise RuntimeError(f"{op!r} before 'setup'")
            elif op == "time":
                reply = worker.time(**req)
            elif op == "profile":
                reply = worker.profile(**req)
            elif op == "memory":
                reply = worker.memory(**req)
            elif op == "published_setup":
                reply = worker.published_setup(**req)
            elif op == "time_published":
                reply = worker.time_published(**req)
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception:
            reply = {"error": traceback.format_exc()}
        print(REPLY + json.dumps(reply), flush=True)
        if op == "quit":
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(serve())
