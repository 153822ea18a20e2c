"""cleanpose_msgs/InstanceSegmentation -> plain arrays (`Detections`), validated against the image size.

Whole-message problems (array lengths that disagree, a label image of the wrong size or with labels beyond
the detections, an unknown format) raise `DetectionError`: the frame is skipped. Per-detection problems (a
mask that does not fit the image, a smaller mask without offsets, an empty mask, more detections than
`max_detections`) drop only that detection and are reported in `Detections.rejected` (index, kind, text) so
the node can log and count them.
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
    # (index in the message, reason kind, reason text) of each detection left out
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    index: list[int] | None = None  # index in the message of each detection kept (None: all, in order)

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


def select_detections(
    scores: list[float], max_detections: int | None
) -> tuple[list[int], list[tuple[int, str, str]]]:
    """Indices read (all, or the `max_detections` highest scores in message order) and the rest rejected."""
    n = len(scores)
    if max_detections is None or n <= max_detections:
        return list(range(n)), []
    sc = [v if np.isfinite(v) else 0.0 for v in scores]
    sel = sorted(sorted(range(n), key=lambda j: -sc[j])[:max_detections])
    chosen = set(sel)
    rej = [
        (j, "over_max_detections", f"beyond max_detections {max_detections} (lower score)")
        for j in range(n)
        if j not in chosen
    ]
    return sel, rej


def assemble_detections(sel, masks, classes, scores, ids, det_boxes, rejected, bad) -> Detections:
    """Detections of the selected detections `sel` (message indices) with `masks[k]` for sel[k]; those in
    `bad` (positions in sel) or with an empty mask are left out. `det_boxes[k]`: the detection's own crop
    box, or None for the mask's extent."""
    n = len(sel)
    boxes = np.zeros((n, 4), np.int64)
    for k, j in enumerate(sel):
        if k in bad:
            continue
        box = det_boxes[k] if det_boxes[k] is not None else _mask_box(masks[k])
        if box is None:
            rejected.append((j, "empty_mask", "empty mask"))
            bad.add(k)
            continue
        boxes[k] = box
    rejected.sort()
    if not bad and sel == list(range(n)):  # the common case: every detection kept, no (n, H, W) copy
        scores = np.asarray(scores, np.float32).reshape(-1)
        return Detections(masks, boxes, list(classes), scores, list(ids), rejected=rejected)
    keep = [k for k in range(n) if k not in bad]
    return Detections(
        masks=masks[keep],
        boxes=boxes[keep],
        class_ids=[classes[k] for k in keep],
        scores=np.asarray([scores[k] for k in keep], np.float32).reshape(-1),
        instance_ids=[ids[k] for k in keep],
        rejected=rejected,
        index=[sel[k] for k in keep],
    )


def parse_instance_segmentation(
    msg, height: int, width: int, box_source: str = "mask", max_detections: int | None = None
) -> Detections:
    """`box_source`: "mask" uses the mask's extent as the crop box (what the NOCS pipeline's boxes are),
    "detection" uses the Detection2D box and falls back to the mask extent when it is empty/invalid.
    `max_detections`: at most this many detections are read (the highest scores; the rest are rejected as
    "over_max_detections"), which bounds the (n, H, W) masks of a message with hundreds of detections."""
    to_detections = getattr(msg, "to_detections", None)
    if to_detections is not None:  # a standard segmenter's message (segmenters.py) converts itself
        return to_detections(height, width, box_source, max_detections)
    dets = list(msg.detections)
    n_msg = len(dets)
    h, w = int(height), int(width)
    hyps = [_hypothesis(d) for d in dets]
    if msg.format == FORMAT_MASKS and len(msg.masks) != n_msg:
        raise DetectionError(f"{n_msg} detections but {len(msg.masks)} masks")
    sel, rejected = select_detections([s for _, s in hyps], max_detections)
    n = len(sel)
    masks = np.zeros((n, h, w), bool)
    bad = set()  # positions in `sel`
    if msg.format == FORMAT_MASKS:
        ox, oy = list(msg.mask_offset_x), list(msg.mask_offset_y)
        if len(ox) != len(oy) or (ox and len(ox) != n_msg):
            raise DetectionError(
                f"mask offsets must be empty or one per detection: {n_msg} detections, "
                f"{len(ox)} mask_offset_x, {len(oy)} mask_offset_y"
            )
        for k, j in enumerate(sel):
            try:
                arr = mask_from_image(msg.masks[j], copy=False)  # read once, straight into masks[k]
            except ConversionError as e:
                rejected.append((j, "bad_mask", f"mask: {e}"))
                bad.add(k)
                continue
            mh, mw = arr.shape[:2]
            if not ox and (mh, mw) != (h, w):
                # The message definition: empty offsets mean full-size masks. A smaller mask without offsets
                # has no defined place in the image (placing it at (0, 0) gave a pose 43.6 cm off).
                rejected.append(
                    (j, "mask_no_offsets", f"mask {mw}x{mh} is not the {w}x{h} image size and has no offsets")
                )
                bad.add(k)
                continue
            x0, y0 = (int(ox[j]), int(oy[j])) if ox else (0, 0)
            if x0 < 0 or y0 < 0 or x0 + mw > w or y0 + mh > h:
                rejected.append(
                    (
                        j,
                        "mask_outside",
                        f"mask {mw}x{mh} at offset ({x0}, {y0}) does not fit the {w}x{h} image",
                    )
                )
                bad.add(k)
                continue
            np.greater(arr, 0, out=masks[k, y0 : y0 + mh, x0 : x0 + mw])
    elif msg.format == FORMAT_LABEL_IMAGE:
        try:
            label = mask_from_image(msg.label_image, copy=False)
        except ConversionError as e:
            raise DetectionError(f"label image: {e}") from None
        if label.shape != (h, w):
            raise DetectionError(f"label image is {label.shape[1]}x{label.shape[0]}, image is {w}x{h}")
        top = int(label.max()) if label.size else 0
        if top > n_msg:
            # a segment without a detection: the label image and the detection list do not belong together
            raise DetectionError(f"label image has label {top} but the message has {n_msg} detections")
        if n:
            masks = label[None] == (np.asarray(sel, dtype=label.dtype) + 1).reshape(-1, 1, 1)
    else:
        raise DetectionError(f"unknown format {msg.format} (0 = FORMAT_MASKS, 1 = FORMAT_LABEL_IMAGE)")

    classes = [hyps[j][0] for j in sel]
    scores = [hyps[j][1] if np.isfinite(hyps[j][1]) else 0.0 for j in sel]
    ids = [str(dets[j].id) if dets[j].id else str(j) for j in sel]
    det_boxes = [_box_from_bbox(dets[j], h, w) if box_source == "detection" else None for j in sel]
    return assemble_detections(sel, masks, classes, scores, ids, det_boxes, rejected, bad)
