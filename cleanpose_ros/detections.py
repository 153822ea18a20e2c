"""cleanpose_msgs/InstanceSegmentation -> plain arrays (`Detections`), validated against the image size.

Whole-message problems (array lengths that disagree, a label image of the wrong size, an unknown format)
raise `DetectionError`: the frame is skipped. Per-detection problems (a mask that does not fit the image, an
empty mask) drop only that detection and are reported in `Detections.rejected` so the node can log them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cleanpose_ros.conversions import ConversionError, mask_from_image

FORMAT_MASKS = 0
FORMAT_LABEL_IMAGE = 1


class DetectionError(ValueError):
    pass


@dataclass
class Detections:
    masks: np.ndarray  # (n, H, W) bool
    boxes: np.ndarray  # (n, 4) int64 (y1, x1, y2, x2), exclusive max, from the detection's 2D box
    class_ids: list[str]
    scores: np.ndarray  # (n,) float32
    instance_ids: list[str]  # Detection2D.id, or the index in the message when empty
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in message, reason)

    def __len__(self) -> int:
        return len(self.class_ids)

    @staticmethod
    def empty(h: int, w: int) -> Detections:
        return Detections(
            np.zeros((0, h, w), bool), np.zeros((0, 4), np.int64), [], np.zeros(0, np.float32), []
        )


def _hypothesis(det) -> tuple[str, float]:
    if not det.results:
        return "", 0.0
    r = det.results[0]
    hyp = getattr(r, "hypothesis", r)  # vision_msgs >= 3 nests it; older releases do not
    return str(hyp.class_id), float(hyp.score)


def _box_from_bbox(det, h: int, w: int) -> np.ndarray | None:
    bb = det.bbox
    c = bb.center
    cx, cy = (c.position.x, c.position.y) if hasattr(c, "position") else (c.x, c.y)
    if not (bb.size_x > 0 and bb.size_y > 0 and np.isfinite([cx, cy, bb.size_x, bb.size_y]).all()):
        return None
    x1 = int(np.floor(cx - bb.size_x / 2))
    y1 = int(np.floor(cy - bb.size_y / 2))
    x2 = int(np.ceil(cx + bb.size_x / 2))
    y2 = int(np.ceil(cy + bb.size_y / 2))
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if x2 <= x1 or y2 <= y1:
        return None
    return np.array([y1, x1, y2, x2], np.int64)


def _mask_box(mask: np.ndarray) -> np.ndarray | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))  # columns within the set rows only
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.int64)


def parse_instance_segmentation(msg, height: int, width: int, box_source: str = "mask") -> Detections:
    """`box_source`: "mask" uses the mask's extent as the crop box (what the NOCS pipeline's boxes are),
    "detection" uses the Detection2D box and falls back to the mask extent when it is empty/invalid."""
    dets = list(msg.detections)
    n = len(dets)
    h, w = int(height), int(width)
    masks = np.zeros((n, h, w), bool)
    if msg.format == FORMAT_MASKS:
        if len(msg.masks) != n:
            raise DetectionError(f"{n} detections but {len(msg.masks)} masks")
        ox, oy = list(msg.mask_offset_x), list(msg.mask_offset_y)
        if len(ox) != len(oy) or (ox and len(ox) != n):
            raise DetectionError(
                f"mask offsets must be empty or one per detection: {n} detections, "
                f"{len(ox)} mask_offset_x, {len(oy)} mask_offset_y"
            )
        ox = ox or [0] * n
        oy = oy or [0] * n
        rejected = []
        for j, m in enumerate(msg.masks):
            try:
                arr = mask_from_image(m, copy=False)  # read once, straight into masks[j]
            except ConversionError as e:
                rejected.append((j, f"mask: {e}"))
                continue
            mh, mw = arr.shape[:2]
            x0, y0 = int(ox[j]), int(oy[j])
            if x0 + mw > w or y0 + mh > h:
                rejected.append((j, f"mask {mw}x{mh} at offset ({x0}, {y0}) does not fit the {w}x{h} image"))
                continue
            np.greater(arr, 0, out=masks[j, y0 : y0 + mh, x0 : x0 + mw])
    elif msg.format == FORMAT_LABEL_IMAGE:
        try:
            label = mask_from_image(msg.label_image, copy=False)
        except ConversionError as e:
            raise DetectionError(f"label image: {e}") from None
        if label.shape != (h, w):
            raise DetectionError(f"label image is {label.shape[1]}x{label.shape[0]}, image is {w}x{h}")
        if n:
            masks = label[None] == np.arange(1, n + 1, dtype=label.dtype).reshape(-1, 1, 1)
        rejected = []
    else:
        raise DetectionError(f"unknown format {msg.format} (0 = FORMAT_MASKS, 1 = FORMAT_LABEL_IMAGE)")

    bad = {j for j, _ in rejected}
    boxes = np.zeros((n, 4), np.int64)
    class_ids, scores, inst = [], np.zeros(n, np.float32), []
    for j, d in enumerate(dets):
        cid, score = _hypothesis(d)
        class_ids.append(cid)
        scores[j] = score if np.isfinite(score) else 0.0
        inst.append(str(d.id) if d.id else str(j))
        if j in bad:
            continue
        box = _box_from_bbox(d, h, w) if box_source == "detection" else None
        if box is None:
            box = _mask_box(masks[j])
        if box is None:
            rejected.append((j, "empty mask"))
            bad.add(j)
            continue
        boxes[j] = box
    if not bad:  # the common case: no (n, H, W) copy
        return Detections(masks, boxes, class_ids, scores, inst, rejected=sorted(rejected))
    keep = [j for j in range(n) if j not in bad]
    return Detections(
        masks=masks[keep],
        boxes=boxes[keep],
        class_ids=[class_ids[j] for j in keep],
        scores=scores[keep],
        instance_ids=[inst[j] for j in keep],
        rejected=sorted(rejected),
    )
