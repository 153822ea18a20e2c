"""The `target_frame` option: poses leave the node in a frame other than the image's optical frame, through
the latest TF transform target <- image frame (tf_buffer.TfLookup)."""

from __future__ import annotations

import dataclasses

import numpy as np
from std_msgs.msg import Header


def transform_objects(objects: list, T: np.ndarray) -> list:
    """Copies of `objects` (pipeline.ObjectResult) with pose (rotation, translation) mapped by the 4x4 `T`."""
    R, t = T[:3, :3], T[:3, 3]
    return [
        dataclasses.replace(o, rotation=R @ o.rotation, translation=R @ o.translation + t) for o in objects
    ]


class TargetFrame:
    """Owns the node's TF listener for target_frame, made on first need so a node without target_frame
    subscribes to no /tf at all."""

    def __init__(self, node):
        self._node = node
        self._lookup = None

    def prepare(self) -> None:
        """Start listening now (so transforms are buffered before the first frame needs them)."""
        if self._lookup is not None:
            return
        from cleanpose_ros.tf_buffer import TfLookup

        try:
            self._lookup = TfLookup(self._node)
        except ImportError:
            self._node.get_logger().error("target_frame is set but neither tf2_ros nor tf2_msgs is installed")

    def apply(self, target: str, header, objects: list) -> tuple[Header, list]:
        """(header, objects) re-expressed in `target`; raises LookupError when the transform is unknown."""
        self.prepare()
        if self._lookup is None:
            raise LookupError("no TF listener available")
        T = self._lookup.lookup(target, header.frame_id)
        return Header(stamp=header.stamp, frame_id=target), transform_objects(objects, T)

    def close(self) -> None:
        if self._lookup is not None:
            self._lookup.close()
            self._lookup = None
