"""The node's per-frame outputs: its lifecycle publishers and the messages built from one frame's poses.

Each camera of the node has its own Outputs: ~/<name> for the single camera (cameras == [""]), ~/<ns>/<name>
for a camera of namespace <ns>; /tf is shared (one broadcaster for the node).

    ~/poses          cleanpose_msgs/ObjectPoseArray    pose_array()
    ~/detections_3d  vision_msgs/Detection3DArray      detection3d_array() (when vision_msgs is installed)
    ~/markers        visualization_msgs/MarkerArray    markers.build_markers()
    ~/debug_image    sensor_msgs/Image                 debug_image.draw_debug_image()
    /tf              one frame per object              object_transforms() through tf_publisher.TfPublisher

A message is built only when its topic has a subscriber: outputs are volatile, so one published to nobody is
delivered to nobody, and skipping it changes nothing a subscriber sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from cleanpose_ros import conversions
from cleanpose_ros.cameras import output_topic
from cleanpose_ros.debug_image import draw_debug_image
from cleanpose_ros.diagnostics import StageClock
from cleanpose_ros.geometry_utils import quat_xyzw
from cleanpose_ros.markers import Trails, build_markers
from cleanpose_ros.tf_publisher import TfPublisher, make_transform, object_frame


@dataclass
class Poses:
    """Host lists of every object's translation, quaternion (x, y, z, w) and size: computed once per frame
    (one quaternion conversion for all objects) and shared by the messages."""

    translations: list
    quaternions: list
    sizes: list

    @classmethod
    def of(cls, objects: list) -> Poses:
        if not objects:
            return cls([], [], [])
        return cls(
            [np.asarray(o.translation, np.float64).tolist() for o in objects],
            quat_xyzw(np.stack([o.rotation for o in objects])).tolist(),
            [np.asarray(o.size, np.float64).tolist() for o in objects],
        )


def _set_pose(pose, t, q) -> None:
    """geometry_msgs/Pose from a translation and a quaternion (x, y, z, w), both lists of floats."""
    p, o = pose.position, pose.orientation
    p.x, p.y, p.z = t
    o.x, o.y, o.z, o.w = q


def pose_array(header, objects: list, poses: Poses):
    from cleanpose_msgs.msg import ObjectPose, ObjectPoseArray

    arr = ObjectPoseArray(header=header)
    for o, t, q, sz in zip(objects, poses.translations, poses.quaternions, poses.sizes):
        op = ObjectPose(
            class_name=o.class_name,
            class_id=int(o.class_id),
            score=float(o.score),
            instance_id=o.instance_id,
            num_points=int(o.num_points),
        )
        _set_pose(op.pose, t, q)
        op.size.x, op.size.y, op.size.z = sz
        arr.objects.append(op)
    return arr


def detection3d_array(header, objects: list, poses: Poses):
    """vision_msgs/Detection3DArray: the pose in bbox.center and in results[0].pose.pose."""
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    arr = Detection3DArray(header=header)
    for o, t, q, sz in zip(objects, poses.translations, poses.quaternions, poses.sizes):
        d = Detection3D(header=header, id=o.instance_id)
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = o.class_name
        hyp.hypothesis.score = float(o.score)
        _set_pose(hyp.pose.pose, t, q)
        if getattr(o, "covariance", None) is not None:  # from the temporal filter (filtering.PoseStream)
            hyp.pose.covariance = [float(v) for v in np.asarray(o.covariance).reshape(36)]
        d.results.append(hyp)
        _set_pose(d.bbox.center, t, q)
        d.bbox.size.x, d.bbox.size.y, d.bbox.size.z = sz
        arr.detections.append(d)
    return arr


def object_transforms(header, prefix: str, objects: list, poses: Poses) -> list:
    """One TransformStamped per object: <prefix><class>_<instance id> under the header's frame."""
    return [
        make_transform(header, object_frame(prefix, o.class_name, o.instance_id), None, t, q)
        for o, t, q in zip(objects, poses.translations, poses.quaternions)
    ]


class Outputs:
    """The output publishers of one camera of a configured node (lifecycle publishers: they publish only while
    active). `namespace`: the camera's entry in `cameras`; `tf`: a TfPublisher to share (made when None)."""

    def __init__(self, node, namespace: str = "", tf: TfPublisher | None = None):
        from cleanpose_msgs.msg import ObjectPoseArray
        from visualization_msgs.msg import MarkerArray

        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._node = node
        # (type, single-camera name) pairs: a camera of namespace <ns> publishes ~/<ns>/<name>
        outputs = ((ObjectPoseArray, "~/poses"), (MarkerArray, "~/markers"), (Image, "~/debug_image"))
        self.publishers = {
            name[2:]: node.create_lifecycle_publisher(t, output_topic(namespace, name), qos)
            for t, name in outputs
        }
        self.trails: Trails | None = None
        try:
            from vision_msgs.msg import Detection3DArray

            t, name = (Detection3DArray, "~/detections_3d")
            self.publishers["detections_3d"] = node.create_lifecycle_publisher(
                t, output_topic(namespace, name), qos
            )
        except ImportError:
            node.get_logger().info("vision_msgs not installed: ~/detections_3d is not published")
        self._own_tf = tf is None
        self.tf = TfPublisher(node) if tf is None else tf
        if self._own_tf and not self.tf.available:
            node.get_logger().warning("neither tf2_ros nor tf2_msgs is installed: object TF frames are off")

    def _subscribed(self, key: str) -> bool:
        pub = self.publishers.get(key)
        return pub is not None and pub.get_subscription_count() > 0

    def publish(
        self, p, header, objects: list, camera: tuple, clk: StageClock, tf_prefix: str | None = None
    ) -> None:
        """Publishes each output of one frame that has a subscriber. `p`: NodeParams (output switches);
        `header`/`objects`: in the output frame; `camera`: (rgb, K, image header, objects in the camera
        frame) for the debug image. `clk` books one stage per output built. `tf_prefix`: the object frames'
        prefix (the camera's; p.tf_prefix when None)."""
        want_poses = self._subscribed("poses")
        want_d3d = self._subscribed("detections_3d")
        want_tf = p.publish_tf and bool(objects) and self.tf.available and self.tf.subscribed()
        poses = Poses.of(objects) if want_poses or want_d3d or want_tf else Poses([], [], [])
        clk.lap("outputs")
        if want_poses:
            self.publishers["poses"].publish(pose_array(header, objects, poses))
            clk.lap("poses")
        if want_d3d:
            self.publishers["detections_3d"].publish(detection3d_array(header, objects, poses))
            clk.lap("detections_3d")
        trails = None
        if getattr(p, "trail_length", 0) > 0:
            # kept whether or not anyone watches, so a viewer that joins sees trails at once
            if self.trails is None or self.trails.length != p.trail_length:
                self.trails = Trails(p.trail_length)
            trails = self.trails.update(header.frame_id, objects)
        elif self.trails is not None:
            self.trails = None
        if p.publish_markers and self._subscribed("markers"):
            self.publishers["markers"].publish(
                build_markers(header, objects, axes=p.marker_axes, trails=trails)
            )
            clk.lap("markers")
        if want_tf:
            prefix = p.tf_prefix if tf_prefix is None else tf_prefix
            self.tf.send(object_transforms(header, prefix, objects, poses))
            clk.lap("tf")
        if p.publish_debug_image and self._subscribed("debug_image"):
            rgb, K, image_header, cam_objects = camera
            img = draw_debug_image(rgb, K, cam_objects)
            self.publishers["debug_image"].publish(conversions.numpy_to_image(img, "rgb8", image_header))
            clk.lap("debug_image")

    def close(self) -> None:
        for pub in self.publishers.values():
            self._node.destroy_lifecycle_publisher(pub)
        self.publishers = {}
        if self._own_tf:
            self.tf.close()
