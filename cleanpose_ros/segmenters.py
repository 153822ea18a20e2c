"""Standard segmenter messages -> the node's per-object `Detections` (beside InstanceSegmentation).

No ROS imports: the converters read message fields only (tests build plain objects).

`LabelledDetections`: vision_msgs/Detection2DArray + an instance-label image (sensor_msgs/Image mono8, 8UC1,
    mono16, 16UC1 or 32SC1, the colour image's size). vision_msgs carries no masks; it asks consumers to pair
    a detection message with its source data by header (approximate time sync) and defines
    `Detection2D.id` as the identity "used for consistency across multiple detection messages". So:
      label_values "id" (default): a detection's pixels are those whose label equals int(Detection2D.id);
      label_values "index": detections[k] owns label k + 1 (the layout of InstanceSegmentation's label image).
    0 (and <= 0 in 32SC1) is background, and so is the dtype's maximum (255 / 65535), vision_msgs'
    "UNLABELED" value (LabelInfo). The class is results[0].hypothesis.class_id (mapped through the class map).
    A detection whose id is no integer or whose label value is out of the image's range is left out (counted);
    pixels with a label no detection names are ignored and reported once per frame.
`YoloDetections`: yolo_ros' yolo_msgs/DetectionArray. Each Detection's mask is the polygon of its outline
    (`Mask.data`, points in pixels of a `Mask.width` x `Mask.height` image; scaled to the colour image when
    they differ); it is filled with cv2.fillPoly. The class is `class_name` (mapped through the class map, so
    COCO names work: "cup:mug" is in the default map), `str(class_id)` when the name is empty. A detection
    without a polygon (a detection-only model: use a -seg one), with non-finite points or a polygon that
    covers no pixel of the image is left out (counted).

Both objects keep `header` and `detections` of the message (the worker reads the detector's ids from
`detections[j].id`) and `to_detections()`, which `detections.parse_instance_segmentation` calls for them.
"""

from __future__ import annotations

import contextlib

import cv2
import numpy as np

from cleanpose_ros.detections import (
    DetectionError,
    Detections,
    _box_from_bbox,
    _hypothesis,
    assemble_detections,
    select_detections,
)

LABEL_VALUES = ("id", "index")
# label image encoding -> dtype (instance ids beyond 65535 need 32SC1)
_LABEL_ENCODINGS = {
    "mono8": np.uint8,
    "8uc1": np.uint8,
    "mono16": np.uint16,
    "16uc1": np.uint16,
    "32sc1": np.int32,
}


def label_from_image(msg) -> np.ndarray:
    """Label Image -> (H, W) array of its dtype (native byte order; a view where the layout allows)."""
    enc = str(msg.encoding).lower()
    if enc not in _LABEL_ENCODINGS:
        raise DetectionError(
            f"label image encoding '{msg.encoding}' not supported (mono8, 8UC1, mono16, 16UC1, 32SC1)"
        )
    dt = np.dtype(_LABEL_ENCODINGS[enc])
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise DetectionError(f"label image is empty ({w}x{h})")
    if step < w * dt.itemsize:
        raise DetectionError(f"label image step {step} < width*itemsize = {w * dt.itemsize}")
    data = msg.data
    buf = np.asarray(data, np.uint8) if isinstance(data, list) else np.frombuffer(data, np.uint8)
    if buf.size < step * h:
        raise DetectionError(f"label image has {buf.size} bytes, expected step*height = {step * h}")
    rows = np.ascontiguousarray(buf[: step * h].reshape(h, step)[:, : w * dt.itemsize])
    if dt.itemsize > 1:
        rows = rows.view(dt.newbyteorder(">" if msg.is_bigendian else "<")).astype(dt, copy=False)
    else:
        rows = rows.view(dt)
    return rows.reshape(h, w)


class _DetectionArray:
    """What both converters share: the message's header and detections, and `to_detections`, which reads the
    selected detections through the subclass's `_hypotheses(dets)` ((class, score) of every detection),
    `_masks(dets, sel, rejected, h, w)` (the selected ones' masks and the positions in `sel` left out, their
    reasons appended to `rejected`) and `_box(det, h, w)` (the detection's own crop box or None)."""

    def __init__(self, msg):
        self.msg = msg
        self.header = msg.header
        self.detections = msg.detections

    def to_detections(
        self, height: int, width: int, box_source: str = "mask", max_detections: int | None = None
    ) -> Detections:
        h, w = int(height), int(width)
        dets = list(self.detections)
        hyps = self._hypotheses(dets)
        sel, rejected = select_detections([s for _, s in hyps], max_detections)
        masks, bad = self._masks(dets, sel, rejected, h, w)
        classes = [hyps[j][0] for j in sel]
        scores = [hyps[j][1] if np.isfinite(hyps[j][1]) else 0.0 for j in sel]
        ids = [str(dets[j].id) if dets[j].id else str(j) for j in sel]
        det_boxes = [self._box(dets[j], h, w) if box_source == "detection" else None for j in sel]
        return assemble_detections(sel, masks, classes, scores, ids, det_boxes, rejected, bad)


class LabelledDetections(_DetectionArray):
    """vision_msgs/Detection2DArray + its instance-label image (see the module text)."""

    def __init__(self, detections_msg, label_msg, label_values: str = "id"):
        if label_values not in LABEL_VALUES:
            raise ValueError(f"label_values '{label_values}' is not one of {LABEL_VALUES}")
        super().__init__(detections_msg)
        self.label_msg, self.label_values = label_msg, label_values

    _box = staticmethod(_box_from_bbox)

    def _hypotheses(self, dets) -> list[tuple[str, float]]:
        return [_hypothesis(d) for d in dets]

    def _masks(self, dets, sel, rejected: list, h: int, w: int) -> tuple[np.ndarray, set[int]]:
        label = label_from_image(self.label_msg)
        if label.shape != (h, w):
            raise DetectionError(f"label image is {label.shape[1]}x{label.shape[0]}, image is {w}x{h}")
        top = np.iinfo(label.dtype).max  # vision_msgs' UNLABELED
        values = np.zeros(len(sel), np.int64)
        bad: set[int] = set()
        seen: dict[int, int] = {}
        for k, j in enumerate(sel):
            if self.label_values == "index":
                v = j + 1
            else:
                try:
                    v = int(str(dets[j].id).strip())
                except ValueError:
                    rejected.append(
                        (j, "bad_label_id", f"id '{dets[j].id}' is not an integer label (label_values 'id')")
                    )
                    bad.add(k)
                    continue
            if not 0 < v < top:
                rejected.append(
                    (j, "label_out_of_range", f"label {v} is outside 1..{top - 1} of the {label.dtype} image")
                )
                bad.add(k)
                continue
            if v in seen:
                rejected.append((j, "duplicate_label", f"label {v} is already detection {seen[v]}'s"))
                bad.add(k)
                continue
            seen[v] = j
            values[k] = v
        masks = label[None] == values.astype(label.dtype).reshape(-1, 1, 1)
        if bad:
            masks[sorted(bad)] = False
        # labels no detection names: ignored, reported (a detection list filtered after the label image was
        # made, e.g. by score, leaves such pixels)
        present = self._present(label, top)
        orphan = sorted(set(present) - self._named(dets))
        if orphan:
            shown = ", ".join(map(str, orphan[:8])) + (", ..." if len(orphan) > 8 else "")
            rejected.append((-1, "label_without_detection", f"label value(s) {shown} have no detection"))
        return masks, bad

    def _named(self, dets) -> set[int]:
        """Label values the message's detections name (also those left out: reported as such already)."""
        if self.label_values == "index":
            return set(range(1, len(dets) + 1))
        named = set()
        for d in dets:
            with contextlib.suppress(ValueError):
                named.add(int(str(d.id).strip()))
        return named

    @staticmethod
    def _present(label: np.ndarray, top: int) -> list[int]:
        if label.dtype == np.int32:
            vals = np.unique(label)
        else:  # bincount: far cheaper than a sort for 8/16-bit labels
            vals = np.flatnonzero(np.bincount(label.reshape(-1), minlength=1))
        return [int(v) for v in vals if 0 < v < top]


class YoloDetections(_DetectionArray):
    """yolo_msgs/DetectionArray (see the module text)."""

    def _hypotheses(self, dets) -> list[tuple[str, float]]:
        return [(str(d.class_name) or str(d.class_id), float(d.score)) for d in dets]

    def _masks(self, dets, sel, rejected: list, h: int, w: int) -> tuple[np.ndarray, set[int]]:
        masks = np.zeros((len(sel), h, w), bool)
        bad: set[int] = set()
        for k, j in enumerate(sel):
            why = self._fill(dets[j].mask, masks[k].view(np.uint8), h, w)
            if why is not None:
                rejected.append((j, *why))
                bad.add(k)
        return masks, bad

    @staticmethod
    def _fill(mask, out: np.ndarray, h: int, w: int) -> tuple[str, str] | None:
        """Fill the mask's polygon into `out` (uint8 view of one bool mask); (kind, reason) when it cannot."""
        pts = mask.data
        if len(pts) < 3:
            return "no_polygon", (
                f"mask polygon has {len(pts)} point(s), 3 needed (a detection-only model? use a -seg one)"
            )
        xy = np.array([(p.x, p.y) for p in pts], np.float64)
        if not np.isfinite(xy).all():
            return "bad_polygon", "mask polygon has non-finite points"
        mw, mh = int(mask.width), int(mask.height)
        if mw > 0 and mh > 0 and (mw, mh) != (w, h):  # points of a resized image: back to this one's pixels
            xy *= (w / mw, h / mh)
        # fillPoly takes int32 pixel centres; it clips what lies outside the image
        cv2.fillPoly(out, [np.round(xy).astype(np.int32).reshape(-1, 1, 2)], 1)
        return None

    @staticmethod
    def _box(det, h: int, w: int) -> np.ndarray | None:
        bb = det.bbox
        cx, cy, sx, sy = bb.center.position.x, bb.center.position.y, bb.size.x, bb.size.y
        if not (sx > 0 and sy > 0 and np.isfinite([cx, cy, sx, sy]).all()):
            return None
        x1, y1 = max(int(np.floor(cx - sx / 2)), 0), max(int(np.floor(cy - sy / 2)), 0)
        x2, y2 = min(int(np.ceil(cx + sx / 2)), w), min(int(np.ceil(cy + sy / 2)), h)
        if x2 <= x1 or y2 <= y1:
            return None
        return np.array([y1, x1, y2, x2], np.int64)
