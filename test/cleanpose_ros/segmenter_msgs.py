"""Builders of the standard segmenter messages from masks (real message types): vision_msgs/Detection2DArray
+ a label image, and yolo_msgs/DetectionArray with polygon masks (the masks' outer contours)."""

from __future__ import annotations

import cv2
import numpy as np
import ros_harness as H


def detection2d_array(class_ids, ns: int, ids=None, scores=None, boxes=None):
    from vision_msgs.msg import Detection2DArray

    m = Detection2DArray()
    m.header.stamp = H.stamp_of(ns)
    m.header.frame_id = H.FRAME_ID
    H.add_detections(m, class_ids, scores, ids, boxes)
    return m


def label_image(masks, values, ns: int, encoding: str = "16UC1"):
    """Image whose pixels of masks[k] hold values[k] (0 elsewhere)."""
    dtype = {"mono8": np.uint8, "16UC1": np.uint16, "32SC1": np.int32}[encoding]
    lab = np.zeros(np.asarray(masks).shape[1:], dtype)
    for mk, v in zip(masks, values):
        lab[np.asarray(mk) > 0] = v
    if encoding == "32SC1":  # not an encoding conversions.numpy_to_image writes
        from sensor_msgs.msg import Image

        img = Image(height=lab.shape[0], width=lab.shape[1], encoding="32SC1", step=lab.shape[1] * 4)
        img.header.stamp, img.header.frame_id = H.stamp_of(ns), H.FRAME_ID
        img.data = lab.astype("<i4").tobytes()
        return img
    return H.image_msg(lab, encoding, ns)


def polygon(mask) -> np.ndarray:
    """(N, 2) float x, y of the largest outer contour of a mask (what yolo_ros publishes per detection)."""
    cs, _ = cv2.findContours(
        (np.asarray(mask) > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    if not cs:
        return np.zeros((0, 2))
    return max(cs, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)


def yolo_array(polygons, class_names, ns: int, size, ids=None, scores=None, class_ids=None, boxes=None):
    """yolo_msgs/DetectionArray; `size` = (width, height) written into each Mask."""
    from yolo_msgs.msg import Detection, DetectionArray, Point2D

    m = DetectionArray()
    m.header.stamp = H.stamp_of(ns)
    m.header.frame_id = H.FRAME_ID
    for j, name in enumerate(class_names):
        d = Detection()
        d.class_name = str(name)
        d.class_id = int(class_ids[j]) if class_ids is not None else 0
        d.score = float(scores[j]) if scores is not None else 0.9
        d.id = str(ids[j]) if ids is not None else ""
        d.mask.width, d.mask.height = int(size[0]), int(size[1])
        d.mask.data = [Point2D(x=float(x), y=float(y)) for x, y in polygons[j]]
        if boxes is not None:
            y1, x1, y2, x2 = boxes[j]
            d.bbox.center.position.x, d.bbox.center.position.y = (x1 + x2) / 2, (y1 + y2) / 2
            d.bbox.size.x, d.bbox.size.y = float(x2 - x1), float(y2 - y1)
        m.detections.append(d)
    return m
