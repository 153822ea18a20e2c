"""Suite ``codecs``: what compressed inputs cost the node (issue 18 point 5).

Parts (``--parts``):
- ``decode`` (no ROS): per frame of rendered synthetic scenes (``cleanpose_training.synthetic``, realistic
  content; --width x --height, default 640x480), encoded the way image_transport's plugins publish them with
  their default settings (``compressed``: jpeg quality 95 or png level 3; ``compressedDepth``: 16UC1 png
  level 3 behind its 12-byte header): message size, encode time (the publisher's cost, for scale), and the
  node's cost per frame: ``decode_ms`` = ``codecs.decode_*_msg`` (cv2 decode + DecodedImage), ``to_array_ms``
  = the frame path's conversion of the decoded image (``conversions.rgb_from_image`` / ``depth_from_image``),
  against ``raw_to_array_ms``, the same conversion of the raw image (the raw path's whole cost).
- ``dds`` (ROS): the node in its own process (real model on --device) fed over DDS by the replayer at each
  --rates, with raw inputs and with compressed colour (jpeg) + compressedDepth inputs of the same frames, in
  the same run: latency send -> ``~/poses`` received (percentiles), and the node's stage means. The ratio
  compressed / raw is formed between rows of this run only.

    python -m benchmarks codecs --out docs/results/cpu               # both parts, CPU
    python -m benchmarks codecs --parts decode --out /tmp/c           # no ROS needed
    python -m benchmarks codecs --parts dds --device cuda --rates 30 --out docs/results/h200
    python -m benchmarks codecs --quick --out /tmp/c
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.fixtures import REPO

NODE = "cleanpose_node"
BASE = "/bench_codecs"
DECODE_COLUMNS = [
    "input",
    "codec",
    "image",
    "kb",
    "ratio",
    "encode_ms",
    "decode_ms",
    "decode_p95_ms",
    "to_array_ms",
    "raw_to_array_ms",
]
DDS_COLUMNS = ["inputs", "objects", "rate", "sent", "received", "dropped", "median_ms", "p95_ms", "p99_ms"]
DDS_COLUMNS += ["receive", "queue", "convert", "forward", "outputs"]


def rendered_frames(n: int, width: int, height: int, objects=(4, 6), seed: int = 0):
    """n rendered frames: dicts rgb (H,W,3) uint8, depth_m (H,W) float32, K, masks, boxes, categories."""
    from cleanpose_training.synthetic.__main__ import bag_frames, scene_rngs
    from cleanpose_training.synthetic.scene import Camera

    rng = scene_rngs(seed, "bag", 1)[0]
    cats = ("bottle", "bowl", "camera", "can", "laptop", "mug")
    out = []
    for fr in bag_frames(rng, n, objects, cats, Camera.real275(width, height), 30.0, shadows=False):
        masks = np.asarray(fr.masks, bool)
        boxes = np.zeros((len(masks), 4), np.int64)
        for i, m in enumerate(masks):
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) if rows.size else 0
        out.append(
            {
                "rgb": np.ascontiguousarray(fr.rgb),
                "depth_m": fr.depth_mm.astype(np.float32) / 1000.0,
                "K": np.asarray(fr.K, np.float64),
                "masks": masks,
                "boxes": boxes,
                "categories": np.asarray(fr.category_ids),
            }
        )
    return out


class _Msg:
    """The fields of a CompressedImage the decoders read."""

    def __init__(self, data: bytes, fmt: str):
        self.header, self.data, self.format = None, data, fmt


def _time_cycle(fn, items: list, args) -> list[float]:
    """ms per call of fn(item), cycling through items (distinct frames, so no cache holds the answer)."""
    k = [0]

    def call():
        k[0] += 1
        return fn(items[k[0] % len(items)])

    return harness.time_call(call, "cpu", warmup=args.warmup, iterations=args.iterations)


def decode_part(args, report: harness.Report, frames) -> None:
    from cleanpose_ros import codecs, conversions

    h, w = frames[0]["rgb"].shape[:2]
    kinds = [("colour", "jpeg q95"), ("colour", "png l3"), ("depth", "compressedDepth png l3")]
    for inp, codec in kinds:
        msgs, enc_ms, raws = [], [], []
        for f in frames:
            t0 = time.perf_counter()
            if inp == "colour":
                data = codecs.encode_color(f["rgb"], codec.split()[0], quality=95, png_level=3)
                raws.append(codecs.DecodedImage.of(None, f["rgb"], "rgb8"))
            else:
                mm = np.round(f["depth_m"] * 1000.0).astype(np.uint16)
                data = codecs.encode_depth(mm, png_level=3)
                raws.append(codecs.DecodedImage.of(None, mm, "16UC1"))
            enc_ms.append((time.perf_counter() - t0) * 1e3)
            msgs.append(_Msg(*data))
        decode = codecs.decode_color_msg if inp == "colour" else codecs.decode_depth_msg
        convert = conversions.rgb_from_image if inp == "colour" else conversions.depth_from_image
        dec = _time_cycle(decode, msgs, args)
        decoded = [decode(m) for m in msgs]
        conv = _time_cycle(convert, decoded, args)
        raw = _time_cycle(convert, raws, args)
        size = float(np.mean([len(m.data) for m in msgs]))
        raw_bytes = float(raws[0].step * raws[0].height)
        d = harness.summarize(dec)
        report.add(
            part="decode",
            input=inp,
            codec=codec,
            image=f"{w}x{h}",
            kb=size / 1024.0,
            ratio=raw_bytes / size,
            encode_ms=float(np.median(enc_ms)),
            decode_ms=d["median_ms"],
            decode_p95_ms=d["p95_ms"],
            to_array_ms=harness.summarize(conv)["median_ms"],
            raw_to_array_ms=harness.summarize(raw)["median_ms"],
        )
        print(f"[codecs decode] {inp} {codec}: {d['median_ms']:.2f} ms per {w}x{h} frame", flush=True)


# ------------------------------------------------------------------------------------------------ dds part


def _bag(frames, compressed: bool):
    """BagFrames (CDR bytes per role) of the frames, raw or compressed as the plugins publish them."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage

    from benchmarks.node_inputs import frame_messages
    from cleanpose_ros import codecs
    from cleanpose_tools.replay import BagFrames, Frame

    types = {
        "image": "sensor_msgs/msg/Image",
        "depth": "sensor_msgs/msg/Image",
        "info": "sensor_msgs/msg/CameraInfo",
        "detections": "cleanpose_msgs/msg/InstanceSegmentation",
    }
    if compressed:
        types["image"] = types["depth"] = "sensor_msgs/msg/CompressedImage"
    out = []
    for i, (img, dep, det, info) in enumerate(frame_messages(frames)):
        if compressed:
            f = frames[i]
            data, fmt = codecs.encode_color(f["rgb"], "jpeg", quality=95)
            img = CompressedImage(header=img.header, format=fmt, data=data)
            data, fmt = codecs.encode_depth(np.round(f["depth_m"] * 1000.0).astype(np.uint16), png_level=3)
            dep = CompressedImage(header=dep.header, format=fmt, data=data)
        raw = {"image": img, "depth": dep, "detections": det, "info": info}
        st = img.header.stamp
        out.append(
            Frame(
                i,
                st.sec * 10**9 + st.nanosec,
                {k: serialize_message(m) for k, m in raw.items()},
                len(det.detections),
            )
        )
    return BagFrames(Path("<generated>"), out, types, {}, False, 0, "memory")


def _node(args, compressed: bool, log: Path):
    from cleanpose_tools.bench import NodeProcess

    params = {
        "device": args.device,
        "warmup": "true",
        "input_reliability": "reliable",
        "diagnostics_period": "0.5",
        "color_transport": "compressed" if compressed else "raw",
        "depth_transport": "compressedDepth" if compressed else "raw",
    }
    if args.checkpoint:
        params["checkpoint"] = str(args.checkpoint)
    cmd = [sys.executable, "-m", "cleanpose_ros.node", "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    for name in ("image", "depth", "camera_info", "detections"):
        cmd += ["-r", f"{name}:={BASE}/{name}"]
    return NodeProcess(cmd, log, cwd=REPO)


def dds_part(args, report: harness.Report, frames) -> None:
    from benchmarks.node_dds import stage_means
    from cleanpose_tools.replay import Replayer, prefer_large_data_transport

    prefer_large_data_transport()
    report.data["fastdds_profile"] = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
    rates = [None if t.strip() in ("max", "peak") else float(t) for t in args.rates.split(",") if t]
    h, w = frames[0]["rgb"].shape[:2]
    for compressed in (False, True):
        label = "jpeg + compressedDepth" if compressed else "raw"
        bag = _bag(frames, compressed)
        topics = {"image": f"{BASE}/image", "depth": f"{BASE}/depth", "info": f"{BASE}/camera_info"}
        topics["detections"] = f"{BASE}/detections"
        if compressed:
            topics["image"] += "/compressed"
            topics["depth"] += "/compressedDepth"
        log = Path(args.out) / f"codecs_node_{'compressed' if compressed else 'raw'}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        proc = _node(args, compressed, log)
        rep = None
        try:
            rep = Replayer(bag, None, NODE, publish_topics=topics)
            rep.wait_for_node(args.start_timeout)
            for k in range(args.warmup):
                rep.wait_answer(rep.send(bag.frames[k % len(bag.frames)]), 60.0)
            sends = [bag.frames[i % len(bag.frames)] for i in range(args.iterations)]
            for rate in rates:
                rep.diagnostics.clear()
                run = rep.run(sends, rate_hz=rate, answer_timeout_s=10.0)
                time.sleep(1.2)  # one more diagnostics message, covering this run's last frames
                lat = [(r.t_recv - r.t_send) * 1e3 for r in run.records if r.t_recv is not None]
                row = {
                    "part": "dds",
                    "inputs": label,
                    "objects": round(float(np.mean([f.n_objects for f in bag.frames])), 1),
                    "image": f"{w}x{h}",
                    "rate": "max" if rate is None else f"{rate:g} Hz",
                    "sent": run.sent,
                    "received": run.received,
                    "dropped": run.dropped,
                }
                row.update(harness.summarize(lat) if lat else {"n": 0})
                row.update(stage_means(rep.diagnostics))
                report.add(**row)
                print(f"[codecs dds] {label} {row['rate']}: {run.received}/{run.sent} received", flush=True)
        except Exception:
            print(f"[codecs dds] {label} node log:\n{proc.log_tail()}", flush=True)
            raise
        finally:
            if rep is not None:
                rep.close()
            proc.stop()
    for value in ("median_ms", "p95_ms"):
        report.compare(
            key=("rate",), between="inputs", base="raw", other="jpeg + compressedDepth", value=value
        )


def main(argv: list[str] | None = None) -> int:
    ap = harness.common_parser("codecs", __doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["decode", "dds"], choices=["decode", "dds"])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--distinct", type=int, default=4, help="rendered frames to cycle through")
    ap.add_argument(
        "--rates", default="10", help="dds: send rates in Hz, comma-separated ('max': closed loop)"
    )
    ap.add_argument(
        "--checkpoint", type=Path, default=None, help="dds: the node's checkpoint (default: demo)"
    )
    ap.add_argument("--start-timeout", type=float, default=180.0, help="dds: seconds for the node to start")
    args = harness.finish_args(ap.parse_args(argv), objects=[6], quick_objects=[6], quick_iterations=5)
    if args.quick:
        args.width, args.height, args.distinct, args.rates = 320, 240, 2, "max"
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    report = harness.Report("codecs", args, "cpu" if "dds" not in args.parts else args.device)
    t0 = time.perf_counter()
    try:
        frames = rendered_frames(args.distinct, args.width, args.height)
        dt = time.perf_counter() - t0
        report.note(f"{len(frames)} rendered {args.width}x{args.height} frames in {dt:.1f} s")
    except ImportError as e:  # a machine without the renderer's packages (open3d, rosbags)
        from benchmarks.fixtures import synthetic_frame

        frames = [synthetic_frame(6, args.height, args.width, seed=i) for i in range(args.distinct)]
        report.note(
            f"renderer unavailable ({e}): fixture frames with uniform-noise colour, the worst case for "
            "jpeg/png "
            "(sizes and colour decode times are upper bounds)"
        )
    if "decode" in args.parts:
        decode_part(args, report, frames)
        rows = [r for r in report.rows if r["part"] == "decode"]
        print(f"\n## decode cost per frame\n\n{report.table(rows, DECODE_COLUMNS)}")
    if "dds" in args.parts:
        dds_part(args, report, frames)
        dds_rows = [r for r in report.rows if r["part"] == "dds"]
        title = f"node over DDS, raw vs compressed inputs ({args.device})"
        print(f"\n## {title}\n\n{report.table(dds_rows, DDS_COLUMNS)}")
        for value in ("median_ms", "p95_ms"):
            cmps = [c for c in report.comparisons if c["value"] == value]
            report.print_comparisons(("rate",), f"end-to-end latency {value}, compressed vs raw inputs", cmps)
    report.write(Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
