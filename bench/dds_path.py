"""The node end to end over DDS on one host (issue 8, target 3): publish -> node -> ~/poses received, with
full-size frames (640x480 rgb8 + 16UC1 depth + CameraInfo + InstanceSegmentation with 6 masks), the node in
its own process, and where the time goes from the node's own /diagnostics stage means.

Node kinds (--nodes, comma list):
- "stub": the real `CleanPoseNode` (same executor and threads as `cleanpose_node`) with the model forward
  replaced by bench/node_overhead.py's stub (poses at once), so what is left is DDS, rclpy, the input
  synchronizer, the worker hand-off and the node's Python;
- "demo": the real node with the demo checkpoint on --device;
- "echo": a bare rclpy node that answers each detections message with an empty ObjectPoseArray of the same
  stamp: the floor of the transport (DDS + rclpy take/deserialize of the same messages, no processing).

Per node kind and rate: sent / received / dropped and latency percentiles (send -> poses received), plus
the node's stage means (ms): "receive" = header stamp (the send time) -> synchronized set complete in the
node, "queue" = set complete -> worker starts it, then the frame's stages; "after" = latency mean minus all
of them (output publication -> the bench's callback).

    python bench/dds_path.py --out outputs/dds_path                       # stub + echo, 30 Hz and max
    python bench/dds_path.py --nodes demo --device cuda --rates 30,max    # the real model on a GPU
    python bench/dds_path.py --quick                                      # CI: 160x120, 20 frames
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

TOPICS = {"image": "/dds_path/image", "depth": "/dds_path/depth", "info": "/dds_path/camera_info"}
TOPICS["detections"] = "/dds_path/detections"
REMAP = {"image": "image", "depth": "depth", "info": "camera_info", "detections": "detections"}
NODE_NAME = "cleanpose_dds_path"
MSGTYPES = {
    "image": "sensor_msgs/msg/Image",
    "depth": "sensor_msgs/msg/Image",
    "info": "sensor_msgs/msg/CameraInfo",
    "detections": "cleanpose_msgs/msg/InstanceSegmentation",
}
PRE_STAGES = ("receive", "queue")
FRAME_STAGES = ("convert", "detections", "select", "build_inputs", "forward", "results", "pipeline")
FRAME_STAGES += ("outputs", "poses", "detections_3d", "markers", "tf", "debug_image", "stats")


# ------------------------------------------------------------------------------------------------ node side


def serve(kind: str, device: str, checkpoint: str) -> int:
    """Runs in the node's subprocess until SIGINT/SIGTERM."""
    import rclpy

    rclpy.init(args=["--ros-args", *_remap_args()])
    env = os.environ
    print(
        f"[dds_path] node {kind}: FASTDDS_DEFAULT_PROFILES_FILE={env.get('FASTDDS_DEFAULT_PROFILES_FILE')} "
        f"FASTDDS_BUILTIN_TRANSPORTS={env.get('FASTDDS_BUILTIN_TRANSPORTS')}",
        flush=True,
    )
    if kind == "echo":
        return _serve_echo()
    from rclpy.parameter import Parameter

    from cleanpose_ros.node import CleanPoseNode, spin

    overrides = [
        Parameter("device", value=device),
        Parameter("autostart", value=False),
        Parameter("input_reliability", value="reliable"),
        Parameter("diagnostics_period", value=0.5),
        Parameter("warmup", value=device.startswith("cuda")),
    ]
    if checkpoint:
        overrides.append(Parameter("checkpoint", value=checkpoint))
    node = CleanPoseNode(NODE_NAME, parameter_overrides=overrides)
    from rclpy.lifecycle import TransitionCallbackReturn

    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return 1
    if kind == "stub":
        from node_overhead import StubEstimator

        node.pipeline.estimator = StubEstimator(node.pipeline.estimator)
    node.trigger_activate()
    return spin(node)


def _remap_args() -> list[str]:
    out = []
    for role, topic in TOPICS.items():
        out += ["-r", f"{REMAP[role]}:={topic}"]
    return out


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


def make_frames(frames_file: str, distinct: int, objects: int, width: int, height: int):
    """BagFrames of CDR bytes, as cleanpose-bench replays them."""
    from node_overhead import frame_messages, load_or_render
    from rclpy.serialization import serialize_message

    from cleanpose_tools.replay import BagFrames, Frame

    msgs = frame_messages(load_or_render(frames_file, distinct, objects, width, height))
    frames = []
    for i, (img, dep, det, info) in enumerate(msgs):
        raw = {"image": img, "depth": dep, "detections": det, "info": info}
        st = img.header.stamp
        frames.append(
            Frame(
                i,
                st.sec * 10**9 + st.nanosec,
                {k: serialize_message(m) for k, m in raw.items()},
                len(det.detections),
            )
        )
    return BagFrames(Path("<generated>"), frames, dict(MSGTYPES), {}, False, 0, "memory")


def start_node(kind: str, args, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--device", args.device]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _lat_stats(lat: list[float]) -> dict:
    a = np.asarray(lat, np.float64)
    if not a.size:
        return {k: None for k in ("mean", "p50", "p95", "p99", "max")}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": a.max()}


def stage_means(diag: dict) -> dict[str, float]:
    """stage_ms_* of the node's diagnostics status (name contains the node name) -> {stage: ms}."""
    for name, values in diag.items():
        if NODE_NAME in name:
            return {k[len("stage_ms_") :]: float(v) for k, v in values.items() if k.startswith("stage_ms_")}
    return {}


def measure(kind: str, args, bag, out: Path) -> list[dict]:
    from cleanpose_tools.replay import Replayer

    proc = start_node(kind, args, out / f"node_{kind}.log")
    rep = None
    rows = []
    try:
        rep = Replayer(bag, None, NODE_NAME, publish_topics=TOPICS)
        rep.wait_for_node(args.start_timeout)
        for k in range(args.warmup):
            rep.wait_answer(rep.send(bag.frames[k % len(bag.frames)]), 60.0)
        frames = [bag.frames[i % len(bag.frames)] for i in range(args.frames)]
        for rate in args.rates:
            rep.diagnostics.clear()
            run = rep.run(frames, rate_hz=rate, answer_timeout_s=10.0)
            time.sleep(1.2)  # one more diagnostics message, covering this run's last frames
            lat = [(r.t_recv - r.t_send) * 1e3 for r in run.records if r.t_recv is not None]
            span = max((r.t_recv for r in run.records if r.t_recv), default=run.t_start) - run.t_start
            rows.append(
                {
                    "node": kind,
                    "rate": "max" if rate is None else f"{rate:g} Hz",
                    "sent": run.sent,
                    "received": run.received,
                    "dropped": run.dropped,
                    "out_hz": len(lat) / span if span > 0 else 0.0,
                    "latency_ms": _lat_stats(lat),
                    "stages": stage_means(rep.diagnostics),
                }
            )
            print(f"[dds_path] {kind} {rows[-1]['rate']}: {_row(rows[-1])}", flush=True)
    finally:
        if rep is not None:
            rep.close()
        stop_node(proc)
    return rows


def _f(v, nd=2) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _row(r: dict) -> str:
    L = r["latency_ms"]
    return (
        f"sent {r['sent']} recv {r['received']} p50 {_f(L['p50'])} p95 {_f(L['p95'])} p99 {_f(L['p99'])} "
        f"max {_f(L['max'])} ms"
    )


def table(rows: list[dict]) -> str:
    stages = [s for s in (*PRE_STAGES, *FRAME_STAGES) if any(s in r["stages"] for r in rows)]
    head = "| node | rate | sent | recv | dropped | out Hz | p50 | p95 | p99 | max | mean |"
    head += "".join(f" {s} |" for s in stages) + " after |"
    lines = [head, "|" + "---|" * (11 + len(stages) + 1)]
    for r in rows:
        L, st = r["latency_ms"], r["stages"]
        # "pipeline" is the sum of select..results: counted once
        parts = [v for k, v in st.items() if k not in ("select", "build_inputs", "forward", "results")]
        after = (L["mean"] - sum(parts)) if (L["mean"] is not None and st) else None
        lines.append(
            f"| {r['node']} | {r['rate']} | {r['sent']} | {r['received']} | {r['dropped']} | "
            f"{_f(r['out_hz'], 1)} | {_f(L['p50'])} | {_f(L['p95'])} | {_f(L['p99'])} | {_f(L['max'])} | "
            f"{_f(L['mean'])} |" + "".join(f" {_f(st.get(s))} |" for s in stages) + f" {_f(after)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", choices=("stub", "demo", "echo"), help=argparse.SUPPRESS)
    ap.add_argument("--nodes", default="echo,stub", help="comma list of: echo, stub, demo")
    ap.add_argument("--rates", default="30,max", help="comma list of Hz and/or 'max' (closed loop)")
    ap.add_argument("--frames", type=int, default=150, help="frames sent per rate")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--distinct", type=int, default=4)
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames-file", default=".carry/node_overhead/frames640.npz")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--quick", action="store_true", help="CI mode: 160x120, 20 frames, 2 warm-up")
    ap.add_argument("--out", default="outputs/dds_path")
    args = ap.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from cleanpose_tools.replay import prefer_large_data_transport

    prefer_large_data_transport()  # this process and the node it starts: the package's profile
    if args.serve:
        return serve(args.serve, args.device, args.checkpoint)
    if args.quick:
        args.frames, args.warmup, args.distinct, args.width, args.height = 20, 2, 2, 160, 120
        args.frames_file = ""
    args.rates = [None if t.strip() in ("max", "peak") else float(t) for t in args.rates.split(",") if t]
    kinds = [k.strip() for k in args.nodes.split(",") if k.strip()]
    if any(k not in ("stub", "demo", "echo") for k in kinds):
        ap.error(f"--nodes: echo, stub and/or demo, got {args.nodes!r}")
    ff = args.frames_file if args.frames_file and Path(args.frames_file).exists() else ""
    bag = make_frames(ff, args.distinct, args.objects, args.width, args.height)
    out = Path(args.out)
    rows = []
    for kind in kinds:
        rows += measure(kind, args, bag, out)
    h, w = args.height, args.width
    print(
        f"\n### publish -> ~/poses over DDS, {w}x{h}, {bag.frames[0].n_objects} objects, "
        f"device {args.device}, {args.frames} frames per rate "
        "(ms; stage columns: the node's diagnostics means)\n"
    )
    print(table(rows))
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "device": args.device,
        "fastdds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"),
        "fastdds_builtin_transports": os.environ.get("FASTDDS_BUILTIN_TRANSPORTS"),
        "image": [h, w],
        "objects": bag.frames[0].n_objects,
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "dds_path.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"\nwrote {out / 'dds_path.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
