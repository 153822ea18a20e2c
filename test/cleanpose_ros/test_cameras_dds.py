"""Two cameras through one node process over DDS (issue 18 point 4): both cameras' poses arrive on their own
topics with their own TF frame names, their objects share the forwards (the node's diagnostics count forwards
and the camera sets they carried), and a camera that stops does not stall the other; its own /diagnostics
status reports it stale while the other stays OK."""

from __future__ import annotations

import threading
import time

import pytest
import ros_harness as H

pytestmark = pytest.mark.ros
DOMAIN = 66
CAMS = ("cam_a", "cam_b")


class _Client:
    """Publishes the inputs of both cameras and records their poses, /tf and /diagnostics."""

    def __init__(self, domain: int):
        import rclpy
        from cleanpose_msgs.msg import InstanceSegmentation, ObjectPoseArray
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage

        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node("cameras_test_client", context=self.ctx)
        rel = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {
            cam: [
                self.node.create_publisher(t, f"{cam}/{name}", rel)
                for t, name in (
                    (CameraInfo, "camera_info"),
                    (Image, "depth"),
                    (InstanceSegmentation, "detections"),
                    (Image, "image"),
                )
            ]
            for cam in CAMS
        }
        self.lock = threading.Lock()
        self.poses = {cam: [] for cam in CAMS}
        self.tf, self.diag = [], []
        for cam in CAMS:
            self.node.create_subscription(
                ObjectPoseArray,
                f"/cleanpose_node/{cam}/poses",
                lambda m, c=cam: self._add(self.poses[c], m),
                rel,
            )
        self.node.create_subscription(TFMessage, "/tf", lambda m: self._add(self.tf, m), rel)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self._add(self.diag, m), rel)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _add(self, lst, m):
        with self.lock:
            lst.append(m)
            del lst[:-500]

    def connected(self) -> bool:
        return all(p.get_subscription_count() > 0 for ps in self.pubs.values() for p in ps)

    def send(self, cam, fr, ns):
        img, dep, det = H.frame_messages(fr, ns)
        info = H.info_msg(fr.K, fr.rgb.shape[1], fr.rgb.shape[0], ns)
        for pub, msg in zip(self.pubs[cam], (info, dep, det, img)):
            pub.publish(msg)

    def stamps(self, cam) -> set[int]:
        with self.lock:
            return {H.stamp_ns(m.header) for m in self.poses[cam]}

    def status(self, cam) -> tuple[int, str, dict] | None:
        """(level, message, values) of the newest /diagnostics status of `cam`."""
        with self.lock:
            msgs = list(self.diag)
        for m in reversed(msgs):
            for st in m.status:
                if st.name.endswith(f"pose estimation {cam}"):
                    level = st.level[0] if isinstance(st.level, bytes) else st.level
                    return level, st.message, {kv.key: kv.value for kv in st.values}
        return None

    def close(self):
        H.close_client(self)


def _wait(pred, timeout, what, node):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := pred():
            return v
        if not node.alive():
            raise AssertionError(f"node exited waiting for {what}:\n{node.log()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{node.log()[-3000:]}")


def test_two_cameras_one_node(checkpoint, tmp_path):
    frames = H.synthetic_frames(2, seed=5, objects=(1, 2))
    params = {
        "checkpoint": str(checkpoint),
        "device": "cpu",
        "warmup": False,
        "input_reliability": "reliable",
        "diagnostics_period": 0.3,
        "cameras": list(CAMS),
        "camera_wait": 0.5,  # generous: the two cameras' sets arrive a few ms apart on a loaded machine
        "stale_timeout": 1.5,
        "tracking": False,  # instance ids = the detector's: the frames' own ids
    }
    node = H.NodeProcess(params, DOMAIN, tmp_path / "node.log")
    client = _Client(DOMAIN)
    try:
        _wait(client.connected, 90, "the node's subscriptions of both cameras", node)
        base = 1_700_000_300_000_000_000
        sent = []
        for k in range(6):
            ns = base + k * 200_000_000  # 5 Hz: a CPU forward fits between sets
            for cam, fr in zip(CAMS, frames):
                client.send(cam, fr, ns)
            sent.append(ns)
            _wait(lambda ns=ns: all(ns in client.stamps(c) for c in CAMS), 60, f"poses of set {k}", node)
        for cam, fr in zip(CAMS, frames):
            with client.lock:
                last = client.poses[cam][-1]
            assert len(last.objects) == len(fr.category_ids)
            assert [o.instance_id for o in last.objects] == [str(i) for i in fr.instance_ids]
        with client.lock:
            children = {t.child_frame_id for m in client.tf for t in m.transforms}
        for cam in CAMS:
            assert any(c.startswith(f"cleanpose_{cam}_") for c in children), children

        # the forwards: both cameras' sets shared them (fewer forwards than sets; 1 per cycle by construction)
        def counts():
            st = client.status("cam_a")
            if st and int(st[2].get("processed", 0)) >= len(sent):
                return st[2]
            return None

        vals = _wait(counts, 20, "diagnostics of cam_a", node)
        forwards, sets = int(vals["forwards"]), int(vals["forward_sets"])
        assert sets == 2 * len(sent), vals
        assert forwards < sets, vals  # batched: without sharing there is one forward per set
        assert forwards <= len(sent) + 1, vals

        # cam_b stops: cam_a goes on at its rate, cam_b's own status goes stale (ERROR), cam_a's stays OK
        t_stop = time.monotonic()
        for k in range(6, 16):
            ns = base + k * 200_000_000
            client.send("cam_a", frames[0], ns)
            _wait(lambda ns=ns: ns in client.stamps("cam_a"), 30, f"cam_a poses of set {k} alone", node)
        assert time.monotonic() - t_stop > 1.6

        def stale():
            a, b = client.status("cam_a"), client.status("cam_b")
            return a is not None and b is not None and b[0] == 2 and "stale" in b[1] and (a, b)

        (level_a, msg_a, vals_a), (_, msg_b, _) = _wait(stale, 10, "cam_b reported stale", node)
        assert level_a == 0, (msg_a, vals_a)
        assert "cam_b/image" in msg_b, msg_b
        assert vals_a["camera"] == "cam_a"
    finally:
        client.close()
        node.stop()
