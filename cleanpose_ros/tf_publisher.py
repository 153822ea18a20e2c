"""TF broadcasting: tf2_ros.TransformBroadcaster on a robot; where tf2_ros is absent, the same wire traffic
(tf2_msgs/TFMessage on /tf, reliable, depth 100) published directly."""

from __future__ import annotations

import re

from geometry_msgs.msg import TransformStamped

from cleanpose_ros.geometry_utils import quat_xyzw

_BAD = re.compile(r"[^A-Za-z0-9_]")


def object_frame(prefix: str, class_name: str, instance_id: str) -> str:
    """TF frame name <prefix><class>_<id>; characters TF dislikes become '_'."""
    return prefix + _BAD.sub("_", f"{class_name}_{instance_id}")


def make_transform(header, child: str, R, t, q=None) -> TransformStamped:
    """`q`: the quaternion (x, y, z, w) of `R` when the caller has it already (quat_xyzw of all objects at
    once); `R` is not used then."""
    tf = TransformStamped()
    tf.header = header
    tf.child_frame_id = child
    tr = tf.transform.translation
    tr.x, tr.y, tr.z = (float(v) for v in t)
    r = tf.transform.rotation
    r.x, r.y, r.z, r.w = (float(v) for v in (quat_xyzw(R) if q is None else q))
    return tf


class TfPublisher:
    def __init__(self, node):
        self.available = True
        self._br = self._pub = None
        self._node = node
        try:
            from tf2_ros import TransformBroadcaster

            self._br = TransformBroadcaster(node)
            self.backend = "tf2_ros"
        except ImportError:
            try:
                from rclpy.qos import QoSProfile, ReliabilityPolicy
                from tf2_msgs.msg import TFMessage

                self._msg = TFMessage
                self._pub = node.create_publisher(
                    TFMessage, "/tf", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
                )
                self.backend = "tf2_msgs"
            except ImportError:
                self.available = False
                self.backend = "none"

    def subscribed(self) -> bool:
        """Whether anything subscribes to /tf (volatile: frames sent to nobody reach nobody). True when the
        broadcaster does not show its publisher."""
        pub = self._pub if self._br is None else getattr(self._br, "pub_tf", None)
        if pub is None:
            return self.available
        try:
            return pub.get_subscription_count() > 0
        except Exception:
            return True

    def send(self, transforms: list) -> None:
        if not transforms or not self.available:
            return
        if self._br is not None:
            self._br.sendTransform(transforms)
        else:
            self._pub.publish(self._msg(transforms=transforms))

    def close(self) -> None:
        if self._pub is not None:
            self._node.destroy_publisher(self._pub)
            self._pub = None
