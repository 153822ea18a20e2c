"""Out of memory on a frame, in the node's worker thread running the real FramePipeline and estimator (demo
checkpoint): the frame is skipped and reported (one error log line, the out_of_memory counter in the node's
diagnostics values), nothing is published for it, and the next frame is served.

On CUDA (``-m gpu``) the out-of-memory error is real: the process's CUDA memory is capped just above what a
2-object frame needs (torch.cuda.set_per_process_memory_fraction), then a frame with ``max_objects`` (200)
objects is sent; the cap is lifted afterwards. Eager and CUDA-graph forwards (the node's default on CUDA)
are both tried. The CPU variant raises torch.OutOfMemoryError from the estimator on the big frame (CPU
memory cannot be capped per process): it runs the same worker and pipeline path in CI.

This file lives outside test/cleanpose_ros/ (whose conftest skips everything without the ROS interface
packages) because the GPU machine has no ROS: the worker, the pipeline and the counters import without it.
Run on the GPU machine: ``python -m pytest -q -m gpu test/test_worker_oom_real.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "models" / "demo" / "demo.safetensors"
H, W = 480, 640
K = np.array([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])
BIG = 200  # the max_objects parameter's upper bound: the largest frame the node lets through


class _Log:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level):
        return lambda msg: self.lines.append((level, msg))


def _frame(n: int, seed: int):
    """rgb, depth (m), Detections with `n` 20x20 box objects on a grid (all of them valid)."""
    from cleanpose_ros.detections import Detections

    g = np.random.default_rng(seed)
    rgb = g.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = g.uniform(0.6, 1.0, (H, W)).astype(np.float32)
    masks = np.zeros((n, H, W), bool)
    boxes = np.zeros((n, 4), np.int64)
    for k in range(n):
        y, x = 4 + 24 * (k // 26), 4 + 24 * (k % 26)
        masks[k, y : y + 20, x : x + 20] = True
        boxes[k] = (y, x, y + 20, x + 20)
    names = ["bottle", "bowl", "camera", "can", "laptop", "mug"]
    det = Detections(
        masks,
        boxes,
        [names[k % 6] for k in range(n)],
        np.full(n, 0.9, np.float32),
        [str(k) for k in range(n)],
    )
    return rgb, depth, det


def _serve(device: str, cuda_graphs: bool | None, make_oom):
    """A worker with the real pipeline; frames: warm-up, big (must run out of memory), next. `make_oom`
    (pipeline, working bytes of a 2-object frame) -> undo: what makes the big frame run out of memory."""
    from cleanpose_model.estimator import load_estimator
    from cleanpose_ros.diagnostics import NodeStats
    from cleanpose_ros.pipeline import FramePipeline, PipelineConfig
    from cleanpose_ros.worker import FrameWorker

    opts = {} if cuda_graphs is None else {"cuda_graphs": cuda_graphs}
    est = load_estimator(CHECKPOINT, device=device, **opts)
    pipeline = FramePipeline(est, PipelineConfig(max_objects=BIG))
    log = _Log()
    node = SimpleNamespace(
        stats=NodeStats(), p=SimpleNamespace(log_throttle=0.0), get_logger=lambda: log, pipeline=pipeline
    )
    published: dict[str, list] = {}
    done = threading.Event()

    def process(frame, _depth, _det, *_):
        # The node's order: prepare -> forward -> publish; an exception anywhere before publish reaches the
        # worker's loop (skip + count + log) and nothing of the frame is published.
        name, (rgb, depth, det) = frame
        res = pipeline.forward([pipeline.prepare(rgb, depth, K, det)])[0]
        published[name] = res.objects
        done.set()

    w = FrameWorker(node)
    w.process = process
    w.accept(True)

    def send(name, n, seed):
        done.clear()
        before = sum(node.stats.skipped.values())
        w.put((name, _frame(n, seed)), None, None)
        deadline = time.monotonic() + 300
        while not done.is_set() and sum(node.stats.skipped.values()) == before:
            assert time.monotonic() < deadline, f"frame {name} neither served nor skipped"
            time.sleep(0.01)
        w.wait_idle()

    try:
        send("warm1", 2, 0)
        cuda = est.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(est.device)
            torch.cuda.reset_peak_memory_stats(est.device)
            base = torch.cuda.memory_allocated(est.device)
        send("warm2", 2, 1)
        # the working memory of one 2-object frame (CUDA; 0 on the CPU)
        work = torch.cuda.max_memory_allocated(est.device) - base if cuda else 0
        undo = make_oom(pipeline, work)
        try:
            send("big", BIG, 2)
            send("next", 2, 3)
        finally:
            undo()
    finally:
        w.stop()
    return node, log, published


def _check(node, log, published):
    s = node.stats
    assert s.skipped == {"out_of_memory": 1}, (s.skipped, log.lines)
    assert "big" not in published
    assert [o.detection_index for o in published["next"]] == [0, 1]  # the next frame was served
    assert all(np.isfinite(o.translation).all() for o in published["next"])
    errors = [m for lv, m in log.lines if lv == "error"]
    assert len(errors) == 1 and "OutOfMemoryError" in errors[0], log.lines
    snap = s.snapshot(window=600.0)  # what /diagnostics carries
    assert snap["skipped_out_of_memory"] == 1 and snap["skipped_bad_input"] == 1
    assert snap["window_errors"] == 1
    assert snap["processed"] == 0  # process() above stands in for the outputs; only the worker counts here
    assert snap["inputs"] == 4


def test_out_of_memory_on_a_frame_cpu_injected():
    def make_oom(pipeline, _work):
        est = pipeline.estimator
        real = est.predict

        def predict(batch):
            if batch.pts.shape[0] > 8:
                raise torch.OutOfMemoryError("injected: the CPU variant of the CUDA test")
            return real(batch)

        est.predict = predict
        return lambda: setattr(est, "predict", real)

    _check(*_serve("cpu", None, make_oom))


def _cap_cuda_memory(pipeline, work: int):
    """Caps this process's CUDA memory at what it holds now (weights, CUDA graph pools) plus room for a
    few 2-object frames (4x their working memory, at least 64 MiB), far from the 100x that 200 objects
    need; returns the undo."""
    dev = pipeline.estimator.device
    # set_per_process_memory_fraction wants an index; the estimator's device may be plain "cuda".
    dev = dev.index if dev.index is not None else torch.cuda.current_device()
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()  # cached free blocks would count as held
    total = torch.cuda.get_device_properties(dev).total_memory
    cap = torch.cuda.memory_reserved(dev) + max(64 << 20, 4 * work)
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), dev)
    print(f"CUDA memory capped at {cap / 2**20:.0f} MiB (2-object frame: {work / 2**20:.1f} MiB working)")

    def undo():
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        torch.cuda.empty_cache()

    return undo


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "cuda_graphs"])
def test_out_of_memory_on_a_frame_cuda_real(cuda_graphs):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    _check(*_serve("cuda", cuda_graphs, _cap_cuda_memory))
