"""Deterministic example messages of every cleanpose_msgs type (and of the test-only vision_msgs / tf2_msgs),
shared by the DDS peer processes and the tests that compare what arrived with what was sent."""

from __future__ import annotations

import array

import numpy as np

WIDTH, HEIGHT = 640, 480
CAMERA_FRAME = "camera_color_optical_frame"


def _f32(x: float) -> float:
    # float32 fields come back rounded to float32; sending representable values makes equality exact.
    return float(np.float32(x))


def _header(stamp_ns: int, frame_id: str = CAMERA_FRAME):
    from std_msgs.msg import Header

    header = Header(frame_id=frame_id)
    header.stamp.sec = stamp_ns // 1_000_000_000
    header.stamp.nanosec = stamp_ns % 1_000_000_000
    return header


def _image(pixels: np.ndarray, encoding: str, stamp_ns: int):
    from sensor_msgs.msg import Image

    pixels = np.ascontiguousarray(pixels)
    msg = Image(header=_header(stamp_ns), height=pixels.shape[0], width=pixels.shape[1], encoding=encoding)
    msg.is_bigendian = 0
    msg.step = pixels.shape[1] * pixels.itemsize
    msg.data = array.array("B", pixels.tobytes())
    return msg


def _detection_2d(k: int, rng: np.random.Generator, stamp_ns: int):
    from vision_msgs.msg import Detection2D, ObjectHypothesisWithPose

    det = Detection2D(header=_header(stamp_ns), id=f"track-{k}")
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id = ["mug", "bowl", "laptop", "3"][k % 4]
    hyp.hypothesis.score = float(rng.uniform(0.3, 1.0))
    det.results.append(hyp)
    det.bbox.center.position.x = float(rng.uniform(50, 590))
    det.bbox.center.position.y = float(rng.uniform(50, 430))
    det.bbox.center.theta = 0.0
    det.bbox.size_x = float(rng.uniform(10, 100))
    det.bbox.size_y = float(rng.uniform(10, 100))
    return det


def segmentation_masks(n: int = 3, seed: int = 1):
    """FORMAT_MASKS, n full-size 640x480 mono8 masks; every byte value occurs, so none may be normalised."""
    from cleanpose_msgs.msg import InstanceSegmentation

    rng = np.random.default_rng(seed)
    stamp = 1_700_000_000_123_456_789
    msg = InstanceSegmentation(header=_header(stamp), format=InstanceSegmentation.FORMAT_MASKS)
    for k in range(n):
        msg.detections.append(_detection_2d(k, rng, stamp))
        mask = rng.integers(0, 256, size=(HEIGHT, WIDTH), dtype=np.uint8)
        msg.masks.append(_image(mask, "mono8", stamp))
    return msg


def segmentation_cropped_masks(seed: int = 2):
    """FORMAT_MASKS with box-sized masks placed by mask_offset_x / mask_offset_y."""
    from cleanpose_msgs.msg import InstanceSegmentation

    rng = np.random.default_rng(seed)
    stamp = 1_700_000_001_000_000_001
    msg = InstanceSegmentation(header=_header(stamp), format=InstanceSegmentation.FORMAT_MASKS)
    for k, (w, h) in enumerate([(37, 53), (120, 80)]):
        msg.detections.append(_detection_2d(k, rng, stamp))
        msg.masks.append(_image(rng.integers(0, 2, size=(h, w), dtype=np.uint8) * 255, "mono8", stamp))
    msg.mask_offset_x = array.array("I", [12, 500])
    msg.mask_offset_y = array.array("I", [400, 3])
    return msg


def segmentation_label_image(seed: int = 3):
    """FORMAT_LABEL_IMAGE: one 16UC1 640x480 label image, value k > 0 = detections[k-1]."""
    from cleanpose_msgs.msg import InstanceSegmentation

    rng = np.random.default_rng(seed)
    stamp = 1_700_000_002_999_999_999
    msg = InstanceSegmentation(header=_header(stamp), format=InstanceSegmentation.FORMAT_LABEL_IMAGE)
    n = 4
    for k in range(n):
        msg.detections.append(_detection_2d(k, rng, stamp))
    labels = rng.integers(0, n + 1, size=(HEIGHT, WIDTH), dtype=np.uint16)
    msg.label_image = _image(labels, "16UC1", stamp)
    return msg


def object_pose(k: int = 0, seed: int = 4):
    from cleanpose_msgs.msg import ObjectPose

    rng = np.random.default_rng(seed + k)
    quat = rng.normal(size=4)
    quat /= np.linalg.norm(quat)
    msg = ObjectPose(class_name=["bottle", "mug", "can"][k % 3], class_id=[0, 5, 3][k % 3])
    msg.score = _f32(rng.uniform(0, 1))
    msg.instance_id = f"{k}"
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in rng.normal(0, 0.3, 3))
    msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, msg.pose.orientation.w = (
        float(v) for v in quat
    )
    msg.size.x, msg.size.y, msg.size.z = (float(v) for v in rng.uniform(0.05, 0.4, 3))
    msg.num_points = int(rng.integers(16, 1 << 20))
    return msg


def object_pose_array(n: int = 5):
    from cleanpose_msgs.msg import ObjectPoseArray

    msg = ObjectPoseArray(header=_header(1_700_000_003_000_000_000))
    msg.objects = [object_pose(k) for k in range(n)]
    return msg


def detection_3d_array(n: int = 2):
    """vision_msgs/Detection3DArray as the node fills it (pose in results[0].pose.pose and bbox.center)."""
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    msg = Detection3DArray(header=_header(1_700_000_004_000_000_000))
    for k in range(n):
        src = object_pose(k)
        det = Detection3D(header=msg.header, id=src.instance_id)
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = src.class_name
        hyp.hypothesis.score = src.score
        hyp.pose.pose = src.pose
        hyp.pose.covariance = [float(i) for i in range(36)]
        det.results.append(hyp)
        det.bbox.center = src.pose
        det.bbox.size = src.size
        msg.detections.append(det)
    return msg


def tf_message():
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    tf = TransformStamped(header=_header(1_700_000_005_000_000_000, "world"), child_frame_id=CAMERA_FRAME)
    tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = 0.1, -0.2, 1.5
    tf.transform.rotation.w = 1.0
    return TFMessage(transforms=[tf])


# topic (relative to the peers' namespace) -> (message type path, builder)
PAYLOADS = {
    "segmentation_masks": ("cleanpose_msgs/msg/InstanceSegmentation", segmentation_masks),
    "segmentation_cropped": ("cleanpose_msgs/msg/InstanceSegmentation", segmentation_cropped_masks),
    "segmentation_label": ("cleanpose_msgs/msg/InstanceSegmentation", segmentation_label_image),
    "object_pose": ("cleanpose_msgs/msg/ObjectPose", object_pose),
    "object_pose_array": ("cleanpose_msgs/msg/ObjectPoseArray", object_pose_array),
    "detections_3d": ("vision_msgs/msg/Detection3DArray", detection_3d_array),
    "tf": ("tf2_msgs/msg/TFMessage", tf_message),
}


def message_type(type_path: str):
    """'pkg/msg/Name' -> the generated Python class (rosidl_runtime_py is not among the wheels here)."""
    import importlib

    package, kind, name = type_path.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)
