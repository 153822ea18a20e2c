"""The ``dds`` part of the ``node`` suite: publish -> node -> ``~/poses`` received over DDS, the node in its
own process (started as ``python -m benchmarks.node_dds --serve KIND``), full frames (rgb8 + 16UC1 depth +
CameraInfo + InstanceSegmentation with masks) replayed by ``cleanpose_tools.replay.Replayer``.

Node kinds: ``stub`` (the real node, its model forward replaced by ``benchmarks.node.StubEstimator``),
``model`` (the real node with its checkpoint on --device) and ``echo`` (a bare rclpy node answering each
detections message with an empty ObjectPoseArray of the same stamp: DDS + rclpy take of the same messages,
no processing). Per kind and rate: sent / received / dropped, latency percentiles (send -> poses received)
and the node's stage means from its /diagnostics ("receive" = send -> synchronised set complete in the
node, "queue" = set complete -> worker starts it, then the frame's stages).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.fixtures import REPO
from benchmarks.node_inputs import NODE_NAME, StubEstimator, frame_messages, make_frames, node_parameters

TOPICS = {
    "image": "/bench_dds/image",
    "depth": "/bench_dds/depth",
    "info": "/bench_dds/camera_info",
    "detections": "/bench_dds/detections",
}
REMAP = {"image": "image", "depth": "depth", "info": "camera_info", "detections": "detections"}
MSGTYPES = {
    "image": "sensor_msgs/msg/Image",
    "depth": "sensor_msgs/msg/Image",
    "info": "sensor_msgs/msg/CameraInfo",
    "detections": "cleanpose_msgs/msg/InstanceSegmentation",
}
COLUMNS = [
    "objects",
    "node",
    "rate",
    "sent",
    "received",
    "dropped",
    "out_hz",
    "median_ms",
    "p95_ms",
    "p99_ms",
]
COLUMNS += ["max_ms", "receive", "queue", "forward", "outputs"]


# ------------------------------------------------------------------------------------------------ node side


def serve(kind: str, args) -> int:
    """Runs in the node's subprocess until SIGINT/SIGTERM."""
    import rclpy

    remaps = [x for role, topic in TOPICS.items() for x in ("-r", f"{REMAP[role]}:={topic}")]
    rclpy.init(args=["--ros-args", *remaps])
    if kind == "echo":
        return _serve_echo()
    from rclpy.lifecycle import TransitionCallbackReturn

    from cleanpose_ros.node import CleanPoseNode, spin

    params = node_parameters(args, input_reliability="reliable", diagnostics_period=0.5)
    node = CleanPoseNode(NODE_NAME, parameter_overrides=params)
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return 1
    if kind == "stub":
        node.pipeline.estimator = StubEstimator(node.pipeline.estimator)
    node.trigger_activate()
    return spin(node)


def _serve_echo() -> int:
    import rclpy
    from cleanpose_msgs.msg import InstanceSegmentation, ObjectPoseArray
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    node = rclpy.create_node(NODE_NAME)
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(ObjectPoseArray, "~/poses", QoSProfile(depth=10))
    keep = {}
    # Subscribed like the node (same messages taken and deserialised), answered on detections only.
    for t, name in ((Image, "image"), (Image, "depth"), (CameraInfo, "camera_info")):
        node.create_subscription(t, name, lambda m, n=name: keep.__setitem__(n, m), qos)
    node.create_subscription(
        InstanceSegmentation, "detections", lambda m: pub.publish(ObjectPoseArray(header=m.header)), qos
    )
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException):
        ex.spin()
    return 0


# ------------------------------------------------------------------------------------------------ bench side


def bag_of(msgs):
    """BagFrames of CDR bytes, as the replayer sends recorded frames."""
    from rclpy.serialization import serialize_message

    from cleanpose_tools.replay import BagFrames, Frame

    frames = []
    for i, (img, dep, det, info) in enumerate(msgs):
        raw = {"image": img, "depth": dep, "detections": det, "info": info}
        st = img.header.stamp
        stamp = st.sec * 10**9 + st.nanosec
        frames.append(Frame(i, stamp, {k: serialize_message(m) for k, m in raw.items()}, len(det.detections)))
    return BagFrames(Path("<generated>"), frames, dict(MSGTYPES), {}, False, 0, "memory")


def start_node(kind: str, args, log: Path):
    from cleanpose_tools.bench import NodeProcess

    cmd = [sys.executable, "-m", "benchmarks.node_dds", "--serve", kind, "--device", args.device]
    if args.checkpoint:
        cmd += ["--checkpoint", str(args.checkpoint)]
    return NodeProcess(cmd, log, cwd=REPO)


def stage_means(diag: dict) -> dict[str, float]:
    """stage_ms_* of the node's diagnostics status (name contains the node name) -> {stage: ms}."""
    for name, values in diag.items():
        if NODE_NAME in name:
            return {k[len("stage_ms_") :]: float(v) for k, v in values.items() if k.startswith("stage_ms_")}
    return {}


def measure(kind: str, args, bag, log: Path) -> list[dict]:
    from cleanpose_tools.replay import Replayer

    proc = start_node(kind, args, log)
    rep = None
    rows = []
    try:
        rep = Replayer(bag, None, NODE_NAME, publish_topics=TOPICS)
        rep.wait_for_node(args.start_timeout)
        for k in range(args.warmup):
            rep.wait_answer(rep.send(bag.frames[k % len(bag.frames)]), 60.0)
        frames = [bag.frames[i % len(bag.frames)] for i in range(args.iterations)]
        for rate in args.rate_list:
            rep.diagnostics.clear()
            run = rep.run(frames, rate_hz=rate, answer_timeout_s=10.0)
            time.sleep(1.2)  # one more diagnostics message, covering this run's last frames
            lat = [(r.t_recv - r.t_send) * 1e3 for r in run.records if r.t_recv is not None]
            span = max((r.t_recv for r in run.records if r.t_recv), default=run.t_start) - run.t_start
            row = {
                "node": kind,
                "rate": "max" if rate is None else f"{rate:g} Hz",
                "sent": run.sent,
                "received": run.received,
                "dropped": run.dropped,
                "out_hz": len(lat) / span if span > 0 else 0.0,
            }
            row.update(harness.summarize(lat) if lat else {"n": 0})
            row.update(stage_means(rep.diagnostics))
            rows.append(row)
            print(f"[node dds] {kind} {row['rate']}: {row['received']}/{row['sent']} received", flush=True)
    except Exception:
        print(f"[node dds] {kind} node log:\n{proc.log_tail()}", flush=True)
        raise
    finally:
        if rep is not None:
            rep.close()
        proc.stop()
    return rows


def dds_part(args, report: harness.Report, objects: int) -> None:
    from cleanpose_tools.replay import prefer_large_data_transport

    prefer_large_data_transport()  # this process and the nodes it starts: the package's Fast DDS profile
    report.data["fastdds_profile"] = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
    args.rate_list = [None if t.strip() in ("max", "peak") else float(t) for t in args.rates.split(",") if t]
    frames = make_frames(args, objects)
    h, w = frames[0]["rgb"].shape[:2]
    bag = bag_of(frame_messages(frames))
    for kind in args.nodes:
        for row in measure(kind, args, bag, Path(args.out) / f"node_{kind}.log"):
            report.add(part="dds", objects=objects, image=f"{w}x{h}", **row)


def main(argv: list[str] | None = None) -> int:
    """The node process of one measured kind (started by ``measure``)."""
    ap = argparse.ArgumentParser(description="node process of the node suite's dds part")
    ap.add_argument("--serve", required=True, choices=("echo", "stub", "model"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpoint", default=None)
    args = ap.parse_args(argv)
    from cleanpose_tools.replay import prefer_large_data_transport

    prefer_large_data_transport()
    return serve(args.serve, args)


if __name__ == "__main__":
    raise SystemExit(main())
