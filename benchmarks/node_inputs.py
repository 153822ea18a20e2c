"""What both parts of the ``node`` suite share: the frames, their rclpy messages, the stub model and the
node's parameters (``benchmarks/node.py`` runs the node in this process, ``benchmarks/node_dds.py`` in its
own process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.fixtures import frame_with_objects, load_frames

NODE_NAME = "cleanpose_bench_node"
STAMP0_NS = 1_700_000_000_000_000_000


# ------------------------------------------------------------------------------------------------ frames


def add_frame_arguments(ap) -> None:
    """The model and frame options of the suites that run the node (node, soak), read by make_frames."""
    ap.add_argument(
        "--checkpoint", type=Path, default=None, help="the model's checkpoint (default: the demo)"
    )
    ap.add_argument("--frames", type=Path, default=None, help="frames file of scripts/make_perf_frames.py")
    ap.add_argument("--distinct", type=int, default=4, help="frames to cycle through")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)


def make_frames(args, objects: int) -> list[dict[str, np.ndarray]]:
    """``args.distinct`` frames of ``objects`` instances (file frames, or generated with distinct seeds)."""
    from benchmarks.fixtures import synthetic_frame

    if args.frames:
        files = load_frames(args.frames)
        return [frame_with_objects([f], objects, 0, 0) for f in files[: args.distinct]]
    return [synthetic_frame(objects, args.height, args.width, seed=i) for i in range(args.distinct)]


def frame_messages(frames) -> list[tuple]:
    """(image, depth, detections, info) rclpy messages per frame, as the node's callbacks receive them."""
    from builtin_interfaces.msg import Time
    from cleanpose_msgs.msg import InstanceSegmentation
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection2D, ObjectHypothesisWithPose

    from cleanpose_model.categories import NOCS
    from cleanpose_ros.conversions import numpy_to_image

    msgs = []
    for i, f in enumerate(frames):
        ns = STAMP0_NS + i * 33_333_333
        hdr = Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="camera_color_optical_frame")
        depth_mm = np.round(f["depth_m"] * 1000.0).astype(np.uint16)
        det = InstanceSegmentation(header=hdr, format=InstanceSegmentation.FORMAT_MASKS)
        for j, c in enumerate(f["categories"]):
            d = Detection2D(header=hdr, id=str(j))
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = NOCS.names[int(c)]
            hyp.hypothesis.score = 0.9
            d.results.append(hyp)
            det.detections.append(d)
            det.masks.append(numpy_to_image(f["masks"][j].astype(np.uint8) * 255, "mono8", hdr))
        h, w = f["rgb"].shape[:2]
        info = CameraInfo(header=hdr, width=w, height=h, distortion_model="plumb_bob")
        info.d = [0.0] * 5
        info.k = [float(v) for v in np.asarray(f["K"], np.float64).reshape(-1)]
        msgs.append(
            (numpy_to_image(f["rgb"], "rgb8", hdr), numpy_to_image(depth_mm, "16UC1", hdr), det, info)
        )
    return msgs


class StubEstimator:
    """The real estimator's interface without its forward: rotation identity, translation the mean of the
    object's points, size 10 cm (poses land on the objects, so the overlays draw what they would draw)."""

    def __init__(self, real):
        self.categories = real.categories
        self.device = real.device
        self.dtype = real.dtype
        self.inputs = getattr(real, "inputs", None)

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


def node_parameters(args, **extra):
    """The parameter overrides of the measured node."""
    from rclpy.parameter import Parameter

    values = {
        "device": args.device,
        "warmup": args.device.startswith("cuda"),  # CUDA: graphs captured before anything is timed
        "autostart": False,
        **extra,
    }
    if args.checkpoint:
        values["checkpoint"] = str(args.checkpoint)
    return [Parameter(k, value=v) for k, v in values.items()]


# --------------------------------------------------------------------------------------------- part "frame"
