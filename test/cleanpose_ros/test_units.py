"""Node building blocks without a DDS graph: conversions, detection parsing, sync, class map, parameters,
markers, TF lookups."""

from __future__ import annotations

import numpy as np
import pytest
from ros_harness import detections_msg, image_msg, info_msg

from cleanpose_ros import conversions as conv
from cleanpose_ros.class_map import ClassMap, ClassMapError
from cleanpose_ros.detections import DetectionError, parse_instance_segmentation
from cleanpose_ros.sync import _ApproxSync

NOCS = ["bottle", "bowl", "camera", "can", "laptop", "mug"]


def test_colour_encodings_round_trip_to_rgb():
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    variants = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.dstack([rgb, np.full((12, 16), 7, np.uint8)]),
        "bgra8": np.dstack([rgb[:, :, ::-1], np.full((12, 16), 7, np.uint8)]),
    }
    for enc, arr in variants.items():
        np.testing.assert_array_equal(conv.rgb_from_image(image_msg(np.ascontiguousarray(arr), enc, 0)), rgb)


def test_depth_encodings_and_invalid_values():
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    np.testing.assert_allclose(conv.depth_from_image(image_msg(mm, "16UC1", 0)), mm / 1000.0, rtol=1e-6)
    m = np.array([[np.nan, 1.5], [np.inf, -2.0]], np.float32)
    np.testing.assert_array_equal(conv.depth_from_image(image_msg(m, "32FC1", 0)), [[0, 1.5], [0, 0]])


def test_padded_step_and_big_endian():
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
    msg = image_msg(arr, "16UC1", 0)
    msg.step = 10  # 2 bytes of padding per row
    msg.data = b"".join(arr[r].tobytes() + b"\0\0" for r in range(3))
    np.testing.assert_array_equal(conv.image_to_numpy(msg), arr)
    msg = image_msg(arr, "16UC1", 0)
    msg.is_bigendian = 1
    msg.data = arr.astype(">u2").tobytes()
    np.testing.assert_array_equal(conv.image_to_numpy(msg), arr)


def test_views_copies_and_image_data():
    arr = np.arange(24, dtype=np.uint16).reshape(4, 6)
    msg = image_msg(arr, "16UC1", 0)
    # numpy_to_image fills the message's array.array with the array's bytes (one memcpy, no setter).
    assert msg.data.typecode == "B" and msg.data.tobytes() == arr.tobytes() and msg.step == 12
    copy = conv.image_to_numpy(msg)
    view = conv.image_to_numpy(msg, copy=False)
    np.testing.assert_array_equal(copy, arr)
    np.testing.assert_array_equal(view, arr)
    assert copy.flags.writeable and not np.shares_memory(copy, np.frombuffer(msg.data, np.uint8))
    assert not view.flags.writeable and np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    msg.is_bigendian = 1  # foreign byte order: a native copy even when a view is asked for
    msg.data = arr.astype(">u2").tobytes()
    swapped = conv.image_to_numpy(msg, copy=False)
    np.testing.assert_array_equal(swapped, arr)
    assert swapped.dtype.isnative and swapped.flags.writeable


def test_batched_quaternions_equal_per_matrix():
    """The node converts all objects of a frame in one call; the numbers must be those of one call per
    object (the poses it published before), bit for bit, also for float32-rounded (not quite orthonormal)
    network rotations."""
    from scipy.spatial.transform import Rotation

    from cleanpose_ros.geometry_utils import quat_xyzw

    R = Rotation.random(64, random_state=3).as_matrix()
    for mats in (R, R.astype(np.float32).astype(np.float64), R * 1.001):
        batch = quat_xyzw(mats)
        assert batch.shape == (64, 4)
        assert np.array_equal(batch, np.stack([quat_xyzw(m) for m in mats]))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "encoding .yuv422. not supported"),
        (lambda m: setattr(m, "data", bytes(10)), "expected step\\*height"),
        (lambda m: setattr(m, "step", 3), "step 3 <"),
        (lambda m: setattr(m, "height", 0), "empty image"),
    ],
)
def test_image_errors_are_clear(mutate, match):
    msg = image_msg(np.zeros((4, 5, 3), np.uint8), "rgb8", 0)
    mutate(msg)
    with pytest.raises(conv.ConversionError, match=match):
        conv.rgb_from_image(msg)


def test_wrong_kind_of_encoding():
    with pytest.raises(conv.ConversionError, match="colour image encoding '16UC1'"):
        conv.rgb_from_image(image_msg(np.zeros((2, 2), np.uint16), "16UC1", 0))
    with pytest.raises(conv.ConversionError, match="depth encoding 'rgb8'"):
        conv.depth_from_image(image_msg(np.zeros((2, 2, 3), np.uint8), "rgb8", 0))


def test_camera_info():
    K = np.array([[500.0, 0, 80], [0, 501, 60], [0, 0, 1]])
    np.testing.assert_array_equal(conv.camera_info_to_K(info_msg(K, 160, 120)), K)
    with pytest.raises(conv.ConversionError, match="not a valid intrinsic"):
        conv.camera_info_to_K(info_msg(np.zeros((3, 3)), 160, 120))


def _masks(h=40, w=50):
    m = np.zeros((2, h, w), bool)
    m[0, 5:15, 10:30] = True
    m[1, 20:35, 2:12] = True
    return m


def test_full_size_masks_and_label_image_agree():
    m = _masks()
    a = parse_instance_segmentation(detections_msg(m, ["mug", "3"], 0, ids=["7", ""]), 40, 50)
    b = parse_instance_segmentation(
        detections_msg(m, ["mug", "3"], 0, ids=["7", ""], label_image=True), 40, 50
    )
    for d in (a, b):
        np.testing.assert_array_equal(d.masks, m)
        assert d.boxes.tolist() == [[5, 10, 15, 30], [20, 2, 35, 12]]
        assert d.class_ids == ["mug", "3"] and d.instance_ids == ["7", "1"] and not d.rejected


def test_box_sized_masks_with_offsets():
    m = _masks()
    msg = detections_msg(m, ["mug", "can"], 0)
    msg.masks = [
        image_msg(m[0, 5:15, 10:30].astype(np.uint8), "mono8", 0),
        image_msg(m[1, 20:35, 2:12].astype(np.uint8), "mono8", 0),
    ]
    msg.mask_offset_x, msg.mask_offset_y = [10, 2], [5, 20]
    np.testing.assert_array_equal(parse_instance_segmentation(msg, 40, 50).masks, m)


def test_detection_box_source():
    m = _masks()
    msg = detections_msg(m, ["mug", "can"], 0, boxes=[(4, 9, 16, 31), (0, 0, 0, 0)])
    d = parse_instance_segmentation(msg, 40, 50, box_source="detection")
    assert d.boxes.tolist() == [[4, 9, 16, 31], [20, 2, 35, 12]]  # the empty box falls back to the mask


def test_bad_detection_messages():
    m = _masks()
    msg = detections_msg(m, ["mug", "can"], 0)
    msg.masks = msg.masks[:1]
    with pytest.raises(DetectionError, match="2 detections but 1 masks"):
        parse_instance_segmentation(msg, 40, 50)
    msg = detections_msg(m, ["mug", "can"], 0)
    msg.mask_offset_x = [0]
    with pytest.raises(DetectionError, match="offsets"):
        parse_instance_segmentation(msg, 40, 50)
    msg = detections_msg(m, ["mug", "can"], 0, label_image=True)
    msg.label_image = image_msg(np.zeros((10, 10), np.uint8), "mono8", 0)
    with pytest.raises(DetectionError, match="label image is 10x10"):
        parse_instance_segmentation(msg, 40, 50)
    # per-detection problems drop only that detection
    msg = detections_msg(m, ["mug", "can"], 0)
    msg.masks[0] = image_msg(np.ones((60, 60), np.uint8), "mono8", 0)
    msg.masks[1] = image_msg(np.zeros((40, 50), np.uint8), "mono8", 0)
    d = parse_instance_segmentation(msg, 40, 50)
    assert [(j, kind) for j, kind, _ in d.rejected] == [(0, "mask_no_offsets"), (1, "empty_mask")]
    assert len(d) == 0 and "60x60 is not the 50x40 image size" in d.rejected[0][2]
    msg.mask_offset_x, msg.mask_offset_y = [0, 0], [0, 0]  # with offsets: it overflows the image
    assert "does not fit" in parse_instance_segmentation(msg, 40, 50).rejected[0][2]


def test_smaller_mask_without_offsets_is_rejected_not_placed_at_the_origin():
    """The message definition: empty offsets mean full-size masks. A box-sized mask without offsets has no
    place in the image; it used to be put at (0, 0) and estimated (a pose 43.6 cm off)."""
    m = _masks()
    msg = detections_msg(m, ["mug", "can"], 0)
    msg.masks[0] = image_msg(m[0, 5:15, 10:30].astype(np.uint8), "mono8", 0)
    d = parse_instance_segmentation(msg, 40, 50)
    assert d.class_ids == ["can"] and d.index == [1]
    np.testing.assert_array_equal(d.masks[0], m[1])
    assert [(j, kind) for j, kind, _ in d.rejected] == [(0, "mask_no_offsets")]
    assert "20x10 is not the 50x40 image size" in d.rejected[0][2]
    # an offset that pushes the mask past the border does not fit
    msg = detections_msg(m, ["mug", "can"], 0)
    msg.mask_offset_x, msg.mask_offset_y = [1, 0], [0, 0]
    assert [kind for _, kind, _ in parse_instance_segmentation(msg, 40, 50).rejected] == ["mask_outside"]


def test_label_image_with_a_label_beyond_the_detections_is_refused():
    m = _masks()
    msg = detections_msg(m, ["mug", "can"], 0, label_image=True)
    lab = np.zeros((40, 50), np.uint8)
    lab[0, 0] = 3
    msg.label_image = image_msg(lab, "mono8", 0)
    with pytest.raises(DetectionError, match="label 3 but the message has 2 detections"):
        parse_instance_segmentation(msg, 40, 50)


@pytest.mark.parametrize("label_image", [False, True])
def test_max_detections_keeps_the_highest_scores(label_image):
    m = np.zeros((5, 40, 50), bool)
    for j in range(5):
        m[j, 2 * j : 2 * j + 2, 0:10] = True
    msg = detections_msg(m, ["mug"] * 5, 0, scores=[0.1, 0.9, 0.5, 0.8, 0.2], label_image=label_image)
    d = parse_instance_segmentation(msg, 40, 50, max_detections=2)
    assert d.index == [1, 3] and d.instance_ids == ["1", "3"]
    np.testing.assert_array_equal(d.masks, m[[1, 3]])
    assert [(j, kind) for j, kind, _ in d.rejected] == [(j, "over_max_detections") for j in (0, 2, 4)]


def _msg(ns):
    from std_msgs.msg import Header

    from cleanpose_ros.conversions import numpy_to_image

    return numpy_to_image(
        np.zeros((1, 1), np.uint8), "mono8", Header(stamp=__import__("ros_harness").stamp_of(ns))
    )


def test_approx_sync_pairs_within_slop_and_is_bounded():
    s = _ApproxSync(3, queue_size=4, slop=0.010)
    out = []
    s.registerCallback(lambda *m: out.append([x.header.stamp.nanosec for x in m]))
    s.add(_msg(1_000_000), 0)
    s.add(_msg(4_000_000), 1)
    assert not out
    s.add(_msg(30_000_000), 2)  # 29 ms from the others: no set
    assert not out
    s.add(_msg(2_000_000), 2)
    assert out == [[1_000_000, 4_000_000, 2_000_000]]
    assert s.pending() == 1  # the unmatched 30 ms message stays until evicted
    for k in range(20):  # queue bounded per input
        s.add(_msg(100_000_000 + k * 50_000_000), 0)
    assert len(s.queues[0]) == 4


def test_class_map():
    cm = ClassMap(NOCS, ["cup:mug", "6:mug", "Bottle:bottle"])
    assert (
        cm.lookup("MUG") == 5 and cm.lookup("cup") == 5 and cm.lookup("6") == 5 and cm.lookup("bottle") == 0
    )
    assert cm.lookup("person") is None
    with pytest.raises(ClassMapError, match="not a model category"):
        ClassMap(NOCS, ["cup:teapot"])
    with pytest.raises(ClassMapError, match="form"):
        ClassMap(NOCS, ["cup"])


def test_marker_structure():
    from std_msgs.msg import Header
    from visualization_msgs.msg import Marker

    from cleanpose_ros.markers import build_markers
    from cleanpose_ros.pipeline import ObjectResult

    o = ObjectResult("mug", 5, 0.9, "3", 0, np.eye(3), np.array([0, 0, 1.0]), np.array([0.1, 0.2, 0.3]), 100)
    arr = build_markers(Header(frame_id="cam"), [o, o], axes=True)
    assert arr.markers[0].action == Marker.DELETEALL
    kinds = [(m.type, m.ns) for m in arr.markers[1:]]
    assert (
        kinds == [(Marker.LINE_LIST, "mug"), (Marker.TEXT_VIEW_FACING, "mug"), (Marker.LINE_LIST, "mug")] * 2
    )
    box = arr.markers[1]
    assert len(box.points) == 24
    pts = np.array([[p.x, p.y, p.z] for p in box.points])
    np.testing.assert_allclose(pts.min(0), [-0.05, -0.1, 0.85])
    np.testing.assert_allclose(pts.max(0), [0.05, 0.1, 1.15])
    assert arr.markers[2].text.startswith("mug #3\n") and "0.90 10x20x30 cm" in arr.markers[2].text
    assert len({m.id for m in arr.markers[1:]}) == 6


def test_tf_chain_lookup_without_tf2_ros():
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    from cleanpose_ros.tf_buffer import TfLookup, TfLookupError

    lk = TfLookup.__new__(TfLookup)  # the in-package listener without subscribing
    lk._buffer, lk._edges, lk._lock = None, {}, __import__("threading").Lock()

    def tf(parent, child, xyz, qxyzw=(0, 0, 0, 1)):
        t = TransformStamped()
        t.header.frame_id, t.child_frame_id = parent, child
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = xyz
        r = t.transform.rotation
        r.x, r.y, r.z, r.w = qxyzw
        return t

    s = np.sqrt(0.5)
    lk._on_tf(
        TFMessage(
            transforms=[
                tf("world", "base_link", (1, 0, 0)),
                tf("base_link", "camera_link", (0, 0, 0.5), (0, 0, s, s)),  # yaw 90°
                tf("camera_link", "cam_optical", (0.1, 0, 0)),
                tf("world", "table", (0, 2, 0)),
            ]
        )
    )
    T = lk.lookup("world", "cam_optical")
    np.testing.assert_allclose(T @ [0, 0, 0, 1], [1, 0.1, 0.5, 1], atol=1e-12)
    T2 = lk.lookup("table", "cam_optical")
    np.testing.assert_allclose(T2 @ [0, 0, 0, 1], [1, -1.9, 0.5, 1], atol=1e-12)
    np.testing.assert_allclose(lk.lookup("cam_optical", "world") @ T, np.eye(4), atol=1e-12)
    with pytest.raises(TfLookupError, match="no transform"):
        lk.lookup("map", "cam_optical")
