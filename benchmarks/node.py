"""Suite ``node``: the ROS node's time per frame outside (and with) the model.

Parts (``--parts``):
- ``frame``: the real ``CleanPoseNode`` in this process, configured and active, its frame path
  (``_process``: conversions, mask parsing, pipeline, output messages, publication, statistics) called
  directly on rclpy messages; per-stage times from the node's own stage clock (what its diagnostics
  average), plus the executor's CDR take of the inputs ("deserialize"). Scenarios: ``none`` (nobody
  subscribed to the outputs) and ``all`` (a subscriber on every output, so each message is serialised).
- ``dds``: publish -> node -> ``~/poses`` received over DDS with the node in its own process
  (``benchmarks/node_dds.py``), per node kind and send rate: latency percentiles and the node's stage means
  from its /diagnostics; ``echo`` (a bare rclpy node answering each detections message) is the transport
  floor, and the comparison table gives node / echo latency of this run.

The model is a stub (``--estimator stub``: poses at once, isolating the node's Python) or a checkpoint
(``--estimator model``, default the shipped demo checkpoint, or --checkpoint). Frames: ``--frames FILE``
(``scripts/make_perf_frames.py``) or generated ones of --height x --width, one row group per --objects count.

    python -m benchmarks node --parts frame dds --objects 6 --out docs/results/h200
    python -m benchmarks node --parts dds --estimator model --device cuda --checkpoint full.safetensors
    python -m benchmarks node --quick --out /tmp/b
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np

from benchmarks import harness
from benchmarks.node_inputs import (
    NODE_NAME,
    StubEstimator,
    add_frame_arguments,
    frame_messages,
    make_frames,
    node_parameters,
)

MODEL_STAGES = ("build_inputs", "forward")  # cleanpose_model's share (preprocess + network)


def time_deserialize(msgs, n: int) -> list[float]:
    """The executor's CDR take of a frame's three input messages, cycling through the frames."""
    from rclpy.serialization import deserialize_message, serialize_message

    frames = itertools.cycle([[(serialize_message(m), type(m)) for m in fr[:3]] for fr in msgs])

    def take():
        for data, t in next(frames):
            deserialize_message(data, t)

    return harness.time_call(take, "cpu", warmup=0, iterations=n)


def output_subscriber(context, node_name: str):
    """A node subscribed to every output of ``node_name`` (never spun: the DDS reader keeps the newest)."""
    import rclpy
    from cleanpose_msgs.msg import ObjectPoseArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray
    from visualization_msgs.msg import MarkerArray

    sub = rclpy.create_node("cleanpose_bench_listener", context=context)
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


# The node's frame path and output publishers: in its worker / outputs parts (cleanpose_ros/worker.py,
# outputs.py), or on the node itself in the single-module layout before that split.
def frame_path(node):
    worker = getattr(node, "worker", None)
    return worker.process if worker is not None else node._process


def output_publishers(node) -> dict:
    outputs = getattr(node, "outputs", None)
    return outputs.publishers if outputs is not None else node._pubs


def wait_matched(node, want: bool, timeout: float = 20.0) -> dict[str, int]:
    """Wait until every output publisher of ``node`` has (want) or has no (not want) subscriber."""
    deadline = time.monotonic() + timeout
    while True:
        counts = {k: p.get_subscription_count() for k, p in output_publishers(node).items()}
        if all((c > 0) == want for c in counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def run_frames(node, msgs, n: int, warmup: int) -> tuple[dict[str, list[float]], list[float]]:
    """The node's frame path on ``n`` frames (after ``warmup``), cycling through ``msgs``."""
    per_stage: dict[str, list[float]] = {}
    total = []
    process = frame_path(node)
    for i in range(warmup + n):
        img, dep, det, info = msgs[i % len(msgs)]
        node._on_info(info)
        before = node.last_stage_ms  # replaced by a new dict for every frame that produced outputs
        # One frame: the harness's clock around the call, the node's own stage clock inside it.
        frame = (img, dep, det)
        (ms,) = harness.time_call(
            lambda f=frame: process(*f, time.monotonic()), "cpu", warmup=0, iterations=1
        )
        if node.last_stage_ms is before or not node.last_stage_ms:
            raise RuntimeError(f"frame {i} produced no outputs (see the node's log)")
        if i < warmup:
            continue
        total.append(ms)
        for k, v in node.last_stage_ms.items():
            per_stage.setdefault(k, []).append(v)
    return per_stage, total


def frame_part(args, report: harness.Report, objects: int) -> None:
    import rclpy
    from rclpy.context import Context
    from rclpy.lifecycle import TransitionCallbackReturn

    from cleanpose_ros.node import CleanPoseNode

    msgs = frame_messages(make_frames(args, objects))
    ctx = Context()
    rclpy.init(context=ctx)
    node = sub = None
    try:
        params = node_parameters(args, publish_debug_image=args.debug_image, diagnostics_period=60.0)
        node = CleanPoseNode(NODE_NAME, context=ctx, parameter_overrides=params)
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError("the node failed to configure (see its log)")
        node.trigger_activate()
        if args.estimator == "stub":
            node.pipeline.estimator = StubEstimator(node.pipeline.estimator)
        deser = harness.summarize(time_deserialize(msgs, max(args.iterations, 3)))
        for scen in args.scenarios:
            if scen == "all" and sub is None:
                sub = output_subscriber(ctx, NODE_NAME)
            if scen == "none" and sub is not None:
                sub.destroy_node()
                sub = None
            matched = wait_matched(node, scen == "all")
            per_stage, total = run_frames(node, msgs, args.iterations, args.warmup)
            model = np.sum([per_stage.get(k, [0.0] * len(total)) for k in MODEL_STAGES], axis=0)
            common = {"part": "frame", "objects": objects, "scenario": scen}
            report.add(**common, stage="deserialize (executor)", **deser)
            for k, v in per_stage.items():
                report.add(**common, stage=k, **harness.summarize(v))
            report.add(**common, stage="total", **harness.summarize(total), subscriptions=matched)
            report.add(**common, stage="non_model", **harness.summarize(np.asarray(total) - model))
    finally:
        if sub is not None:
            sub.destroy_node()
        if node is not None:
            node.trigger_deactivate()
            node._teardown()
            node.destroy_node()
        ctx.try_shutdown()


# ------------------------------------------------------------------------------------------------ suite


def main(argv: list[str] | None = None) -> int:
    ap = harness.common_parser("node", __doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["frame", "dds"], choices=("frame", "dds"))
    ap.add_argument("--estimator", choices=("stub", "model"), default="stub")
    add_frame_arguments(ap)
    ap.add_argument("--scenarios", nargs="+", default=["none", "all"], choices=("none", "all"))
    ap.add_argument("--no-debug-image", dest="debug_image", action="store_false", help="frame part")
    ap.add_argument(
        "--nodes", nargs="+", default=["echo", "stub"], choices=("echo", "stub", "model"), help="dds"
    )
    ap.add_argument("--rates", default="30,max", help="dds part: comma list of Hz and/or 'max' (closed loop)")
    ap.add_argument(
        "--start-timeout", type=float, default=120.0, help="dds part: seconds for the node to start"
    )
    ap.add_argument(
        "--cameras",
        type=int,
        default=1,
        help="dds part: one node serving this many cameras (cam0..), one replayer each; rows per set",
    )
    ap.add_argument(
        "--camera-wait",
        type=float,
        default=None,
        help="dds part: the node's camera_wait (s; default: the parameter's default)",
    )
    ap.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="dds part: the node process's sys.setswitchinterval (s; Python's default 0.005): how long a "
        "thread waiting for the GIL (the executor taking a camera's messages, the worker) may wait for the "
        "thread running Python code",
    )
    # quick: 6 frames per row, enough for the DDS part's 30 Hz pacing to matter
    args = harness.finish_args(ap.parse_args(argv), objects=[6], quick_objects=[3], quick_iterations=6)
    if args.quick:
        args.height, args.width, args.distinct = 120, 160, 2
    if args.device == "auto":
        from cleanpose_model.device import resolve_device

        args.device = str(resolve_device("auto").device)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from benchmarks import node_dds

    report = harness.Report("node", args, args.device if args.device.startswith("cuda") else "cpu")
    for n in args.objects:
        if "frame" in args.parts:
            frame_part(args, report, n)
        if "dds" in args.parts:
            node_dds.dds_part(args, report, n)
    frame_rows = [r for r in report.rows if r["part"] == "frame"]
    if frame_rows:
        print(f"\n## Node frame path, estimator {args.estimator} on {args.device} (ms)\n")
        print(
            report.table(frame_rows, ["objects", "scenario", "stage", "median_ms", "p95_ms", "max_ms", "n"])
        )
        cmp = report.compare(key=("objects", "stage"), between="scenario", base="none", other="all")
        report.print_comparisons(("objects", "stage"), "Frame path, outputs subscribed vs not", cmp)
    dds_rows = [r for r in report.rows if r["part"] == "dds"]
    if dds_rows:
        if args.cameras > 1:
            print(
                f"\n## {args.cameras} cameras through one node over DDS, device {args.device} "
                "(latency per set ms: first send -> last camera's poses)\n"
            )
            print(report.table(dds_rows, node_dds.MULTI_COLUMNS))
        else:
            print(f"\n## publish -> ~/poses over DDS, device {args.device} (latency ms)\n")
            print(report.table(dds_rows, node_dds.COLUMNS))
        for kind in ("stub", "model"):
            cmp = report.compare(key=("objects", "rate"), between="node", base="echo", other=kind)
            report.print_comparisons(("objects", "rate"), f"DDS latency, {kind} node vs echo floor", cmp)
    report.write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
