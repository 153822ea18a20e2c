"""A `rosbags` typestore for ROS 2 with this project's message types registered.

Registered from their `.msg` text: `cleanpose_msgs` (msg/msg/*.msg) and the robot interface packages that are
not on PyPI, `vision_msgs` and `tf2_msgs` (test/ros_interfaces/*/msg/*.msg, unchanged ROS 2 definitions).
The wire types therefore equal the ones a robot has, and bags written with this store replay there.
Reusable for reading bags (bench, tests): `typestore().deserialize_cdr(raw, msgtype)`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

REPO_ROOT = Path(__file__).resolve().parents[2]
MSG_DIRS: dict[str, Path] = {
    "cleanpose_msgs": REPO_ROOT / "msg" / "msg",
    "vision_msgs": REPO_ROOT / "test" / "ros_interfaces" / "vision_msgs" / "msg",
    "tf2_msgs": REPO_ROOT / "test" / "ros_interfaces" / "tf2_msgs" / "msg",
}

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
INSTANCE_SEGMENTATION = "cleanpose_msgs/msg/InstanceSegmentation"
OBJECT_POSE_ARRAY = "cleanpose_msgs/msg/ObjectPoseArray"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"


def message_definitions(msg_dirs: dict[str, Path] | None = None) -> dict:
    """Parsed type definitions of every .msg file of the project packages."""
    types: dict = {}
    for pkg, d in (msg_dirs or MSG_DIRS).items():
        files = sorted(d.glob("*.msg"))
        if not files:
            raise FileNotFoundError(f"no .msg files for {pkg} in {d}")
        for f in files:
            types.update(get_types_from_msg(f.read_text(), f"{pkg}/msg/{f.stem}"))
    return types


@lru_cache(maxsize=4)
def typestore(store: Stores = Stores.ROS2_KILTED) -> Typestore:
    """ROS 2 typestore (Kilted by default; these messages are unchanged since Humble) plus project types."""
    ts = get_typestore(store)
    ts.register(message_definitions())
    return ts
