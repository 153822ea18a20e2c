"""cleanpose_node in its own process on a real DDS graph, fed rendered synthetic frames: output headers,
frames, marker structure, TF tree, debug image and diagnostics; poses equal to the model API's for the same
inputs; run-time parameters; lifecycle; target_frame."""

from __future__ import annotations

import numpy as np
import pytest
import ros_harness as H
from scipy.spatial.transform import Rotation

pytestmark = pytest.mark.ros
DOMAIN = 61


@pytest.fixture(scope="module")
def frames():
    return H.synthetic_frames(2, seed=1)


@pytest.fixture(scope="module")
def graph(checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "node.log"
    with H.running_graph({"checkpoint": str(checkpoint), "publish_debug_image": True}, DOMAIN, log) as g:
        yield g


def _send(client, fr, ns, **kw):
    img, dep, det = H.frame_messages(fr, ns, **kw)
    client.send(img, dep, det, H.info_msg(fr.K, fr.rgb.shape[1], fr.rgb.shape[0], ns))
    return img, dep, det


def _pose(o):
    q = o.pose.orientation
    R = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    return R, np.array([o.pose.position.x, o.pose.position.y, o.pose.position.z])


def test_outputs_headers_frames_markers_tf_and_parity(graph, frames, checkpoint, tmp_path):
    from visualization_msgs.msg import Marker

    from cleanpose_ros import conversions
    from cleanpose_ros.pipeline import FramePipeline

    client, node = graph
    fr = frames[0]
    ns = 1_700_000_000_123_456_789
    img, dep, det = _send(client, fr, ns)
    out = client.wait(lambda: client.output_for(ns), 120, "~/poses", node)
    assert out.header.frame_id == H.FRAME_ID and H.stamp_ns(out.header) == ns
    n = len(fr.category_ids)
    assert len(out.objects) == n
    names = ["bottle", "bowl", "camera", "can", "laptop", "mug"]
    assert [o.class_name for o in out.objects] == [names[c] for c in fr.category_ids]
    assert [o.instance_id for o in out.objects] == [str(i) for i in fr.instance_ids]

    # The ROS path adds no error: the same inputs through the model API in this process.
    pipe = FramePipeline.from_checkpoint(str(checkpoint), device="cpu")
    ref = pipe.process(
        conversions.rgb_from_image(img), conversions.depth_from_image(dep), np.asarray(fr.K), det
    )
    assert len(ref.objects) == n
    for o, r in zip(out.objects, ref.objects):
        R, t = _pose(o)
        Rref = Rotation.from_matrix(r.rotation).as_matrix()
        np.testing.assert_allclose(R, Rref, atol=1e-5)
        np.testing.assert_allclose(t, r.translation, atol=1e-6)
        np.testing.assert_allclose([o.size.x, o.size.y, o.size.z], r.size, atol=1e-6)
        assert o.num_points == r.num_points and o.class_id == r.class_id

    d3 = client.wait(lambda: client.output_for(ns, "detections_3d"), 10, "~/detections_3d", node)
    assert d3.header.frame_id == H.FRAME_ID and len(d3.detections) == n
    for d, o in zip(d3.detections, out.objects):
        assert d.bbox.center == o.pose and d.results[0].pose.pose == o.pose
        assert (d.bbox.size.x, d.bbox.size.y, d.bbox.size.z) == (o.size.x, o.size.y, o.size.z)
        assert d.results[0].hypothesis.class_id == o.class_name and d.id == o.instance_id

    mk = client.wait(
        lambda: next(
            (m for m in client.get("markers") if m.markers and H.stamp_ns(m.markers[0].header) == ns), None
        ),
        10,
        "markers",
    )
    assert mk.markers[0].action == Marker.DELETEALL
    body = mk.markers[1:]
    assert len(body) == 3 * n and all(m.header.frame_id == H.FRAME_ID for m in body)
    assert [m.type for m in body[:3]] == [Marker.LINE_LIST, Marker.TEXT_VIEW_FACING, Marker.LINE_LIST]
    assert all(len(m.points) == 24 for m in body[0::3])

    def tf_for_stamp():
        for m in client.get("tf"):
            if m.transforms and H.stamp_ns(m.transforms[0].header) == ns:
                return m
        return None

    tfm = client.wait(tf_for_stamp, 10, "/tf", node)
    children = [t.child_frame_id for t in tfm.transforms]
    assert children == [f"cleanpose_{o.class_name}_{o.instance_id}" for o in out.objects]
    assert all(t.header.frame_id == H.FRAME_ID for t in tfm.transforms)
    for t, o in zip(tfm.transforms, out.objects):
        assert (t.transform.translation.x, t.transform.translation.z) == (
            o.pose.position.x,
            o.pose.position.z,
        )

    dbg = client.wait(lambda: client.output_for(ns, "debug_image"), 10, "~/debug_image", node)
    arr = conversions.rgb_from_image(dbg)
    assert dbg.encoding == "rgb8" and arr.shape == fr.rgb.shape and (arr != fr.rgb).any()
    import cv2

    cv2.imwrite(str(tmp_path / "debug.png"), arr[:, :, ::-1])

    diag = client.wait(
        lambda: (d := client.diagnostics()) and int(d.get("processed", 0)) >= 1 and d, 10, "diagnostics"
    )
    for key in (
        "input_rate_hz",
        "output_rate_hz",
        "latency_ms_mean",
        "dropped",
        "gpu_memory_allocated_mb",
        "rss_mb",
        "stage_ms_convert",
        "stage_ms_pipeline",
        "stage_ms_forward",
        "stage_ms_poses",
    ):
        assert key in diag


def test_runtime_parameters_are_validated(graph, frames):
    client, node = graph
    res = client.set_params(score_threshold=1.5)
    assert not res[0].successful
    # set_parameters applies one at a time: min_depth alone is valid, max_depth below it is not
    res = client.set_params(min_depth=2.0, max_depth=1.0)
    assert res[0].successful and not res[1].successful and "min_depth" in res[1].reason
    assert client.set_params(min_depth=0.0)[0].successful
    res = client.set_params(class_map=["cup:teapot"])
    assert not res[0].successful and "teapot" in res[0].reason
    assert not client.set_params(device="gpu")[0].successful  # configure-time values are validated too
    # A configure-time parameter is accepted but waits for the next configure (the log says so).
    assert client.set_params(device="cuda")[0].successful
    client.wait(
        lambda: "device set: takes effect at the next configure" in node.log(), 10, "the log line", node
    )
    assert client.set_params(device="cpu")[0].successful
    # A valid change takes effect on the next frame: every detection (score 0.9) is now below threshold.
    assert client.set_params(score_threshold=0.95)[0].successful
    ns = 1_700_000_001_000_000_000
    _send(client, frames[1], ns)
    out = client.wait(lambda ns=ns: client.output_for(ns), 60, "~/poses", node)
    assert out.objects == []  # an empty array is still published
    d3 = client.wait(lambda: client.output_for(ns, "detections_3d"), 10, "~/detections_3d", node)
    assert d3.detections == []
    assert client.set_params(score_threshold=0.0)[0].successful


def test_lifecycle_deactivate_unsubscribes_activate_resumes(graph, frames):
    from lifecycle_msgs.msg import Transition

    client, node = graph
    assert client.get_state() == "active"
    assert client.set_params(score_threshold=0.95)[0].successful  # cheap frames (no forward)
    try:
        assert client.change_state(Transition.TRANSITION_DEACTIVATE)
        assert client.get_state() == "inactive"
        client.wait(lambda: client.pub_image.get_subscription_count() == 0, 10, "unsubscribe", node)
        ns = 1_700_000_002_000_000_000
        _send(client, frames[1], ns)
        import time

        time.sleep(1.0)
        assert client.output_for(ns) is None
        assert client.change_state(Transition.TRANSITION_ACTIVATE)
        client.wait_connected(20, node)
        ns = 1_700_000_003_000_000_000
        _send(client, frames[1], ns)
        client.wait(lambda: client.output_for(ns), 60, "~/poses after re-activation", node)
    finally:
        client.set_params(score_threshold=0.0)


def test_target_frame_transforms_outputs(graph, frames):
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    client, node = graph
    fr = frames[0]
    # world <- camera: camera 1 m above the origin, rotated 90° about x
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("x", 90, degrees=True).as_matrix()
    T[:3, 3] = [0.2, -0.1, 1.0]
    tf = TransformStamped()
    tf.header.frame_id, tf.child_frame_id = "world", H.FRAME_ID
    tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = T[:3, 3]
    q = Rotation.from_matrix(T[:3, :3]).as_quat()
    r = tf.transform.rotation
    r.x, r.y, r.z, r.w = q
    client.pub_tf_static.publish(TFMessage(transforms=[tf]))
    ns_cam = 1_700_000_000_123_456_789  # answered in camera frame by the first test (same frame, same pose)
    cam = client.output_for(ns_cam)
    assert client.set_params(target_frame="world")[0].successful
    try:
        ns = 1_700_000_004_000_000_000
        deadline_ok = False
        for _ in range(3):  # the static transform may reach the node's listener after the first frame
            _send(client, fr, ns)
            try:
                out = client.wait(lambda ns=ns: client.output_for(ns), 60, "~/poses in target frame", node)
                deadline_ok = True
                break
            except AssertionError:
                ns += 1
        assert deadline_ok
        assert out.header.frame_id == "world" and H.stamp_ns(out.header) == ns
        if cam is not None:
            for o, c in zip(out.objects, cam.objects):
                Rw, tw = _pose(o)
                Rc, tc = _pose(c)
                np.testing.assert_allclose(tw, T[:3, :3] @ tc + T[:3, 3], atol=1e-5)
                np.testing.assert_allclose(Rw, T[:3, :3] @ Rc, atol=1e-5)
    finally:
        client.set_params(target_frame="")


def test_cleanup_configure_applies_changed_configure_time_parameters(graph):
    """Parameters are read in on_configure: a configure-time change (input QoS reliability) is not in effect
    while the node runs and is in effect after cleanup + configure, seen on the graph as the QoS of the
    node's live subscription."""
    from lifecycle_msgs.msg import Transition
    from rclpy.qos import ReliabilityPolicy

    client, node = graph

    def image_reliability():
        infos = client.node.get_subscriptions_info_by_topic("/image")
        mine = [i for i in infos if i.node_name == client.node_name]
        return mine[0].qos_profile.reliability if len(mine) == 1 else None

    def reconfigure():
        for t in (
            Transition.TRANSITION_DEACTIVATE,
            Transition.TRANSITION_CLEANUP,
            Transition.TRANSITION_CONFIGURE,
            Transition.TRANSITION_ACTIVATE,
        ):
            assert client.change_state(t), t
        assert client.get_state() == "active"

    assert image_reliability() == ReliabilityPolicy.RELIABLE  # running_graph's setting
    assert client.set_params(input_reliability="best_effort")[0].successful
    try:
        import time

        time.sleep(0.5)
        assert image_reliability() == ReliabilityPolicy.RELIABLE  # not applied while running
        reconfigure()
        client.wait(
            lambda: image_reliability() == ReliabilityPolicy.BEST_EFFORT, 20, "best-effort input", node
        )
    finally:
        client.set_params(input_reliability="reliable")
        reconfigure()
        client.wait_connected(20, node)
    assert image_reliability() == ReliabilityPolicy.RELIABLE
