"""The ``dds`` part of the ``node`` suite: publish -> node -> ``~/poses`` received over DDS, the node in its
own process (started as ``python -m benchmarks.node_dds --serve KIND``), full frames (rgb8 + 16UC1 depth +
CameraInfo + InstanceSegmentation with masks) replayed by ``cleanpose_tools.replay.Replayer``.

Node kinds: ``stub`` (the real node, its model forward replaced by ``benchmarks.node.StubEstimator``),
``model`` (the real node with its checkpoint on --device) and ``echo`` (a bare rclpy node answering each
detections message with an empty ObjectPoseArray of the same stamp: DDS + rclpy take of the same messages,
no processing). Per kind and rate: sent / received / dropped, latency percentiles (send -> poses received)
and the node's stage means from its /diagnostics ("receive" = send -> synchronised set complete in the
node, "queue" = set complete -> worker starts it, then the frame's stages).

``--cameras N`` (N > 1): one node serving N cameras (parameter ``cameras`` = cam0..camN-1), each fed by its
own replayer at the rate, the same set time on every camera. A row is per set of N frames: latency = first
send of the set -> the last camera's ~/<cam>/poses received; a set counts as received only when every camera
answered. ``forwards_per_set`` (node's forwards during the run / sets sent; 1.0 = one forward per cycle, N =
no batching) and ``sets_per_forward`` come from the node's diagnostics counters ``forwards`` /
``forward_sets``.
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
MULTI_COLUMNS = ["cameras", *COLUMNS[:3], "forwards_per_set", "sets_per_forward", *COLUMNS[3:]]


def camera_names(n: int) -> list[str]:
    """The node's `cameras` parameter for n cameras ([""] = the plain single camera)."""
    return [f"cam{i}" for i in range(n)] if n > 1 else [""]


def topics_of(cam: str) -> dict[str, str]:
    """The bench's publish topics of one camera."""
    return TOPICS if not cam else {role: f"/bench_dds/{cam}/{REMAP[role]}" for role in TOPICS}


# ------------------------------------------------------------------------------------------------ node side


def serve(kind: str, args) -> int:
    """Runs in the node's subprocess until SIGINT/SIGTERM."""
    import rclpy

    from cleanpose_ros.cameras import input_topic

    cams = camera_names(args.cameras)
    remaps = [
        x
        for cam in cams
        for role, topic in topics_of(cam).items()
        for x in ("-r", f"{input_topic(cam, REMAP[role])}:={topic}")
    ]
    rclpy.init(args=["--ros-args", *remaps])
    if kind == "echo":
        return _serve_echo(cams)
    from rclpy.lifecycle import TransitionCallbackReturn

    from cleanpose_ros.node import CleanPoseNode, spin

    extra = {"camera_wait": args.camera_wait} if args.camera_wait is not None else {}
    params = node_parameters(
        args, input_reliability="reliable", diagnostics_period=0.5, cameras=cams, **extra
    )
    node = CleanPoseNode(NODE_NAME, parameter_overrides=params)
    if getattr(args, "switch_interval", None) is not None:
        sys.setswitchinterval(args.switch_interval)
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return 1
    if kind == "stub":
        node.pipeline.estimator = StubEstimator(node.pipeline.estimator)
    node.trigger_activate()
    return spin(node)


def _serve_echo(cams: list[str]) -> int:
    import rclpy
    from cleanpose_msgs.msg import InstanceSegmentation, ObjectPoseArray
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from cleanpose_ros.cameras import input_topic, output_topic

    node = rclpy.create_node(NODE_NAME)
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    keep = {}
    for cam in cams:
        pub = node.create_publisher(ObjectPoseArray, output_topic(cam, "poses"), QoSProfile(depth=10))
        # Subscribed like the node (same messages taken and deserialised), answered on detections only.
        for t, name in ((Image, "image"), (Image, "depth"), (CameraInfo, "camera_info")):
            topic = input_topic(cam, name)
            node.create_subscription(t, topic, lambda m, n=topic: keep.__setitem__(n, m), qos)
        node.create_subscription(
            InstanceSegmentation,
            input_topic(cam, "detections"),
            lambda m, pub=pub: pub.publish(ObjectPoseArray(header=m.header)),
            qos,
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
    cmd += ["--cameras", str(getattr(args, "cameras", 1))]
    if getattr(args, "camera_wait", None) is not None:
        cmd += ["--camera-wait", str(args.camera_wait)]
    if getattr(args, "switch_interval", None) is not None:
        cmd += ["--switch-interval", str(args.switch_interval)]
    if args.checkpoint:
        cmd += ["--checkpoint", str(args.checkpoint)]
    return NodeProcess(cmd, log, cwd=REPO)


def stage_means(diag: dict) -> dict[str, float]:
    """stage_ms_* of the node's diagnostics status (name contains the node name) -> {stage: ms}."""
    for name, values in diag.items():
        if NODE_NAME in name:
            return {k[len("stage_ms_") :]: float(v) for k, v in values.items() if k.startswith("stage_ms_")}
    return {}


@contextlib.contextmanager
def node_session(kind: str, args, bag, log: Path, label: str, cams=("",)):
    """The node in its own process and one Replayer per camera of `cams` (its topics), each waited for:
    yields (process, replayers). On an error the node's log tail is printed under `label`; at the end the
    replayers are closed and the node stopped."""
    from cleanpose_tools.replay import Replayer

    proc = start_node(kind, args, log)
    reps = []
    try:
        for cam in cams:
            name = f"{NODE_NAME}/{cam}" if cam else NODE_NAME
            reps.append(Replayer(bag, None, name, publish_topics=topics_of(cam)))
        for rep in reps:
            rep.wait_for_node(args.start_timeout)
        yield proc, reps
    except Exception:
        print(f"{label} node log:\n{proc.log_tail()}", flush=True)
        raise
    finally:
        for rep in reps:
            rep.close()
        proc.stop()


def measure(kind: str, args, bag, log: Path) -> list[dict]:
    rows = []
    with node_session(kind, args, bag, log, f"[node dds] {kind}") as (_, (rep,)):
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
    return rows


def _forward_counts(diag: dict) -> tuple[int, int] | None:
    """(forwards, forward_sets) of the node's diagnostics (several cameras only)."""
    for name, values in diag.items():
        if NODE_NAME in name and "forwards" in values:
            return int(values["forwards"]), int(values["forward_sets"])
    return None


def run_sets(reps, frames, rate_hz: float | None, answer_timeout_s: float = 10.0):
    """Every camera's replayer sends frame k of set k (camera i: frame k + i) at the same set time; closed
    loop (rate None): the next set when every camera answered. -> per set the cameras' SendRecords."""
    sets = []
    t0 = time.monotonic()
    for k in range(len(frames)):
        if rate_hz:
            target = t0 + k / rate_hz
            while (now := time.monotonic()) < target:
                time.sleep(min(target - now, 0.002))
        recs = [rep.send(frames[(k + i) % len(frames)]) for i, rep in enumerate(reps)]
        sets.append(recs)
        if not rate_hz:
            for rep, rec in zip(reps, recs):
                rep.wait_answer(rec, answer_timeout_s)
    if rate_hz:
        for i, rep in enumerate(reps):
            rep.wait_drain([s[i] for s in sets], quiet_s=3.0, max_s=answer_timeout_s + len(frames) / rate_hz)
    return sets, t0


def measure_cameras(kind: str, args, bag, log: Path) -> list[dict]:
    """measure() for one node serving args.cameras cameras (rows per set of one frame per camera)."""
    cams = camera_names(args.cameras)
    rows = []
    with node_session(kind, args, bag, log, f"[node dds] {kind}", cams) as (_, reps):
        run_sets(reps, bag.frames[: max(args.warmup, 1)], None, 60.0)
        frames = [bag.frames[i % len(bag.frames)] for i in range(args.iterations)]
        for rate in args.rate_list:
            time.sleep(1.2)  # a diagnostics message after the previous run: the counters before this one
            before = _forward_counts(reps[0].diagnostics)
            sets, t0 = run_sets(reps, frames, rate)
            time.sleep(1.2)  # one more diagnostics message, covering this run's last sets
            after = _forward_counts(reps[0].diagnostics)
            done = [s for s in sets if all(r.t_recv is not None for r in s)]
            lat = [(max(r.t_recv for r in s) - min(r.t_send for r in s)) * 1e3 for s in done]
            span = max((max(r.t_recv for r in s) for s in done), default=t0) - t0
            row = {
                "cameras": len(cams),
                "node": kind,
                "rate": "max" if rate is None else f"{rate:g} Hz",
                "sent": len(sets),
                "received": len(done),
                "dropped": len(sets) - len(done),
                "out_hz": len(done) / span if span > 0 else 0.0,
            }
            if before is not None and after is not None and after[0] > before[0]:
                fw, fs = after[0] - before[0], after[1] - before[1]
                row["forwards_per_set"] = fw / len(sets)
                row["sets_per_forward"] = fs / fw
            row.update(harness.summarize(lat) if lat else {"n": 0})
            row.update(stage_means(reps[0].diagnostics))
            rows.append(row)
            print(
                f"[node dds] {kind} x{len(cams)} cameras {row['rate']}: {row['received']}/{row['sent']} sets "
                f"received, {row.get('forwards_per_set', float('nan')):.2f} forwards per set",
                flush=True,
            )
    return rows


def dds_part(args, report: harness.Report, objects: int) -> None:
    from cleanpose_tools.replay import prefer_large_data_transport

    prefer_large_data_transport()  # this process and the nodes it starts: the package's Fast DDS profile
    report.data["fastdds_profile"] = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
    args.rate_list = [None if t.strip() in ("max", "peak") else float(t) for t in args.rates.split(",") if t]
    frames = make_frames(args, objects)
    h, w = frames[0]["rgb"].shape[:2]
    bag = bag_of(frame_messages(frames))
    several = getattr(args, "cameras", 1) > 1
    for kind in args.nodes:
        run = measure_cameras if several else measure
        for row in run(kind, args, bag, Path(args.out) / f"node_{kind}.log"):
            report.add(part="dds", objects=objects, image=f"{w}x{h}", **row)


def main(argv: list[str] | None = None) -> int:
    """The node process of one measured kind (started by ``measure``)."""
    ap = argparse.ArgumentParser(description="node process of the node suite's dds part")
    ap.add_argument("--serve", required=True, choices=("echo", "stub", "model"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--camera-wait", type=float, default=None)
    ap.add_argument("--switch-interval", type=float, default=None)
    args = ap.parse_args(argv)
    from cleanpose_tools.replay import prefer_large_data_transport

    prefer_large_data_transport()
    return serve(args.serve, args)


if __name__ == "__main__":
    raise SystemExit(main())
