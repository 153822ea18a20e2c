"""Transform lookups for `target_frame`: tf2_ros.Buffer + TransformListener on a robot; without tf2_ros a
small listener on /tf and /tf_static that keeps the LATEST transform of each child frame and chains them
through the tree (no time interpolation: adequate for the static or slowly moving frames target_frame is
meant for, e.g. base_link <- camera)."""

from __future__ import annotations

import threading

import numpy as np

from cleanpose_ros.geometry_utils import to_matrix


class TfLookupError(LookupError):
    pass


def _tf_matrix(tf) -> np.ndarray:
    tr, r = tf.transform.translation, tf.transform.rotation
    return to_matrix((tr.x, tr.y, tr.z), (r.x, r.y, r.z, r.w))


class TfLookup:
    def __init__(self, node):
        self._node = node
        self._subs = []
        try:
            import tf2_ros

            self._buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self._buffer, node)
            self.backend = "tf2_ros"
        except ImportError:
            from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
            from tf2_msgs.msg import TFMessage

            self._buffer = None
            self.backend = "cleanpose_ros.tf_buffer"
            self._lock = threading.Lock()
            self._edges: dict[str, tuple[str, np.ndarray]] = {}  # child -> (parent, T_parent_child)
            dyn = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            static = QoSProfile(
                depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
            )
            self._subs = [
                node.create_subscription(TFMessage, "/tf", self._on_tf, dyn),
                node.create_subscription(TFMessage, "/tf_static", self._on_tf, static),
            ]

    def _on_tf(self, msg) -> None:
        with self._lock:
            for tf in msg.transforms:
                self._edges[tf.child_frame_id.lstrip("/")] = (tf.header.frame_id.lstrip("/"), _tf_matrix(tf))

    def _to_root(self, frame: str) -> list[tuple[str, np.ndarray]]:
        """[(frame, T_frame<-start)] from `frame` up to its root."""
        chain = [(frame, np.eye(4))]
        seen = {frame}
        while chain[-1][0] in self._edges:
            parent, T = self._edges[chain[-1][0]]
            if parent in seen or len(chain) > 256:
                break
            seen.add(parent)
            chain.append((parent, T @ chain[-1][1]))
        return chain

    def lookup(self, target: str, source: str, stamp=None, timeout_s: float = 0.0) -> np.ndarray:
        """4x4 T_target<-source (maps source-frame points into target); raises TfLookupError."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        if self._buffer is not None:
            from rclpy.duration import Duration
            from rclpy.time import Time

            try:
                tf = self._buffer.lookup_transform(target, source, Time(), Duration(seconds=timeout_s))
            except Exception as e:  # tf2 raises several exception types
                raise TfLookupError(f"no transform {source} -> {target}: {e}") from None
            return _tf_matrix(tf)
        with self._lock:
            up_s = self._to_root(source)
            up_t = dict(self._to_root(target))
        for frame, T_frame_source in up_s:
            if frame in up_t:
                return np.linalg.inv(up_t[frame]) @ T_frame_source
        known = sorted(set(self._edges) | {p for p, _ in self._edges.values()})
        raise TfLookupError(
            f"no transform {source} -> {target} on /tf, /tf_static (known frames: "
            f"{', '.join(known[:20]) or 'none'})"
        )

    def close(self) -> None:
        for s in self._subs:
            self._node.destroy_subscription(s)
        self._subs = []
