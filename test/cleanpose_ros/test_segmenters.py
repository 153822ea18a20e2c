"""cleanpose_ros.segmenters: vision_msgs Detection2DArray + label image and yolo_msgs DetectionArray ->
Detections, on the real message types, including malformed inputs."""

from __future__ import annotations

import numpy as np
import pytest
import segmenter_msgs as S

from cleanpose_ros.detections import DetectionError, parse_instance_segmentation
from cleanpose_ros.segmenters import LabelledDetections, YoloDetections, label_from_image

H_, W_ = 40, 60
NS = 1_000_000_000


def _masks():
    m = np.zeros((3, H_, W_), bool)
    m[0, 5:15, 5:20] = True
    m[1, 20:35, 10:25] = True
    m[2, 8:30, 35:55] = True
    return m


@pytest.mark.parametrize("encoding", ["mono8", "16UC1", "32SC1"])
def test_label_image_by_id(encoding):
    masks = _masks()
    ids = [7, 3, 250] if encoding == "mono8" else [7, 3, 40000]
    det = LabelledDetections(
        S.detection2d_array(["mug", "bowl", "can"], NS, ids=ids, scores=[0.9, 0.8, 0.7]),
        S.label_image(masks, ids, NS, encoding),
        "id",
    )
    out = parse_instance_segmentation(det, H_, W_)  # the node's entry point dispatches to the converter
    assert out.class_ids == ["mug", "bowl", "can"] and out.instance_ids == [str(i) for i in ids]
    np.testing.assert_array_equal(out.masks, masks)
    np.testing.assert_allclose(out.scores, [0.9, 0.8, 0.7], rtol=1e-6)
    assert out.boxes[0].tolist() == [5, 5, 15, 20] and out.rejected == []
    assert det.header.stamp.sec == 1 and det.detections[1].id == "3"


def test_label_image_by_index_and_unlabeled_value_is_background():
    masks = _masks()
    lab = S.label_image(masks, [1, 2, 3], NS, "mono8")
    arr = np.frombuffer(bytes(lab.data), np.uint8).reshape(H_, W_).copy()
    arr[0, :] = 255  # vision_msgs' UNLABELED (dtype maximum): background, not a detection
    lab.data = arr.tobytes()
    out = LabelledDetections(S.detection2d_array(["mug", "bowl", "can"], NS), lab, "index").to_detections(
        H_, W_
    )
    np.testing.assert_array_equal(out.masks, masks)
    assert out.instance_ids == ["0", "1", "2"] and out.rejected == []


def test_label_malformed_inputs_are_named():
    masks = _masks()
    # id that is no integer, id beyond mono8, duplicate id: those detections left out, the rest kept
    det = LabelledDetections(
        S.detection2d_array(["mug", "bowl", "can", "mug"], NS, ids=["a", 300, 5, 5]),
        S.label_image(masks, [9, 9, 5], NS, "mono8"),
        "id",
    )
    out = det.to_detections(H_, W_)
    kinds = {(j, k) for j, k, _ in out.rejected}
    assert kinds == {
        (0, "bad_label_id"),
        (1, "label_out_of_range"),
        (3, "duplicate_label"),
        (-1, "label_without_detection"),
    }
    assert out.index == [2] and out.class_ids == ["can"]
    np.testing.assert_array_equal(out.masks[0], masks[2])
    assert "9" in next(t for j, k, t in out.rejected if k == "label_without_detection")
    # a detection whose label has no pixel: empty mask
    out = LabelledDetections(
        S.detection2d_array(["mug"], NS, ids=[4]), S.label_image(masks[:1], [1], NS, "mono8"), "id"
    ).to_detections(H_, W_)
    assert [(j, k) for j, k, _ in out.rejected] == [(-1, "label_without_detection"), (0, "empty_mask")]
    assert len(out) == 0
    # whole-message problems skip the frame
    with pytest.raises(DetectionError, match="label image is 60x40, image is 30x40"):
        LabelledDetections(
            S.detection2d_array([], NS), S.label_image(masks, [1, 2, 3], NS), "id"
        ).to_detections(H_, 30)
    bad = S.label_image(masks, [1, 2, 3], NS, "mono8")
    bad.encoding = "rgb8"
    with pytest.raises(DetectionError, match="encoding 'rgb8'"):
        label_from_image(bad)
    bad = S.label_image(masks, [1, 2, 3], NS, "16UC1")
    bad.data = bytes(bad.data)[:100]
    with pytest.raises(DetectionError, match="bytes"):
        label_from_image(bad)
    with pytest.raises(ValueError, match="label_values"):
        LabelledDetections(S.detection2d_array([], NS), bad, "colour")


def test_yolo_polygons_fill_masks():
    masks = _masks()
    polys = [S.polygon(m) for m in masks]
    msg = S.yolo_array(
        polys,
        ["cup", "bowl", ""],
        NS,
        (W_, H_),
        ids=["", "t9", ""],
        class_ids=[41, 45, 39],
        scores=[0.5, 0.6, 0.7],
    )
    out = parse_instance_segmentation(YoloDetections(msg), H_, W_)
    # class_name, str(class_id) when the name is empty; the detector's id, else the index
    assert out.class_ids == ["cup", "bowl", "39"] and out.instance_ids == ["0", "t9", "2"]
    # a polygon through the outer boundary pixels fills the rectangle exactly
    np.testing.assert_array_equal(out.masks, masks)
    np.testing.assert_allclose(out.scores, [0.5, 0.6, 0.7], rtol=1e-6)


def test_yolo_polygons_of_a_resized_image_are_scaled():
    m = np.zeros((1, H_, W_), bool)
    m[0, 10:30, 20:40] = True
    poly = np.array([[10, 5], [20, 5], [20, 15], [10, 15]], float)  # the same box in a half-size image
    out = YoloDetections(S.yolo_array([poly], ["mug"], NS, (W_ // 2, H_ // 2))).to_detections(H_, W_)
    assert out.boxes[0].tolist() == [10, 20, 31, 41]  # the scaled corners are filled inclusively


def test_yolo_malformed_inputs_are_named():
    ok = np.array([[2, 2], [10, 2], [10, 10], [2, 10]], float)
    polys = [
        np.zeros((0, 2)),
        np.array([[1, 1], [5, 5]], float),
        np.array([[1, 1], [np.nan, 5], [5, 1]]),
        np.array([[-50, -50], [-40, -50], [-40, -40]], float),
        ok,
    ]
    msg = S.yolo_array(polys, ["mug"] * 5, NS, (W_, H_))
    out = YoloDetections(msg).to_detections(H_, W_)
    assert [(j, k) for j, k, _ in out.rejected] == [
        (0, "no_polygon"),
        (1, "no_polygon"),
        (2, "bad_polygon"),
        (3, "empty_mask"),
    ]
    assert out.index == [4] and out.masks[0].sum() == 81
    assert "-seg" in out.rejected[0][2]


def test_max_detections_and_detection_boxes():
    masks = _masks()
    polys = [S.polygon(m) for m in masks]
    boxes = [(4, 4, 16, 21), (19, 9, 36, 26), (7, 34, 31, 56)]
    msg = S.yolo_array(polys, ["a", "b", "c"], NS, (W_, H_), scores=[0.2, 0.9, 0.5], boxes=boxes)
    out = YoloDetections(msg).to_detections(H_, W_, "detection", max_detections=2)
    assert out.index == [1, 2] and [k for _, k, _ in out.rejected] == ["over_max_detections"]
    assert out.boxes.tolist() == [list(b) for b in boxes[1:]]
    det = LabelledDetections(
        S.detection2d_array(["a", "b", "c"], NS, ids=[1, 2, 3], scores=[0.2, 0.9, 0.5], boxes=boxes),
        S.label_image(masks, [1, 2, 3], NS),
        "id",
    )
    out = det.to_detections(H_, W_, "detection", max_detections=2)
    assert out.index == [1, 2] and out.boxes.tolist() == [list(b) for b in boxes[1:]]
    # the dropped detection's label is named by it: reported as over_max_detections only
    assert [k for _, k, _ in out.rejected] == ["over_max_detections"]
