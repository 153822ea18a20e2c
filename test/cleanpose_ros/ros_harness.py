"""Test-side ROS graph for the node tests: a client node in its own rclpy context (own domain id) that
publishes synthetic RGB-D + detection frames and records everything the node outputs, plus the node itself
as a separate process."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

import numpy as np

from cleanpose_tools.bench import NodeProcess as ToolsNodeProcess

REPO = Path(__file__).resolve().parents[2]
FRAME_ID = "camera_color_optical_frame"


def synthetic_frames(n: int, seed: int = 0, width: int = 160, height: int = 120, objects=(2, 3)):
    """Rendered frames with ground truth from the synthetic generator (training/synthetic)."""
    from cleanpose_training.synthetic.__main__ import bag_frames, scene_rngs
    from cleanpose_training.synthetic.scene import Camera

    rng = scene_rngs(seed, "bag", 1)[0]
    cats = ("bottle", "bowl", "camera", "can", "laptop", "mug")
    return list(bag_frames(rng, n, objects, cats, Camera.real275(width, height), 30.0, shadows=False))


def stamp_of(ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=int(ns // 10**9), nanosec=int(ns % 10**9))


def stamp_ns(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def image_msg(arr: np.ndarray, encoding: str, ns: int, frame_id: str = FRAME_ID):
    from std_msgs.msg import Header

    from cleanpose_ros.conversions import numpy_to_image

    return numpy_to_image(arr, encoding, Header(stamp=stamp_of(ns), frame_id=frame_id))


def info_msg(K: np.ndarray, width: int, height: int, ns: int = 0, frame_id: str = FRAME_ID):
    from sensor_msgs.msg import CameraInfo

    m = CameraInfo()
    m.header.stamp = stamp_of(ns)
    m.header.frame_id = frame_id
    m.width, m.height = width, height
    m.distortion_model = "plumb_bob"
    m.d = [0.0] * 5
    m.k = [float(v) for v in np.asarray(K, np.float64).reshape(-1)]
    return m


def add_detections(m, class_ids, scores=None, ids=None, boxes=None) -> None:
    """One vision_msgs/Detection2D per class id appended to ``m.detections`` (m's header; score 0.9 unless
    given; bbox from (y1, x1, y2, x2) boxes when given; id "" unless given)."""
    from vision_msgs.msg import Detection2D, ObjectHypothesisWithPose

    for j, cid in enumerate(class_ids):
        d = Detection2D()
        d.header = m.header
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = str(cid)
        hyp.hypothesis.score = float(scores[j]) if scores is not None else 0.9
        d.results.append(hyp)
        if boxes is not None:
            y1, x1, y2, x2 = boxes[j]
            d.bbox.center.position.x, d.bbox.center.position.y = (x1 + x2) / 2, (y1 + y2) / 2
            d.bbox.size_x, d.bbox.size_y = float(x2 - x1), float(y2 - y1)
        d.id = str(ids[j]) if ids is not None else ""
        m.detections.append(d)


def detections_msg(
    masks,
    class_ids,
    ns: int,
    scores=None,
    ids=None,
    boxes=None,
    frame_id: str = FRAME_ID,
    label_image: bool = False,
):
    """InstanceSegmentation with full-size mono8 masks (or one label image)."""
    from cleanpose_msgs.msg import InstanceSegmentation

    m = InstanceSegmentation()
    m.header.stamp = stamp_of(ns)
    m.header.frame_id = frame_id
    add_detections(m, class_ids, scores, ids, boxes)
    if label_image:
        m.format = InstanceSegmentation.FORMAT_LABEL_IMAGE
        lab = np.zeros(masks.shape[1:], np.uint8)
        for j, mk in enumerate(masks):
            lab[mk > 0] = j + 1
        m.label_image = image_msg(lab, "mono8", ns, frame_id)
    else:
        m.format = InstanceSegmentation.FORMAT_MASKS
        m.masks = [image_msg((mk > 0).astype(np.uint8) * 255, "mono8", ns, frame_id) for mk in masks]
    return m


def frame_messages(fr, ns: int, depth_encoding: str = "16UC1"):
    """(image, depth, detections) messages of a synthetic Frame."""
    from cleanpose_model.config import NOCS_CATEGORIES

    img = image_msg(fr.rgb, "rgb8", ns)
    if depth_encoding == "16UC1":
        dep = image_msg(fr.depth_mm, "16UC1", ns)
    else:
        dep = image_msg(fr.depth_mm.astype(np.float32) / 1000.0, "32FC1", ns)
    det = detections_msg(
        fr.masks, [NOCS_CATEGORIES[c] for c in fr.category_ids], ns, ids=[int(i) for i in fr.instance_ids]
    )
    return img, dep, det


class NodeProcess(ToolsNodeProcess):
    """cleanpose_node as its own OS process (as on a robot), on `domain_id`, with `params` as -p overrides."""

    def __init__(
        self,
        params: dict,
        domain_id: int,
        log_path: Path,
        name: str = "cleanpose_node",
        remaps: dict | None = None,
    ):
        cmd = [sys.executable, "-m", "cleanpose_ros.node", "--ros-args", "-r", f"__node:={name}"]
        for k, v in params.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, list):
                v = "[" + ",".join(f"'{x}'" for x in v) + "]"
            cmd += ["-p", f"{k}:={v}"]
        for k, v in (remaps or {}).items():
            cmd += ["-r", f"{k}:={v}"]
        env = {"ROS_DOMAIN_ID": str(domain_id), "RCUTILS_COLORIZED_OUTPUT": "0", "OMP_NUM_THREADS": "1"}
        super().__init__(cmd, log_path, env=env, cwd=REPO)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20


class Client:
    """Publishes inputs and records outputs of one node (namespace-free names). `outputs`: the output keys
    to subscribe to at start (default all); `subscribe(key)` adds one later."""

    def __init__(self, domain_id: int, node_name: str = "cleanpose_node", outputs=None):
        import rclpy
        from cleanpose_msgs.msg import InstanceSegmentation, ObjectPoseArray
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage
        from visualization_msgs.msg import MarkerArray

        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node("cleanpose_test_client", context=self.ctx)
        rel = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_image = self.node.create_publisher(Image, "image", rel)
        self.pub_depth = self.node.create_publisher(Image, "depth", rel)
        self.pub_info = self.node.create_publisher(CameraInfo, "camera_info", rel)
        self.pub_det = self.node.create_publisher(InstanceSegmentation, "detections", rel)
        self.pub_tf_static = self.node.create_publisher(
            TFMessage,
            "/tf_static",
            QoSProfile(
                depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
            ),
        )
        self.lock = threading.Lock()
        self.received: dict[str, list] = {
            k: [] for k in ("poses", "detections_3d", "markers", "debug_image", "tf", "diagnostics")
        }
        base = f"/{node_name}"
        subs = {
            "poses": (ObjectPoseArray, f"{base}/poses"),
            "markers": (MarkerArray, f"{base}/markers"),
            "debug_image": (Image, f"{base}/debug_image"),
            "tf": (TFMessage, "/tf"),
            "diagnostics": (DiagnosticArray, "/diagnostics"),
        }
        try:
            from vision_msgs.msg import Detection3DArray

            subs["detections_3d"] = (Detection3DArray, f"{base}/detections_3d")
        except ImportError:
            pass
        self._out_topics = subs
        self._subs: dict[str, object] = {}
        for key in subs if outputs is None else outputs:
            self.subscribe(key)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self.node_name = node_name

    def subscribe(self, key: str) -> None:
        """Record output `key` from now on (a subscription on the node's topic)."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        if key not in self._subs:
            t, topic = self._out_topics[key]
            out_qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
            self._subs[key] = self.node.create_subscription(
                t, topic, lambda m, k=key: self._store(k, m), out_qos
            )

    def _store(self, key, msg) -> None:
        with self.lock:
            lst = self.received[key]
            lst.append(msg)
            if len(lst) > 2000:  # bounded for soak runs
                del lst[:1000]

    def clear(self) -> None:
        with self.lock:
            for v in self.received.values():
                v.clear()

    def get(self, key: str) -> list:
        with self.lock:
            return list(self.received[key])

    def wait(self, pred, timeout: float, what: str = "condition", node: NodeProcess | None = None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            if node is not None and not node.alive():
                raise AssertionError(f"node exited while waiting for {what}:\n{node.log()[-3000:]}")
            time.sleep(0.02)
        tail = node.log()[-3000:] if node is not None else ""
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")

    def wait_connected(self, timeout: float, node: NodeProcess | None = None) -> None:
        pubs = (self.pub_image, self.pub_depth, self.pub_det, self.pub_info)
        self.wait(
            lambda: (
                all(p.get_subscription_count() > 0 for p in pubs)
                and self.node.count_publishers(f"/{self.node_name}/poses") > 0
            ),
            timeout,
            "the node's subscriptions",
            node,
        )

    def output_for(self, ns: int, key: str = "poses"):
        with self.lock:
            return next((m for m in self.received[key] if stamp_ns(m.header) == ns), None)

    def send(self, image, depth, det, info=None) -> None:
        if info is not None:
            self.pub_info.publish(info)
        self.pub_depth.publish(depth)
        self.pub_det.publish(det)
        self.pub_image.publish(image)

    def diagnostics(self) -> dict[str, str]:
        with self.lock:
            msgs = list(self.received["diagnostics"])
        for m in reversed(msgs):
            for st in m.status:
                if "pose estimation" in st.name:
                    return {kv.key: kv.value for kv in st.values}
        return {}

    def call(self, srv_type, name: str, request, timeout: float = 20.0):
        cli = self.node.create_client(srv_type, name)
        try:
            if not cli.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f"service {name} not available")
            fut = cli.call_async(request)
            self.wait(fut.done, timeout, f"reply of {name}")
            return fut.result()
        finally:
            self.node.destroy_client(cli)

    def set_params(self, **values):
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request()
        req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        return self.call(SetParameters, f"/{self.node_name}/set_parameters", req).results

    def change_state(self, transition_id: int) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        req = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(ChangeState, f"/{self.node_name}/change_state", req).success

    def get_state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"/{self.node_name}/get_state", GetState.Request()).current_state.label

    def close(self) -> None:
        close_client(self)


@contextlib.contextmanager
def running_graph(params: dict, domain: int, log: Path, connect_timeout: float = 90.0, outputs=None):
    """A cleanpose node process (CPU, no warm-up, reliable inputs, plus `params`) and a connected client
    (subscribed to `outputs`, default all); both are torn down on exit."""
    base = {"device": "cpu", "warmup": False, "input_reliability": "reliable", "diagnostics_period": 0.5}
    node = NodeProcess({**base, **params}, domain, log)
    client = Client(domain, outputs=outputs)
    try:
        client.wait_connected(connect_timeout, node)
        yield client, node
    finally:
        client.close()
        node.stop()


def close_client(client) -> None:
    """Tear down a test client (its executor, spin thread, node and context). The spin thread is joined
    before the node goes, so it is out of its wait set (see cleanpose_tools/replay.py `Replayer.close`)."""
    client.executor.shutdown()
    client._thread.join(timeout=10.0)
    client.node.destroy_node()
    client.ctx.try_shutdown()
