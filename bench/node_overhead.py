"""Where the node's time per frame goes outside the model (issue 8, target 3): the real `CleanPoseNode`
in this process, configured and active, its frame path (`_process`: conversions, mask parsing, pipeline,
output messages, publication, statistics) called directly on rclpy messages of rendered 640x480 frames with
6 objects, per-stage times from the node's own stage clock (the same numbers its diagnostics average).

What is not in the node's worker thread is timed on its own: "deserialize" is the executor's take of the
three input messages from CDR (rclpy.serialization), measured on the same frames.

The model can be the demo checkpoint (`--estimator demo`: its forward shows as "forward") or a stub that
returns plausible poses at once (`--estimator stub`, default), so the table isolates the CPU-side Python.
Scenarios: "none" has nobody subscribed to the node's outputs, "all" has a subscriber on every output (same
process, not spinning: the publisher still serialises and hands over each message).

    python bench/node_overhead.py --out outputs/node_overhead            # 60 frames per scenario
    python bench/node_overhead.py --quick --out /tmp/no                  # CI: 160x120, 6 frames
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NODE_NAME = "cleanpose_overhead_node"
# Stage order of the table: the node's StageClock names (node.py) and the pipeline's (pipeline.py).
NODE_STAGES = ("convert", "detections", "pipeline", "outputs", "poses", "detections_3d", "markers", "tf")
NODE_STAGES += ("debug_image", "stats")
PIPELINE_STAGES = ("select", "build_inputs", "forward", "results")
MODEL_STAGES = ("build_inputs", "forward")  # cleanpose_model's share (preprocess + network)


# ------------------------------------------------------------------------------------------------ frames


def render_frames(n: int, objects: int, width: int, height: int, seed: int = 0) -> list:
    """Rendered synthetic frames (training/synthetic) with exactly `objects` visible instances: scenes are
    drawn with a few more objects than needed, extra ones are dropped and, if a view shows too few, visible
    ones are repeated under new ids."""
    from cleanpose_model.categories import NOCS
    from cleanpose_training.synthetic.__main__ import bag_frames, scene_rngs
    from cleanpose_training.synthetic.scene import Camera

    rng = scene_rngs(seed, "bag", 1)[0]
    cats = NOCS.names
    cam = Camera.real275(width, height)
    frames = list(bag_frames(rng, n, (objects + 1, objects + 2), cats, cam, 30.0, shadows=False))
    out = []
    for fr in frames:
        k = len(fr.category_ids)
        if k == 0:
            raise RuntimeError("a rendered frame shows no object")
        sel = [i % k for i in range(objects)]
        masks = fr.masks[sel]
        cats_ = fr.category_ids[sel]
        ids = [int(fr.instance_ids[i]) + 100 * (r // k) for r, i in enumerate(sel)]
        out.append((fr.rgb, fr.depth_mm, fr.K, masks, cats_, ids))
    return out


def load_or_render(path: str, n: int, objects: int, width: int, height: int) -> list:
    """`path` names an .npz of frames: loaded when it exists (machines without the renderer's Open3D),
    else rendered and written there. Empty: rendered."""
    if path and Path(path).exists():
        z = np.load(path)
        return [
            (z["rgb"][i], z["depth_mm"][i], z["K"], z["masks"][i], z["cats"][i], z["ids"][i].tolist())
            for i in range(len(z["rgb"]))
        ]
    frames = render_frames(n, objects, width, height)
    if path:
        np.savez_compressed(
            path,
            rgb=np.stack([f[0] for f in frames]),
            depth_mm=np.stack([f[1] for f in frames]),
            K=np.asarray(frames[0][2]),
            masks=np.stack([f[3] for f in frames]),
            cats=np.stack([f[4] for f in frames]),
            ids=np.array([f[5] for f in frames]),
        )
    return frames


def frame_messages(frames, stamp0: int = 1_700_000_000_000_000_000):
    """(image, depth, detections, info) rclpy messages per frame, as the node's callbacks receive them."""
    from builtin_interfaces.msg import Time
    from cleanpose_msgs.msg import InstanceSegmentation
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection2D, ObjectHypothesisWithPose

    from cleanpose_model.config import NOCS_CATEGORIES
    from cleanpose_ros.conversions import numpy_to_image

    msgs = []
    for i, (rgb, depth_mm, K, masks, cats, ids) in enumerate(frames):
        ns = stamp0 + i * 33_333_333
        hdr = Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="camera_color_optical_frame")
        img = numpy_to_image(rgb, "rgb8", hdr)
        dep = numpy_to_image(depth_mm, "16UC1", hdr)
        det = InstanceSegmentation(header=hdr, format=InstanceSegmentation.FORMAT_MASKS)
        for j, c in enumerate(cats):
            d = Detection2D(header=hdr, id=str(ids[j]))
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = NOCS_CATEGORIES[int(c)]
            hyp.hypothesis.score = 0.9
            d.results.append(hyp)
            det.detections.append(d)
            det.masks.append(numpy_to_image(masks[j].astype(np.uint8) * 255, "mono8", hdr))
        info = CameraInfo(header=hdr, width=rgb.shape[1], height=rgb.shape[0], distortion_model="plumb_bob")
        info.d = [0.0] * 5
        info.k = [float(v) for v in np.asarray(K, np.float64).reshape(-1)]
        msgs.append((img, dep, det, info))
    return msgs


# ------------------------------------------------------------------------------------------------ stub model


class StubEstimator:
    """The real estimator's interface without its forward: rotation identity, translation the mean of the
    object's points, size 10 cm (poses land on the objects, so the overlay draws what it would draw)."""

    def __init__(self, real):
        self.categories = real.categories
        self.device = real.device
        self.dtype = real.dtype

    def predict(self, batch):
        import torch

        from cleanpose_model.types import PoseResult

        b, dev = batch.pts.shape[0], batch.pts.device
        return PoseResult(
            rotation=torch.eye(3, device=dev).expand(b, 3, 3).contiguous(),
            translation=batch.pts.mean(1),
            size=torch.full((b, 3), 0.1, device=dev),
            keypoints=torch.zeros(b, 96, 3, device=dev),
        )


# ------------------------------------------------------------------------------------------------ runs


def stats(v) -> dict:
    a = np.asarray(v, np.float64)
    if a.size == 0:
        return {"n": 0, "p50": None, "p95": None, "mean": None, "max": None}
    p50, p95 = np.percentile(a, [50, 95])
    return {
        "n": int(a.size),
        "p50": float(p50),
        "p95": float(p95),
        "mean": float(a.mean()),
        "max": float(a.max()),
    }


def time_deserialize(msgs, n: int) -> list[float]:
    from rclpy.serialization import deserialize_message, serialize_message

    raw = [[(serialize_message(m), type(m)) for m in fr[:3]] for fr in msgs]
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        for data, t in raw[i % len(raw)]:
            deserialize_message(data, t)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def output_subscriber(context, node_name: str):
    """A node subscribed to every output of `node_name` (never spun: the DDS reader keeps the newest)."""
    import rclpy
    from cleanpose_msgs.msg import ObjectPoseArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray
    from visualization_msgs.msg import MarkerArray

    sub = rclpy.create_node("cleanpose_overhead_listener", context=context)
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    for t, topic in (
        (ObjectPoseArray, "poses"),
        (Detection3DArray, "detections_3d"),
        (MarkerArray, "markers"),
        (Image, "debug_image"),
    ):
        sub.create_subscription(t, f"/{node_name}/{topic}", lambda m: None, qos)
    sub.create_subscription(TFMessage, "/tf", lambda m: None, qos)
    return sub


def wait_matched(node, want: bool, timeout: float = 20.0) -> dict[str, int]:
    """Wait until every output publisher of `node` has (want) or has no (not want) subscriber."""
    deadline = time.monotonic() + timeout
    while True:
        counts = {k: p.get_subscription_count() for k, p in node._pubs.items()}
        if all((c > 0) == want for c in counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def run_scenario(node, msgs, n: int, warmup: int) -> tuple[dict[str, list[float]], list[float]]:
    """The node's frame path on `n` frames (after `warmup`), cycling through `msgs`."""
    per_stage: dict[str, list[float]] = {}
    total = []
    for i in range(warmup + n):
        img, dep, det, info = msgs[i % len(msgs)]
        node._info = info
        node.last_stage_ms = {}
        t0 = time.perf_counter()
        node._process(img, dep, det, time.monotonic())
        ms = (time.perf_counter() - t0) * 1e3
        if not node.last_stage_ms:
            raise RuntimeError(f"frame {i} produced no outputs (see the node's log)")
        if i < warmup:
            continue
        total.append(ms)
        for k, v in node.last_stage_ms.items():
            per_stage.setdefault(k, []).append(v)
    return per_stage, total


def make_node(context, checkpoint: str, debug_image: bool, device: str = "cpu"):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from cleanpose_ros.node import CleanPoseNode

    overrides = [
        Parameter("device", value=device),
        Parameter("warmup", value=device.startswith("cuda")),  # CUDA: graphs captured before timing
        Parameter("autostart", value=False),
        Parameter("publish_debug_image", value=debug_image),
        Parameter("diagnostics_period", value=60.0),
    ]
    if checkpoint:
        overrides.append(Parameter("checkpoint", value=checkpoint))
    node = CleanPoseNode(NODE_NAME, context=context, parameter_overrides=overrides)
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        raise RuntimeError("the node failed to configure (see its log)")
    node.trigger_activate()
    return node


# ------------------------------------------------------------------------------------------------ report


def _f(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def table(result: dict) -> str:
    scen = result["scenarios"]
    names = list(scen)
    head = "| stage | " + " | ".join(f"{s} p50 | {s} p95" for s in names) + " |"
    lines = [head, "|---|" + "---|---|" * len(names)]

    def row(label, key, src="stages"):
        cells = []
        for s in names:
            st = scen[s][src].get(key) if src == "stages" else scen[s][key]
            cells += [_f(st["p50"]) if st else "–", _f(st["p95"]) if st else "–"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("deserialize (executor thread)", "deserialize_ms", src="top")
    for k in NODE_STAGES:
        if k == "pipeline":
            row("pipeline (total)", k)
            for p in PIPELINE_STAGES:
                row(f"  pipeline.{p}", p)
        else:
            row(k, k)
    row("**_process total**", "total_ms", src="top")
    row("**non-model (total − build_inputs − forward)**", "non_model_ms", src="top")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60, help="timed frames per scenario")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--distinct", type=int, default=4, help="rendered frames to cycle through")
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--estimator", choices=("stub", "demo"), default="stub")
    ap.add_argument("--checkpoint", default="", help="default: the shipped demo checkpoint")
    ap.add_argument("--device", default="cpu", help="the node's device parameter (cpu, cuda, cuda:N)")
    ap.add_argument(
        "--scenarios", default="none,all", help="comma list of: none (no subscribers), all (every output)"
    )
    ap.add_argument(
        "--no-debug-image", dest="debug_image", action="store_false", help="publish_debug_image off"
    )
    ap.add_argument("--quick", action="store_true", help="CI mode: 160x120, 6 frames, 1 warm-up, 2 distinct")
    ap.add_argument(
        "--frames-file", default="", help=".npz of frames: read if it exists, else rendered and written there"
    )
    ap.add_argument("--out", default="", help="write node_overhead.json here")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.warmup, args.distinct, args.width, args.height = 6, 1, 2, 160, 120
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scenarios or any(s not in ("none", "all") for s in scenarios):
        ap.error(f"--scenarios: 'none' and/or 'all', got {args.scenarios!r}")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    import rclpy
    import torch
    from rclpy.context import Context

    t0 = time.perf_counter()
    frames = load_or_render(args.frames_file, args.distinct, args.objects, args.width, args.height)
    msgs = frame_messages(frames)
    h, w = frames[0][0].shape[:2]
    result_shape = ([h, w], len(frames[0][4]))
    print(f"[node_overhead] {len(frames)} frames ready in {time.perf_counter() - t0:.1f} s", flush=True)

    ctx = Context()
    rclpy.init(context=ctx)
    node = sub = None
    result = {
        "image": result_shape[0],
        "objects": result_shape[1],
        "estimator": args.estimator,
        "device": args.device,
        "frames": args.frames,
        "warmup": args.warmup,
        "publish_debug_image": args.debug_image,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
        "scenarios": {},
    }
    try:
        node = make_node(ctx, args.checkpoint, args.debug_image, args.device)
        if args.estimator == "stub":
            node.pipeline.estimator = StubEstimator(node.pipeline.estimator)
        deser = time_deserialize(msgs, max(args.frames, 3))
        for scen in scenarios:
            if scen == "all" and sub is None:
                sub = output_subscriber(ctx, NODE_NAME)
            if scen == "none" and sub is not None:
                sub.destroy_node()
                sub = None
            matched = wait_matched(node, scen == "all")
            per_stage, total = run_scenario(node, msgs, args.frames, args.warmup)
            model = np.sum([per_stage.get(k, [0.0] * len(total)) for k in MODEL_STAGES], axis=0)
            result["scenarios"][scen] = {
                "subscriptions": matched,
                "deserialize_ms": stats(deser),
                "total_ms": stats(total),
                "non_model_ms": stats(np.asarray(total) - model),
                "stages": {k: stats(v) for k, v in per_stage.items()},
            }
        result["diagnostics"] = {k: v for k, v in node.stats.snapshot().items() if k.startswith("stage_ms_")}
    finally:
        if sub is not None:
            sub.destroy_node()
        if node is not None:
            node.trigger_deactivate()
            node._teardown()
            node.destroy_node()
        ctx.try_shutdown()

    print(
        f"\n### node frame path, {result['image'][1]}x{result['image'][0]}, {result['objects']} objects, "
        f"estimator {args.estimator} on {args.device}, {args.frames} frames "
        "(ms; scenario = subscribers on the outputs)\n"
    )
    print(table(result))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "node_overhead.json").write_text(json.dumps(result, indent=2))
        print(f"\nwrote {out / 'node_overhead.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
