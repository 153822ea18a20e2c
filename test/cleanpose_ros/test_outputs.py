"""Message builders of cleanpose_ros.outputs and the target-frame transform, on hand-made poses."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation
from std_msgs.msg import Header

from cleanpose_ros.outputs import Poses, detection3d_array, object_transforms, pose_array
from cleanpose_ros.pipeline import ObjectResult
from cleanpose_ros.target_frame import transform_objects


def _objects() -> list[ObjectResult]:
    R0 = Rotation.from_euler("zyx", [30, -20, 10], degrees=True).as_matrix()
    return [
        ObjectResult("mug", 5, 0.9, "7", 0, R0, np.array([0.1, -0.2, 0.8]), np.array([0.1, 0.12, 0.09]), 300),
        ObjectResult(
            "can", 3, 0.6, "a b", 1, np.eye(3), np.array([0.0, 0.1, 1.2]), np.array([0.07, 0.12, 0.07]), 50
        ),
    ]


def _header() -> Header:
    h = Header(frame_id="cam")
    h.stamp.sec, h.stamp.nanosec = 12, 34
    return h


def _quat(q) -> np.ndarray:
    return np.array([q.x, q.y, q.z, q.w])


def test_pose_array_carries_every_field():
    objs = _objects()
    arr = pose_array(_header(), objs, Poses.of(objs))
    assert arr.header.frame_id == "cam" and arr.header.stamp.nanosec == 34
    assert [o.class_name for o in arr.objects] == ["mug", "can"]
    a = arr.objects[0]
    assert (a.class_id, a.instance_id, a.num_points) == (5, "7", 300)
    assert abs(a.score - 0.9) < 1e-6
    np.testing.assert_allclose([a.pose.position.x, a.pose.position.y, a.pose.position.z], [0.1, -0.2, 0.8])
    R = Rotation.from_quat(_quat(a.pose.orientation)).as_matrix()
    np.testing.assert_allclose(R, objs[0].rotation, atol=1e-9)
    np.testing.assert_allclose([a.size.x, a.size.y, a.size.z], [0.1, 0.12, 0.09])


def test_detection3d_array_pose_in_bbox_and_hypothesis():
    objs = _objects()
    arr = detection3d_array(_header(), objs, Poses.of(objs))
    d = arr.detections[1]
    assert d.id == "a b" and d.results[0].hypothesis.class_id == "can"
    assert abs(d.results[0].hypothesis.score - 0.6) < 1e-6
    for pose in (d.bbox.center, d.results[0].pose.pose):
        np.testing.assert_allclose([pose.position.x, pose.position.y, pose.position.z], [0.0, 0.1, 1.2])
        np.testing.assert_allclose(_quat(pose.orientation), [0, 0, 0, 1], atol=1e-12)
    np.testing.assert_allclose([d.bbox.size.x, d.bbox.size.y, d.bbox.size.z], [0.07, 0.12, 0.07])


def test_object_transforms_names_and_poses():
    objs = _objects()
    tfs = object_transforms(_header(), "cp_", objs, Poses.of(objs))
    assert [t.child_frame_id for t in tfs] == ["cp_mug_7", "cp_can_a_b"]  # TF-unfriendly characters -> '_'
    assert all(t.header.frame_id == "cam" for t in tfs)
    t = tfs[0].transform
    np.testing.assert_allclose([t.translation.x, t.translation.y, t.translation.z], [0.1, -0.2, 0.8])
    np.testing.assert_allclose(Rotation.from_quat(_quat(t.rotation)).as_matrix(), objs[0].rotation, atol=1e-9)


def test_no_objects_gives_empty_messages():
    assert pose_array(_header(), [], Poses.of([])).objects == []
    assert detection3d_array(_header(), [], Poses.of([])).detections == []


def test_transform_objects_maps_pose_and_keeps_the_rest():
    objs = _objects()
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("x", 90, degrees=True).as_matrix()
    T[:3, 3] = [0.2, -0.1, 1.0]
    out = transform_objects(objs, T)
    for o, w in zip(objs, out):
        np.testing.assert_allclose(w.translation, T[:3, :3] @ o.translation + T[:3, 3])
        np.testing.assert_allclose(w.rotation, T[:3, :3] @ o.rotation)
        assert (w.class_name, w.instance_id, w.score) == (o.class_name, o.instance_id, o.score)
        np.testing.assert_array_equal(w.size, o.size)
    np.testing.assert_allclose(objs[0].translation, [0.1, -0.2, 0.8])  # inputs untouched
