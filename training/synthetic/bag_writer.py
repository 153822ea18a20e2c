"""rosbag2 writer (MCAP or sqlite3, via `rosbags`) of a rendered camera sequence over a static scene.

Topics and types follow docs/DESIGN.md "Synthetic / demo rosbag2 topics". Every timestamp derives from a fixed
start time and the frame rate, so the same seed gives the same message bytes (rosbags embeds no wall-clock
time).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from scipy.spatial.transform import Rotation

from . import types as T
from .nocs_writer import MaskNoise, boxes_from_masks
from .render import Frame
from .shapes import CATEGORIES
from .topics import TOPIC_COLOR, TOPIC_DEPTH, TOPIC_DETECTIONS, TOPIC_GT, TOPIC_INFO, TOPIC_TF

CAMERA_FRAME = "camera_color_optical_frame"
WORLD_FRAME = "world"
# 2023-11-14T22:13:20Z: a fixed, plausible epoch so that bags are reproducible and look like recordings.
DEFAULT_START_NS = 1_700_000_000 * 10**9

TOPICS: dict[str, str] = {
    TOPIC_COLOR: T.IMAGE,
    TOPIC_DEPTH: T.IMAGE,
    TOPIC_INFO: T.CAMERA_INFO,
    TOPIC_DETECTIONS: T.INSTANCE_SEGMENTATION,
    TOPIC_GT: T.OBJECT_POSE_ARRAY,
    TOPIC_TF: T.TF_MESSAGE,
}


@dataclass
class BagOptions:
    storage: str = "mcap"  # or "sqlite3"
    # MCAP chunk compression (zstd), read natively by rosbag2's MCAP storage plugin; masks compress ~50x.
    compress: bool = True
    rate_hz: float = 30.0
    start_ns: int = DEFAULT_START_NS
    min_mask_pixels: int = 64  # objects with fewer visible pixels get no detection / GT entry
    mask_noise: MaskNoise | None = None


def quaternion_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) with w >= 0, so equal rotations always give equal bytes."""
    q = Rotation.from_matrix(R).as_quat()
    return -q if q[3] < 0 else q


# The message classes BagMessages holds: attribute name -> ROS 2 type name.
_MESSAGE_TYPES = {
    "Header": "std_msgs/msg/Header",
    "Time": "builtin_interfaces/msg/Time",
    "Image": T.IMAGE,
    "CameraInfo": T.CAMERA_INFO,
    "ROI": "sensor_msgs/msg/RegionOfInterest",
    "Seg": T.INSTANCE_SEGMENTATION,
    "Det": "vision_msgs/msg/Detection2D",
    "Hyp": "vision_msgs/msg/ObjectHypothesis",
    "HypPose": "vision_msgs/msg/ObjectHypothesisWithPose",
    "BBox": "vision_msgs/msg/BoundingBox2D",
    "Pose2D": "vision_msgs/msg/Pose2D",
    "Point2D": "vision_msgs/msg/Point2D",
    "PoseCov": "geometry_msgs/msg/PoseWithCovariance",
    "Pose": "geometry_msgs/msg/Pose",
    "Point": "geometry_msgs/msg/Point",
    "Quat": "geometry_msgs/msg/Quaternion",
    "Vec3": "geometry_msgs/msg/Vector3",
    "ObjectPose": "cleanpose_msgs/msg/ObjectPose",
    "ObjectPoseArray": T.OBJECT_POSE_ARRAY,
    "TF": T.TF_MESSAGE,
    "TransformStamped": "geometry_msgs/msg/TransformStamped",
    "Transform": "geometry_msgs/msg/Transform",
}


class BagMessages:
    """Builds the message objects of one frame with a given typestore (its message classes are attributes,
    named as in _MESSAGE_TYPES)."""

    def __init__(self, typestore=None):
        self.ts = typestore or T.typestore()
        for attr, type_name in _MESSAGE_TYPES.items():
            setattr(self, attr, self.ts.types[type_name])

    def header(self, stamp_ns: int, frame_id: str):
        return self.Header(
            stamp=self.Time(sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9)), frame_id=frame_id
        )

    def image(self, header, arr: np.ndarray, encoding: str):
        arr = np.ascontiguousarray(arr)
        h, w = arr.shape[:2]
        data = arr.reshape(-1).view(np.uint8)
        return self.Image(
            header=header,
            height=h,
            width=w,
            encoding=encoding,
            is_bigendian=0,
            step=int(arr.strides[0]),
            data=data,
        )

    def camera_info(self, header, K: np.ndarray, width: int, height: int):
        P = np.zeros((3, 4))
        P[:, :3] = K
        return self.CameraInfo(
            header=header,
            height=height,
            width=width,
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=K.reshape(-1).astype(np.float64),
            r=np.eye(3).reshape(-1),
            p=P.reshape(-1),
            binning_x=0,
            binning_y=0,
            roi=self.ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )

    def pose(self, R: np.ndarray, t: np.ndarray):
        q = quaternion_xyzw(R)
        return self.Pose(
            position=self.Point(x=float(t[0]), y=float(t[1]), z=float(t[2])),
            orientation=self.Quat(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
        )

    def frame_messages(
        self, frame: Frame, stamp_ns: int, opts: BagOptions, rng: np.random.Generator
    ) -> dict[str, object]:
        hdr = self.header(stamp_ns, CAMERA_FRAME)
        H, W = frame.depth_mm.shape
        keep = np.flatnonzero(frame.masks.reshape(len(frame.masks), -1).sum(1) >= opts.min_mask_pixels)
        masks = frame.masks[keep]
        scores = np.ones(len(keep), np.float32)
        if opts.mask_noise is not None:
            masks, scores = opts.mask_noise.apply(masks, rng)
        boxes = boxes_from_masks(masks)
        dets, mask_msgs = [], []
        for j, i in enumerate(keep):
            y1, x1, y2, x2 = (float(v) for v in boxes[j])
            name = CATEGORIES[int(frame.category_ids[i])]
            hyp = self.HypPose(
                hypothesis=self.Hyp(class_id=name, score=float(scores[j])),
                pose=self.PoseCov(pose=self.pose(np.eye(3), np.zeros(3)), covariance=np.zeros(36)),
            )
            # Pixel-edge box: centre of the covered pixel range, size in pixels.
            bbox = self.BBox(
                center=self.Pose2D(
                    position=self.Point2D(x=0.5 * (x1 + x2) - 0.5, y=0.5 * (y1 + y2) - 0.5), theta=0.0
                ),
                size_x=x2 - x1,
                size_y=y2 - y1,
            )
            dets.append(self.Det(header=hdr, results=[hyp], bbox=bbox, id=str(int(frame.instance_ids[i]))))
            mask_msgs.append(self.image(hdr, masks[j].astype(np.uint8) * 255, "mono8"))
        empty = self.image(hdr, np.zeros((0, 0), np.uint8), "mono8")
        seg = self.Seg(
            header=hdr,
            format=self.Seg.FORMAT_MASKS,
            detections=dets,
            masks=mask_msgs,
            mask_offset_x=np.zeros(0, np.uint32),
            mask_offset_y=np.zeros(0, np.uint32),
            label_image=empty,
        )
        objects = [
            self.ObjectPose(
                class_name=CATEGORIES[int(frame.category_ids[i])],
                class_id=int(frame.category_ids[i]),
                score=1.0,
                instance_id=str(int(frame.instance_ids[i])),
                pose=self.pose(frame.rotations[i], frame.translations[i]),
                size=self.Vec3(
                    x=float(frame.sizes[i, 0]), y=float(frame.sizes[i, 1]), z=float(frame.sizes[i, 2])
                ),
                num_points=int(frame.valid_depth_pixels[i]),
            )
            for i in keep
        ]
        Twc = frame.T_world_cam
        q = quaternion_xyzw(Twc[:3, :3])
        tf = self.TransformStamped(
            header=self.header(stamp_ns, WORLD_FRAME),
            child_frame_id=CAMERA_FRAME,
            transform=self.Transform(
                translation=self.Vec3(x=float(Twc[0, 3]), y=float(Twc[1, 3]), z=float(Twc[2, 3])),
                rotation=self.Quat(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
            ),
        )
        return {
            TOPIC_COLOR: self.image(hdr, frame.rgb, "rgb8"),
            TOPIC_DEPTH: self.image(hdr, frame.depth_mm.astype("<u2"), "16UC1"),
            TOPIC_INFO: self.camera_info(hdr, frame.K, W, H),
            TOPIC_DETECTIONS: seg,
            TOPIC_GT: self.ObjectPoseArray(header=hdr, objects=objects),
            TOPIC_TF: self.TF(transforms=[tf]),
        }


def write_bag(
    path: str | Path, frames: Iterable[Frame], rng: np.random.Generator, opts: BagOptions | None = None
) -> int:
    """Write frames (in order) to a new rosbag2 directory; returns the number of frames written."""
    opts = opts or BagOptions()
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[opts.storage]
    msgs = BagMessages()
    ts = msgs.ts
    count = 0
    # Version 8 metadata: what Humble-era readers that know rosbags output and Jazzy/Kilted `ros2 bag` accept.
    writer = Writer(Path(path), version=8, storage_plugin=plugin)
    if opts.compress and opts.storage == "mcap":
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        conns = {
            topic: writer.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in TOPICS.items()
        }
        for i, frame in enumerate(frames):
            stamp = opts.start_ns + round(i * 1e9 / opts.rate_hz)
            for topic, msg in msgs.frame_messages(frame, stamp, opts, rng).items():
                writer.write(conns[topic], stamp, ts.serialize_cdr(msg, TOPICS[topic]))
            count += 1
    return count
