"""`cleanpose-bench`: replay a rosbag2 recording into the cleanpose node over DDS and measure it.

Measures what ros2_benchmark reports for Isaac ROS graphs (fixed-rate playback and peak throughput,
sent-to-received latency percentiles, output rate, dropped frames, jitter, CPU / GPU utilisation, GPU memory),
plus latency against the number of objects in the frame, accuracy with the evaluation protocol when the bag
has ground truth, and the same frames through `FramePipeline` in-process so the ROS / DDS overhead shows as a
difference.

Output: a Markdown table on stdout, `bench.json` and `bench.png` in --out.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cleanpose_model.categories import NOCS
from cleanpose_tools.replay import (
    BagFrames,
    BagTopicError,
    Frame,
    Replayer,
    RunResult,
    TopicConfig,
    deserialize_rclpy,
    load_frames,
    prefer_large_data_transport,
)

SYMMETRIC = NOCS.symmetric
NODE_NAME = "cleanpose_node"


# ------------------------------------------------------------------------------------------------ statistics


def latency_stats(lat_ms: list[float] | np.ndarray) -> dict[str, float | None]:
    a = np.asarray(lat_ms, dtype=np.float64)
    if a.size == 0:
        return {k: None for k in ("mean", "p50", "p95", "p99", "max", "min")}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "mean": float(a.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(a.max()),
        "min": float(a.min()),
    }


def jitter_stats(recv_times: list[float]) -> dict[str, float | None]:
    """Frame-to-frame jitter of the output stream: |interval_i - interval_{i-1}| in ms (ros2_benchmark's
    definition), so a steady rate gives ~0 whatever the rate is."""
    t = np.sort(np.asarray(recv_times, dtype=np.float64))
    if t.size < 3:
        return {"mean": None, "std": None, "max": None}
    d = np.abs(np.diff(np.diff(t))) * 1e3
    return {"mean": float(d.mean()), "std": float(d.std()), "max": float(d.max())}


def run_stats(run: RunResult) -> dict[str, Any]:
    got = [r for r in run.records if r.t_recv is not None]
    lat = [(r.t_recv - r.t_send) * 1e3 for r in got]
    recv_t = [r.t_recv for r in got]
    span = (max(recv_t) - run.records[0].t_send) if got else 0.0
    return {
        "mode": run.mode,
        "rate_hz": run.rate_hz,
        "iteration": run.iteration,
        "sent": run.sent,
        "received": run.received,
        "dropped": run.dropped,
        "unmatched_outputs": run.unmatched_outputs,
        "duration_s": run.t_end - run.t_start,
        "output_rate_hz": (len(got) / span) if span > 0 else 0.0,
        "latency_ms": latency_stats(lat),
        "jitter_ms": jitter_stats(recv_t),
        "resources": run.resources,
    }


def aggregate(runs: list[RunResult]) -> dict[str, Any]:
    """Pool the iterations of one rate: percentiles over all frames, rates averaged over iterations."""
    per = [run_stats(r) for r in runs]
    lat = [(r.t_recv - r.t_send) * 1e3 for run in runs for r in run.records if r.t_recv is not None]
    res = [p["resources"] for p in per if p["resources"]]

    def agg(key: str, fn):
        vals = [r[key] for r in res if r.get(key) is not None]
        return float(fn(vals)) if vals else None

    jit = [p["jitter_ms"]["mean"] for p in per if p["jitter_ms"]["mean"] is not None]
    return {
        "mode": runs[0].mode,
        "rate_hz": runs[0].rate_hz,
        "iterations": len(runs),
        "sent": sum(p["sent"] for p in per),
        "received": sum(p["received"] for p in per),
        "dropped": sum(p["dropped"] for p in per),
        "output_rate_hz": float(np.mean([p["output_rate_hz"] for p in per])),
        "latency_ms": latency_stats(lat),
        "jitter_ms_mean": float(np.mean(jit)) if jit else None,
        "cpu_percent_mean": agg("cpu_percent_mean", np.mean),
        "cpu_percent_max": agg("cpu_percent_max", np.max),
        "rss_mb_max": agg("rss_mb_max", np.max),
        "gpu_util_mean": agg("gpu_util_mean", np.mean),
        "gpu_util_max": agg("gpu_util_max", np.max),
        "gpu_mem_mb_max": agg("gpu_mem_mb_max", np.max),
        "runs": per,
    }


def latency_by_objects(records) -> dict[int, dict[str, float | None]]:
    by: dict[int, list[float]] = {}
    for r in records:
        if r.t_recv is not None:
            by.setdefault(r.n_objects, []).append((r.t_recv - r.t_send) * 1e3)
    return {n: {"count": len(v), **latency_stats(v)} for n, v in sorted(by.items())}


def stage_means_of(diagnostics: dict[str, dict[str, str]], node_name: str = NODE_NAME) -> dict[str, float]:
    """The node's per-stage means (ms) from its /diagnostics values (`stage_ms_<stage>`, averaged by the node
    over its last 100 processed frames), in the node's order; {} when the node published none."""
    short = node_name.strip("/").split("/")[-1]
    for name, values in diagnostics.items():
        if short in name and any(k.startswith("stage_ms_") for k in values):
            out = {}
            for k, v in values.items():
                if k.startswith("stage_ms_"):
                    with contextlib.suppress(ValueError):
                        out[k[len("stage_ms_") :]] = float(v)
            return out
    return {}


def wait_stage_means(rep, node_name: str, timeout_s: float = 3.0) -> dict[str, float]:
    """Drops the diagnostics seen so far and waits for the node's next status (so its stage means cover the
    frames just sent), up to `timeout_s`."""
    rep.diagnostics.clear()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = stage_means_of(dict(rep.diagnostics), node_name)
        if got:
            return got
        time.sleep(0.05)
    return {}


# Stages the node books before the frame's own ones, and the pipeline's inner ones (inside "pipeline").
_PIPELINE_INNER = ("select", "build_inputs", "forward", "results")


def stage_table(rows: list[tuple[str, dict[str, float], float | None]]) -> list[str]:
    """Markdown rows of the node's stage means: rows = (label, stage means, latency mean ms). "rest" = latency
    mean − the stages (without the pipeline's inner ones, which "pipeline" already holds): the transport of
    the answer back and whatever the stages do not cover."""
    keys: list[str] = []
    for _, st, _ in rows:
        keys += [k for k in st if k not in keys]
    if not keys:
        return []
    lines = [
        "| mode | " + " | ".join(keys) + " | sum | latency mean | rest |",
        "|---|" + "---|" * (len(keys) + 3),
    ]
    for label, st, lat_mean in rows:
        if not st:
            continue
        total = sum(v for k, v in st.items() if k not in _PIPELINE_INNER)
        rest = lat_mean - total if lat_mean is not None else None
        cells = [_f(st.get(k), 2) for k in keys]
        tail = f" | {_f(total, 2)} | {_f(lat_mean, 2)} | {_f(rest, 2)} |"
        lines.append(f"| {label} | " + " | ".join(cells) + tail)
    return lines


# ------------------------------------------------------------------------------------------------ resources


class ResourceSampler:
    """Samples the node process (CPU %, RSS, with children) and the GPU (utilisation, memory used) in a
    thread.

    GPU numbers come from NVML (pynvml / nvidia-ml-py) or `nvidia-smi`, for the whole device: on a shared GPU
    they include other processes. Without either they are None; the node's /diagnostics may still say more.
    """

    def __init__(self, pid: int | None, period_s: float = 0.2, gpu_index: int = 0):
        self.pid = pid
        self.period = period_s
        self.gpu_index = gpu_index
        self._stop = threading.Event()
        self._samples: list[tuple[float | None, float | None, float | None, float | None]] = []
        self._thread: threading.Thread | None = None
        self._gpu = self._gpu_reader()

    def _gpu_reader(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(self.gpu_index)

            def read():
                u = pynvml.nvmlDeviceGetUtilizationRates(h)
                m = pynvml.nvmlDeviceGetMemoryInfo(h)
                return float(u.gpu), m.used / 2**20

            read()
            return read
        except Exception:
            pass
        if shutil.which("nvidia-smi"):

            def read_smi():
                out = (
                    subprocess.run(
                        [
                            "nvidia-smi",
                            f"--id={self.gpu_index}",
                            "--query-gpu=utilization.gpu,memory.used",
                            "--format=csv,noheader,nounits",
                        ],
                        capture_output=True,
                        text=True,
                        timeout=5,
                    )
                    .stdout.strip()
                    .split(",")
                )
                return float(out[0]), float(out[1])

            try:
                read_smi()
                return read_smi
            except Exception:
                return None
        return None

    def _procs(self):
        import psutil

        try:
            p = psutil.Process(self.pid)
            return [p, *p.children(recursive=True)]
        except psutil.Error:
            return []

    def _loop(self):
        import psutil

        procs = self._procs() if self.pid else []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.cpu_percent(None)
        while not self._stop.wait(self.period):
            cpu = rss = None
            if procs:
                cpu, rss = 0.0, 0.0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        cpu += p.cpu_percent(None)
                        rss += p.memory_info().rss / 2**20
            util = mem = None
            if self._gpu:
                with contextlib.suppress(Exception):
                    util, mem = self._gpu()
            self._samples.append((cpu, rss, util, mem))

    def start(self):
        self._samples = []
        if self.period <= 0:  # sampling off: stop() reports no figures
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float | None]:
        self._stop.set()
        if self._thread:
            self._thread.join()

        def col(i, fn):
            v = [s[i] for s in self._samples if s[i] is not None]
            return float(fn(v)) if v else None

        return {
            "cpu_percent_mean": col(0, np.mean),
            "cpu_percent_max": col(0, np.max),
            "rss_mb_max": col(1, np.max),
            "gpu_util_mean": col(2, np.mean),
            "gpu_util_max": col(2, np.max),
            "gpu_mem_mb_max": col(3, np.max),
            "samples": len(self._samples),
        }


# ------------------------------------------------------------------------------------------------ accuracy


def quat_to_matrix(q) -> np.ndarray:
    x, y, z, w = q
    n = np.sqrt(x * x + y * y + z * z + w * w) or 1.0
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@dataclass
class Obj:
    cls: str
    instance_id: str
    R: np.ndarray
    t: np.ndarray
    size: np.ndarray
    score: float = 1.0


def objects_of(msg) -> list[Obj]:
    out = []
    for o in msg.objects:
        p = o.pose
        out.append(
            Obj(
                o.class_name,
                o.instance_id,
                quat_to_matrix((p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w)),
                np.array([p.position.x, p.position.y, p.position.z]),
                np.array([o.size.x, o.size.y, o.size.z]),
                float(o.score),
            )
        )
    return out


def rotation_error_deg(R_pred: np.ndarray, R_gt: np.ndarray, cls: str) -> float:
    """Evaluation protocol §3: classes symmetric about y compare only the y axes."""
    if cls in SYMMETRIC:
        c = float(
            np.dot(R_pred[:, 1], R_gt[:, 1]) / (np.linalg.norm(R_pred[:, 1]) * np.linalg.norm(R_gt[:, 1]))
        )
    else:
        c = (np.trace(R_pred @ R_gt.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _box_corners(size: np.ndarray) -> np.ndarray:
    s = np.array([[x, y, z] for x in (1, -1) for y in (1, -1) for z in (1, -1)], dtype=np.float64)
    return s * (np.asarray(size) / 2.0)


def iou_3d(pred: Obj, gt: Obj) -> float:
    """Axis-aligned IoU (camera axes) of the two transformed boxes, maximised over rotations about y for the
    symmetric classes: the CATRE variant of the evaluation protocol (§2.2-2.3), used for per-object rows."""

    def aabb(R, t, size):
        c = _box_corners(size) @ R.T + t
        return c.min(0), c.max(0)

    lo2, hi2 = aabb(gt.R, gt.t, gt.size)
    vol2 = float(np.prod(hi2 - lo2))
    angles = np.linspace(0, 2 * np.pi, 20, endpoint=False) if gt.cls in SYMMETRIC else [0.0]
    best = 0.0
    for a in angles:
        Y = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        lo1, hi1 = aabb(pred.R @ Y, pred.t, pred.size)
        inter = np.prod(np.clip(np.minimum(hi1, hi2) - np.maximum(lo1, lo2), 0, None))
        union = float(np.prod(hi1 - lo1)) + vol2 - inter
        best = max(best, float(inter / union) if union > 0 else 0.0)
    return best


def match_objects(preds: list[Obj], gts: list[Obj]) -> list[tuple[Obj | None, Obj]]:
    """Pair each GT object with a prediction: same instance id and class first (the detector's id travels
    through the node), then the nearest remaining prediction of the same class."""
    free = list(preds)
    pairs: list[tuple[Obj | None, Obj]] = []
    for g in gts:
        hit = next(
            (p for p in free if p.instance_id and p.instance_id == g.instance_id and p.cls == g.cls), None
        )
        if hit is None:
            same = [p for p in free if p.cls == g.cls]
            hit = min(same, key=lambda p: float(np.linalg.norm(p.t - g.t)), default=None)
        if hit is not None:
            free.remove(hit)
        pairs.append((hit, g))
    return pairs


def score_frames(frame_pairs: list[tuple[int, Any, Any]]) -> dict[str, Any]:
    """frame_pairs: (frame index, GT ObjectPoseArray, predicted ObjectPoseArray or None).

    Per-object rows and the per-object success rates (share of GT objects within 5°2cm / 10°5cm / IoU > 0.5);
    plus the NOCS mAP of the evaluation protocol through cleanpose_training.evaluation.metrics when it is
    importable.
    """
    rows = []
    for fi, gt_msg, pred_msg in frame_pairs:
        gts = objects_of(gt_msg)
        preds = objects_of(pred_msg) if pred_msg is not None else []
        for p, g in match_objects(preds, gts):
            row = {"frame": fi, "class": g.cls, "instance_id": g.instance_id, "found": p is not None}
            if p is not None:
                row.update(
                    rot_deg=rotation_error_deg(p.R, g.R, g.cls),
                    trans_cm=float(np.linalg.norm(p.t - g.t) * 100),
                    size_cm=float(np.abs(p.size - g.size).mean() * 100),
                    iou=iou_3d(p, g),
                )
            rows.append(row)
    n = len(rows)

    def share(pred) -> float | None:
        return (sum(1 for r in rows if r["found"] and pred(r)) / n * 100) if n else None

    summary = {
        "gt_objects": n,
        "found": sum(r["found"] for r in rows),
        "5deg2cm": share(lambda r: r["rot_deg"] <= 5 and r["trans_cm"] <= 2),
        "10deg5cm": share(lambda r: r["rot_deg"] <= 10 and r["trans_cm"] <= 5),
        "iou50": share(lambda r: r["iou"] > 0.5),
        "rot_deg_median": _median([r["rot_deg"] for r in rows if r["found"]]),
        "trans_cm_median": _median([r["trans_cm"] for r in rows if r["found"]]),
        "size_cm_median": _median([r["size_cm"] for r in rows if r["found"]]),
    }
    per_class: dict[str, dict] = {}
    for c in sorted({r["class"] for r in rows}):
        rc = [r for r in rows if r["class"] == c and r["found"]]
        per_class[c] = {
            "objects": sum(r["class"] == c for r in rows),
            "rot_deg_mean": _mean([r["rot_deg"] for r in rc]),
            "trans_cm_mean": _mean([r["trans_cm"] for r in rc]),
            "size_cm_mean": _mean([r["size_cm"] for r in rc]),
            "iou_mean": _mean([r["iou"] for r in rc]),
        }
    return {
        "objects": rows,
        "per_object_success": summary,
        "per_class": per_class,
        "nocs_map": nocs_map(frame_pairs),
    }


def _mean(v):
    return float(np.mean(v)) if v else None


def _median(v):
    return float(np.median(v)) if v else None


def nocs_map(frame_pairs) -> dict[str, Any]:
    """The evaluation protocol's mAP (NOCS IoU25/50/75, CATRE IoU50/75, 5°2cm ... 10°5cm, ×100) over the
    sequence, through cleanpose_training.evaluation.metrics; classes without ground truth are left out of the
    mean."""
    try:
        from cleanpose_training.evaluation import metrics
    except ImportError as e:
        return {"skipped": f"cleanpose_training.evaluation.metrics not importable ({e})"}
    cats = list(NOCS.names)
    records = []
    for _fi, gt_msg, pred_msg in frame_pairs:
        gts = objects_of(gt_msg)
        preds = objects_of(pred_msg) if pred_msg is not None else []
        records.append(_result_record(gts, preds, cats))
    try:
        res = metrics.evaluate_records(records)
    except Exception as e:  # a scoring problem must not hide the latency numbers
        return {"skipped": f"metrics failed: {type(e).__name__}: {e}"}
    out = {}
    for key, fn in (
        ("IoU25", lambda c: res.iou_ap("nocs", 0.25, c)),
        ("IoU50", lambda c: res.iou_ap("nocs", 0.50, c)),
        ("IoU75", lambda c: res.iou_ap("nocs", 0.75, c)),
        ("IoU75_catre", lambda c: res.iou_ap("catre", 0.75, c)),
        ("5deg2cm", lambda c: res.pose_ap(5, 2, c)),
        ("5deg5cm", lambda c: res.pose_ap(5, 5, c)),
        ("10deg2cm", lambda c: res.pose_ap(10, 2, c)),
        ("10deg5cm", lambda c: res.pose_ap(10, 5, c)),
    ):
        per = np.array([fn(c) for c in range(1, len(cats) + 1)], dtype=np.float64)
        out[key] = float(np.nanmean(per) * 100) if np.isfinite(per).any() else None
    return out


def accuracy_section(bag: BagFrames, topics: TopicConfig, run: RunResult) -> dict[str, Any]:
    """Scores of one run against the bag's ground truth, or why there are none."""
    if not bag.has_gt:
        found = ", ".join(sorted(bag.topics_found))
        return {
            "skipped": f"no ground truth topic {topics.gt!r} in the bag (topics: {found}), accuracy skipped"
        }
    pairs = [
        (r.frame, bag.frames[r.frame].gt, r.output) for r in run.records if bag.frames[r.frame].gt is not None
    ]
    if not pairs:
        return {"skipped": "no frame had ground truth within the sync slop, accuracy skipped"}
    acc = score_frames(pairs)
    acc["source"] = f"DDS {run.mode} run, iteration {run.iteration}"
    from cleanpose_tools.track_metrics import tracking_figures

    # identities and frame-to-frame jitter of the published stream (the node's tracking and filter)
    acc["tracking"] = tracking_figures(sorted(pairs, key=lambda p: p[0]))
    return acc


def format_map(m: dict | None) -> str:
    if not m:
        return "mAP: not computed"
    if "skipped" in m:
        return f"mAP: {m['skipped']}"
    names = {
        "IoU25": "IoU25",
        "IoU50": "IoU50",
        "IoU75": "IoU75",
        "IoU75_catre": "IoU75*",
        "5deg2cm": "5°2cm",
        "5deg5cm": "5°5cm",
        "10deg2cm": "10°2cm",
        "10deg5cm": "10°5cm",
    }
    return "mAP (evaluation protocol, %): " + ", ".join(f"{names[k]} {_f(v)}" for k, v in m.items())


def _rt(o: Obj) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = o.R * np.linalg.norm(o.size)
    m[:3, 3] = o.t
    return m


def _result_record(gts: list[Obj], preds: list[Obj], cats: list[str]) -> dict[str, np.ndarray]:
    """One per-image result record in the layout of the evaluation protocol §1 (1-based class ids,
    RT = [R·‖s‖, t], scales = s/‖s‖)."""

    def ids(objs):
        return np.array([cats.index(o.cls) + 1 for o in objs if o.cls in cats], dtype=np.int64)

    gts = [o for o in gts if o.cls in cats]
    preds = [o for o in preds if o.cls in cats]
    return {
        "gt_class_ids": ids(gts),
        "gt_RTs": np.array([_rt(o) for o in gts]).reshape(-1, 4, 4),
        "gt_scales": np.array([o.size / np.linalg.norm(o.size) for o in gts]).reshape(-1, 3),
        "gt_handle_visibility": np.ones(len(gts)),
        "pred_class_ids": ids(preds),
        "pred_RTs": np.array([_rt(o) for o in preds]).reshape(-1, 4, 4),
        "pred_scales": np.array([o.size / np.linalg.norm(o.size) for o in preds]).reshape(-1, 3),
        "pred_scores": np.array([o.score for o in preds], dtype=np.float64),
        # 2D boxes only serve the protocol's all-zero-row check; the node does not echo them
        "pred_bboxes": np.tile(np.array([0, 0, 1, 1]), (len(preds), 1)),
    }


# -------------------------------------------------------------------------------------------- node process


def default_checkpoint() -> tuple[Path, bool]:
    """(checkpoint path, trained?): the shipped demo checkpoint, else a seeded random-weight one built from
    cleanpose_model/configs/demo.yaml (cached under outputs/), so the pipeline runs before training landed."""
    from cleanpose_tools.replay import REPO_ROOT

    demo = REPO_ROOT / "models" / "demo"
    for pat in ("*.safetensors", "*.pth"):
        found = sorted(demo.glob(pat)) if demo.is_dir() else []
        if found:
            return found[0], True
    return build_random_checkpoint(REPO_ROOT / "outputs" / "untrained" / "demo_random.safetensors"), False


def build_random_checkpoint(path: Path, seed: int = 0) -> Path:
    """Seeded random weights (and a random confounder queue) in the demo config: exercises every stage with
    the shipped structure; its poses are meaningless."""
    if path.exists():
        return path
    import torch

    from cleanpose_model.config import ModelConfig
    from cleanpose_model.io import checkpoints
    from cleanpose_model.net import CleanPoseNet

    torch.manual_seed(seed)
    cfg = ModelConfig.named("demo")
    net = CleanPoseNet(cfg).eval()
    queue = None
    if checkpoints.uses_queue(net):
        # select_num entries per category: the deterministic queue mode may use every entry, and the network
        # takes exactly select_num of them
        queue = torch.randn(cfg.cat_num, cfg.select_num, cfg.d_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save_checkpoint(
        path, net, cfg, queue=queue, metadata={"trained": "no: seeded random weights"}
    )
    return path


def node_command(
    checkpoint: str,
    device: str,
    topics: TopicConfig,
    node_name: str = NODE_NAME,
    extra_params: dict[str, str] | None = None,
) -> list[str]:
    # Reliable inputs: best-effort images of a few hundred KB travel as UDP fragments when they exceed Fast
    # DDS's shared-memory segment, and one lost fragment loses the frame (all of them, with default socket
    # buffers), which would measure the transport settings rather than the node.
    params = {"checkpoint": str(checkpoint), "device": device, "input_reliability": "reliable"}
    params.update(extra_params or {})
    cmd = [sys.executable, "-m", "cleanpose_ros.node", "--ros-args", "-r", f"__node:={node_name}"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    remap = {
        "image": topics.image,
        "depth": topics.depth,
        "camera_info": topics.info,
        "detections": topics.detections,
    }
    for k, v in remap.items():
        cmd += ["-r", f"{k}:={v}"]
    return cmd


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the process that started it dies, even by SIGKILL
    (a timed-out test or benchmark), so no node is left answering later runs on the same ROS domain; the
    node's SIGTERM handler shuts it down cleanly. Elsewhere a no-op."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class NodeProcess:
    """The node as a subprocess (its own process, as on a robot), logging to a file."""

    def __init__(
        self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ):
        """`env`: variables set on top of this process's environment."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (lives as long as the process)
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# ------------------------------------------------------------------------------------------------ in-process


def make_pipeline(checkpoint: str, device: str):
    from cleanpose_model.estimator import load_estimator
    from cleanpose_ros.pipeline import FramePipeline, PipelineConfig

    return FramePipeline(load_estimator(checkpoint, device=device), PipelineConfig())


def decode_frame(bag: BagFrames, fr: Frame):
    """Recorded CDR -> the pipeline's inputs, through rclpy messages (what the node's callbacks receive) and
    the node's own conversions."""
    from cleanpose_ros import conversions
    from cleanpose_ros.detections import parse_instance_segmentation

    msgs = {role: deserialize_rclpy(fr.raw[role], bag.msgtypes[role]) for role in fr.raw}
    rgb = conversions.rgb_from_image(msgs["image"])
    depth = conversions.depth_from_image(msgs["depth"])
    K = conversions.camera_info_to_K(msgs["info"])
    det = parse_instance_segmentation(msgs["detections"], rgb.shape[0], rgb.shape[1])
    return rgb, depth, K, det


def run_in_process(bag: BagFrames, frames: list[Frame], pipeline, iterations: int) -> dict[str, Any]:
    """The same frames through FramePipeline.process, no DDS. Timed from the recorded CDR bytes on
    (deserialize, decode, pipeline): the node's own work per frame, minus transport and executor."""
    lat: list[float] = []
    by_obj: dict[int, list[float]] = {}
    t_all = time.perf_counter()
    for _ in range(iterations):
        for fr in frames:
            t0 = time.perf_counter()
            rgb, depth, K, det = decode_frame(bag, fr)
            pipeline.process(rgb, depth, K, det)
            ms = (time.perf_counter() - t0) * 1e3
            lat.append(ms)
            by_obj.setdefault(fr.n_objects, []).append(ms)
    total = time.perf_counter() - t_all
    return {
        "frames": len(lat),
        "throughput_hz": len(lat) / total if total > 0 else 0.0,
        "latency_ms": latency_stats(lat),
        "latency_by_objects": {n: {"count": len(v), **latency_stats(v)} for n, v in sorted(by_obj.items())},
        "_lat": lat,
    }


# ------------------------------------------------------------------------------------------------ report


def _f(v, nd=1) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def markdown_report(result: dict[str, Any]) -> str:
    lines = []
    b = result["bag"]
    lines.append(
        f"### cleanpose-bench: {b['path']} ({b['storage']}, {b['frames']} frames, "
        f"objects/frame {b['objects_min']}-{b['objects_max']}) on {result['device']}"
    )
    lines.append("")
    lines.append(
        "| mode | iters | sent | recv | dropped | out Hz | p50 ms | p95 ms | p99 ms | max ms | "
        "jitter ms | CPU % mean/max | GPU % mean/max | GPU MB max |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for a in result["dds"]:
        mode = f"{a['rate_hz']:g} Hz" if a["mode"] == "rate" else "max (closed loop)"
        L = a["latency_ms"]
        lines.append(
            f"| {mode} | {a['iterations']} | {a['sent']} | {a['received']} | {a['dropped']} | "
            f"{_f(a['output_rate_hz'])} | {_f(L['p50'])} | {_f(L['p95'])} | {_f(L['p99'])} | "
            f"{_f(L['max'])} | "
            f"{_f(a['jitter_ms_mean'])} | {_f(a['cpu_percent_mean'], 0)}/{_f(a['cpu_percent_max'], 0)} | "
            f"{_f(a['gpu_util_mean'], 0)}/{_f(a['gpu_util_max'], 0)} | {_f(a['gpu_mem_mb_max'], 0)} |"
        )
    ip = result.get("in_process")
    if ip:
        L = ip["latency_ms"]
        lines.append(
            f"| in-process (no DDS) | {ip['iterations']} | {ip['frames']} | {ip['frames']} | 0 | "
            f"{_f(ip['throughput_hz'])} | {_f(L['p50'])} | {_f(L['p95'])} | {_f(L['p99'])} | "
            f"{_f(L['max'])} | "
            f"– | – | – | – |"
        )
    srows = [
        (
            f"{a['rate_hz']:g} Hz" if a["mode"] == "rate" else "max (closed loop)",
            a.get("stage_ms") or {},
            a["latency_ms"]["mean"],
        )
        for a in result["dds"]
    ]
    st_lines = stage_table(srows)
    if st_lines:
        lines.append("")
        lines.append(
            "Node stages (ms, means from the node's /diagnostics over its last 100 frames of each mode; "
            "receive = header stamp (send time) -> inputs synchronized, queue = -> worker starts; "
            "pipeline = select + build_inputs + forward + results):"
        )
        lines.append("")
        lines += st_lines
    ov = result.get("ros_overhead")
    if ov:
        lines.append("")
        lines.append(
            f"ROS/DDS overhead (closed-loop DDS p50 − in-process p50): {_f(ov['p50_ms'], 2)} ms "
            f"({_f(ov['ratio_p50'], 2)}× the in-process latency); throughput in-process / DDS: "
            f"{_f(ov['throughput_ratio'], 2)}×"
        )
    lines.append("")
    lines.append(f"Latency vs objects in frame ({result['latency_vs_objects_source']}):")
    lines.append("")
    lines.append("| objects | frames | DDS p50 ms | DDS p95 ms | in-process p50 ms |")
    lines.append("|---|---|---|---|---|")
    ipo = (ip or {}).get("latency_by_objects", {})
    for n, s in result["latency_vs_objects"].items():
        lines.append(
            f"| {n} | {s['count']} | {_f(s['p50'])} | {_f(s['p95'])} | {_f(ipo.get(n, {}).get('p50'))} |"
        )
    lines.append("")
    acc = result["accuracy"]
    if "skipped" in acc:
        lines.append(f"Accuracy: {acc['skipped']}")
    else:
        s = acc["per_object_success"]
        lines.append(
            f"Accuracy vs ground truth ({s['gt_objects']} GT objects, {s['found']} estimated): "
            f"5°2cm {_f(s['5deg2cm'])} %, 10°5cm {_f(s['10deg5cm'])} %, IoU50 {_f(s['iou50'])} % "
            f"(share of GT objects); median rot {_f(s['rot_deg_median'])}°, "
            f"trans {_f(s['trans_cm_median'])} cm, size {_f(s['size_cm_median'])} cm"
        )
        lines.append(format_map(acc.get("nocs_map")))
        if "tracking" in acc:
            from cleanpose_tools.track_metrics import format_tracking

            lines.append(format_tracking(acc["tracking"]))
    for note in result.get("notes", []):
        lines.append(f"Note: {note}")
    for err in result.get("errors", []):
        lines.append(f"FAILED {err['pass']}: {err['error']}")
    return "\n".join(lines)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items() if not str(k).startswith("_")}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o


def plot(
    result: dict[str, Any], dds_runs: list[list[RunResult]], in_proc_lat: list[float] | None, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for runs in dds_runs:
        lat = [(r.t_recv - r.t_send) * 1e3 for run in runs for r in run.records if r.t_recv is not None]
        if lat:
            label = f"{runs[0].rate_hz:g} Hz" if runs[0].mode == "rate" else "max"
            ax1.hist(lat, bins=30, alpha=0.5, label=f"DDS {label}")
    if in_proc_lat:
        ax1.hist(in_proc_lat, bins=30, alpha=0.5, label="in-process")
    ax1.set_xlabel("sent → received latency (ms)")
    ax1.set_ylabel("frames")
    ax1.set_title("latency histogram")
    ax1.legend()
    lv = result["latency_vs_objects"]
    if lv:
        ns = [int(n) for n in lv]
        ax2.errorbar(
            ns,
            [lv[n]["p50"] for n in lv],
            yerr=[[lv[n]["p50"] - lv[n]["min"] for n in lv], [lv[n]["p95"] - lv[n]["p50"] for n in lv]],
            fmt="o-",
            capsize=4,
            label="DDS p50 (min..p95)",
        )
    ipo = (result.get("in_process") or {}).get("latency_by_objects", {})
    if ipo:
        ax2.plot([int(n) for n in ipo], [ipo[n]["p50"] for n in ipo], "s--", label="in-process p50")
    ax2.set_xlabel("objects in frame")
    ax2.set_ylabel("latency (ms)")
    ax2.set_title("latency vs number of objects")
    ax2.legend()
    fig.suptitle(f"cleanpose-bench on {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main


def parse_rates(s: str) -> list[float | None]:
    out: list[float | None] = []
    for tok in s.split(","):
        tok = tok.strip().lower()
        if not tok:
            continue
        out.append(None if tok in ("max", "peak") else float(tok))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cleanpose-bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = TopicConfig()
    p.add_argument("bag", help="rosbag2 directory (MCAP or sqlite3) or a single .mcap / .db3 file")
    p.add_argument("--image-topic", default=d.image)
    p.add_argument("--depth-topic", default=d.depth)
    p.add_argument("--info-topic", default=d.info)
    p.add_argument("--detections-topic", default=d.detections)
    p.add_argument("--gt-topic", default=d.gt, help="ObjectPoseArray ground truth; '' to skip accuracy")
    p.add_argument("--rates", default="10,30,60,max", help="comma list of Hz and/or 'max' (closed loop)")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--max-frames", type=int, default=None, help="use only the first N frames of the bag")
    p.add_argument(
        "--objects-per-frame",
        type=int,
        default=None,
        metavar="N",
        help="keep only the first N detections of each frame (latency at N objects from one recording)",
    )
    p.add_argument("--warmup", type=int, default=3, help="frames sent closed-loop before measuring")
    p.add_argument(
        "--sample-period",
        type=float,
        default=0.2,
        help="s between CPU/GPU samples of the node (0: none; nvidia-smi calls can stall CUDA)",
    )
    p.add_argument(
        "--node-running",
        action="store_true",
        help="bench a node that is already running (its inputs subscribed to the bag topics)",
    )
    p.add_argument(
        "--node-name", default=NODE_NAME, help="node name (with namespace); outputs at <name>/poses"
    )
    p.add_argument("--node-pid", type=int, default=None, help="with --node-running: pid for CPU sampling")
    p.add_argument(
        "--checkpoint", default=None, help="default: models/demo, else an untrained demo-config model"
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra node parameter (repeatable)",
    )
    p.add_argument(
        "--in-process",
        dest="in_process",
        action="store_true",
        default=True,
        help="also run FramePipeline in-process on the same frames (ROS overhead as a difference)",
    )
    p.add_argument("--no-in-process", dest="in_process", action="store_false")
    p.add_argument("--answer-timeout", type=float, default=10.0, help="s to wait for one answer")
    p.add_argument("--start-timeout", type=float, default=120.0, help="s for the node to come up")
    p.add_argument("--out", default="outputs/bench")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefer_large_data_transport()
    topics = TopicConfig(
        args.image_topic, args.depth_topic, args.info_topic, args.detections_topic, args.gt_topic or None
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        bag = load_frames(args.bag, topics, max_frames=args.max_frames, max_objects=args.objects_per_frame)
    except (BagTopicError, FileNotFoundError) as e:
        print(f"cleanpose-bench: {e}", file=sys.stderr)
        return 2
    if not bag.frames:
        print(
            f"cleanpose-bench: no complete frames in {args.bag} ({bag.skipped} images without "
            "depth/detections "
            f"within the slop)",
            file=sys.stderr,
        )
        return 2
    rates = parse_rates(args.rates)
    device, reason = resolve_tool_device(args.device)
    result, dds_runs, ip_lat = bench(args, bag, topics, rates, out, device)
    if reason:
        result["notes"].insert(0, reason)
    errors = result["errors"]
    # The measurements are written before anything else can fail: the plot and the table come after.
    (out / "bench.json").write_text(json.dumps(_jsonable(result), indent=2))
    written = [out / "bench.json"]
    try:
        plot(result, dds_runs, ip_lat, out / "bench.png")
        written.append(out / "bench.png")
    except Exception as e:  # a plotting problem must not hide the numbers
        errors.append(_pass_error("plot", e))
        (out / "bench.json").write_text(json.dumps(_jsonable(result), indent=2))
    print(markdown_report(result))
    print(f"\nwrote {' and '.join(str(p) for p in written)}")
    if errors:
        for err in errors:
            print(f"cleanpose-bench: FAILED {err['pass']}: {err['error']}", file=sys.stderr)
        print(
            f"cleanpose-bench: {len(errors)} pass(es) failed; {out / 'bench.json'} holds the passes that "
            "finished and an 'errors' entry",
            file=sys.stderr,
        )
        return 1
    return 0


def resolve_tool_device(requested: str) -> tuple[str, str | None]:
    """The device the node and the in-process pass run on, and why it differs from ``requested`` (None
    when it does not). A machine without CUDA runs the benchmark on the CPU rather than failing after the
    DDS passes, as the node itself does; the reason is printed here and kept in bench.json's notes."""
    from cleanpose_model.device import resolve_device

    choice, reason = resolve_device(requested, fallback=True)
    if reason:
        print(f"cleanpose-bench: {reason}", file=sys.stderr)
    return str(choice), reason


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        try:
            import torch

            return f"{torch.cuda.get_device_name(torch.device(device))} ({device})"
        except Exception:
            return device
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def busy_machine_note(notes: list[str]) -> float | None:
    """The 1-minute load average before the benchmark starts; a note when other work already holds half of
    the cores. On a busy CPU-only machine torch's threads wait on each other: the in-process pass, which runs
    torch's default thread count, measured 2-5 s per frame on 2 shared cores where 1 thread took 0.7 s."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cores = os.cpu_count() or 1
    if load > cores / 2:
        notes.append(
            f"the machine was busy before the benchmark started (load average {load:.1f} on {cores} cores): "
            "the timings include that contention"
        )
    return load


def _pass_error(name: str, exc: BaseException) -> dict[str, str]:
    if isinstance(exc, KeyboardInterrupt):
        return {"pass": name, "error": "interrupted (Ctrl-C)"}
    return {"pass": name, "error": f"{type(exc).__name__}: {exc}"}


def _mode_label(rate: float | None) -> str:
    return f"{rate:g} Hz" if rate is not None else "max (closed loop)"


def bench(args, bag: BagFrames, topics: TopicConfig, rates, out: Path, device: str | None = None):
    """Runs the DDS passes (one per rate) and the in-process pass; returns (result, DDS runs per rate,
    in-process latencies).

    A pass that fails ends up in ``result["errors"]`` as {"pass", "error"}, and everything measured before it
    stays in the result: iterations that finished count for their rate. A failed DDS pass ends the DDS passes
    (the node or the transport is what failed, so the next rate would wait on it too); the in-process pass
    does not depend on them and still runs. Ctrl-C ends the run the same way and skips what is left.
    """
    device = device or args.device
    notes: list[str] = []
    load_start = busy_machine_note(notes)
    errors: list[dict[str, str]] = []
    checkpoint = args.checkpoint
    trained = True
    if (not args.node_running or args.in_process) and checkpoint is None:
        ckpt, trained = default_checkpoint()
        checkpoint = str(ckpt)
        if not trained:
            notes.append(
                "no trained demo checkpoint found: an UNTRAINED (seeded random) model was used, so "
                "accuracy is meaningless; timings are representative of the demo config"
            )
    node = None
    pid = args.node_pid
    if not args.node_running:
        extra = dict(kv.split(":=", 1) for kv in args.param)
        node = NodeProcess(
            node_command(checkpoint, device, topics, args.node_name.strip("/"), extra), out / "node.log"
        )
        pid = node.pid
    rep = None
    dds_runs: list[list[RunResult]] = []
    stage_ms: list[dict[str, float]] = []
    diagnostics: dict[str, Any] = {}
    runs: list[RunResult] = []
    interrupted = False
    current = "node start-up"
    try:
        rep = Replayer(bag, topics, args.node_name)
        try:
            rep.wait_for_node(args.start_timeout)
        except TimeoutError as e:
            if node and not node.alive():
                raise RuntimeError(
                    f"the node exited (code {node.proc.returncode}); its log:\n{node.log_tail()}"
                ) from e
            tail = node.log_tail() if node else "(not started here)"
            raise TimeoutError(f"{e}\nnode log tail:\n{tail}") from e
        frames = bag.frames
        current = "warm-up"
        # Model load happens before the node subscribes, but the first forward passes still pay lazy
        # initialisation (allocator, kernels): keep them out of the numbers.
        for k in range(min(args.warmup, len(frames))):
            rec = rep.send(frames[k])
            rep.wait_answer(rec, max(args.answer_timeout, 60.0))
        # Frames, bag reader and rclpy live for the whole run: keep full collections short (see node).
        gc.collect()
        gc.freeze()
        sampler = ResourceSampler(pid, period_s=args.sample_period)
        for rate in rates:
            current = f"DDS {_mode_label(rate)}"
            runs = []
            for it in range(args.iterations):
                sampler.start()
                try:
                    run = rep.run(frames, rate_hz=rate, iteration=it, answer_timeout_s=args.answer_timeout)
                finally:
                    resources = sampler.stop()
                run.resources = resources
                runs.append(run)
                time.sleep(0.5)  # let a late answer of this run land before the next starts
            dds_runs.append(runs)
            # the node's stage means over its last 100 frames: this rate's (when it sent that many)
            stage_ms.append(wait_stage_means(rep, args.node_name))
        diagnostics = dict(rep.diagnostics)
    except (Exception, KeyboardInterrupt) as e:
        errors.append(_pass_error(current, e))
        interrupted = isinstance(e, KeyboardInterrupt)
        if current.startswith("DDS") and runs:
            dds_runs.append(runs)  # the iterations of the failed rate that finished
            stage_ms.append({})
        if rep is not None:
            diagnostics = dict(rep.diagnostics)
    finally:
        if rep is not None:
            rep.close()
        if node is not None:
            code = node.stop()
            if code not in (0, None, -2, 130):
                notes.append(f"node exited with code {code} (log: {node.log_path})")
    aggs = [aggregate(r) for r in dds_runs]
    for a, st in zip(aggs, stage_ms):
        a["stage_ms"] = st
    closed = [r for r in dds_runs if r[0].mode == "max"]
    src_runs = closed[0] if closed else [run for runs in dds_runs for run in runs]
    lvo = latency_by_objects([rec for run in src_runs for rec in run.records])
    result: dict[str, Any] = {
        "tool": "cleanpose-bench",
        "device": device_description(device),
        "device_requested": args.device,
        "checkpoint": checkpoint,
        "trained_model": trained,
        "node_running": args.node_running,
        "bag": {
            "path": str(bag.path),
            "storage": bag.storage,
            "frames": len(bag.frames),
            "skipped": bag.skipped,
            "objects_min": min(f.n_objects for f in bag.frames),
            "objects_max": max(f.n_objects for f in bag.frames),
            "topics": bag.msgtypes,
            "has_gt": bag.has_gt,
        },
        "dds": aggs,
        "latency_vs_objects_source": "closed-loop DDS runs" if closed else "all DDS runs",
        "latency_vs_objects": lvo,
        "diagnostics": diagnostics,
        "notes": notes,
        "errors": errors,
        "host": {"cpu_count": os.cpu_count(), "load_average_start": load_start},
    }
    if dds_runs:
        # accuracy from the first closed-loop (else first) iteration that has answers
        acc_run = closed[0][0] if closed else dds_runs[0][0]
        result["accuracy"] = accuracy_section(bag, topics, acc_run)
    else:
        result["accuracy"] = {"skipped": "no DDS pass finished, accuracy skipped"}
    ip_lat = None
    if args.in_process and not interrupted:
        try:
            ip_lat = _in_process_pass(args, bag, checkpoint, device, closed, result)
        except (Exception, KeyboardInterrupt) as e:
            errors.append(_pass_error("in-process", e))
    return result, dds_runs, ip_lat


def _in_process_pass(args, bag: BagFrames, checkpoint: str, device: str, closed, result: dict) -> list[float]:
    """The same frames through FramePipeline in this process: result["in_process"] and, against the first
    closed-loop DDS rate, result["ros_overhead"]; returns the per-frame latencies (for the plot)."""
    pipe = make_pipeline(checkpoint, device)
    for fr in bag.frames[: min(args.warmup, len(bag.frames))]:
        run_in_process(bag, [fr], pipe, 1)
    ip = run_in_process(bag, bag.frames, pipe, args.iterations)
    ip_lat = ip.pop("_lat")
    ip["iterations"] = args.iterations
    result["in_process"] = ip
    if closed:
        c = aggregate(closed[0])
        d50, i50 = c["latency_ms"]["p50"], ip["latency_ms"]["p50"]
        if d50 is not None and i50:
            result["ros_overhead"] = {
                "p50_ms": d50 - i50,
                "ratio_p50": d50 / i50,
                "throughput_ratio": ip["throughput_hz"] / c["output_rate_hz"]
                if c["output_rate_hz"]
                else None,
            }
    return ip_lat


if __name__ == "__main__":
    sys.exit(main())
