"""cleanpose_ros.transport: when the Fast DDS profile for frame-sized messages is applied, and that with it
640x480 images cross between processes over best-effort QoS (with Fast DDS's default 512 KiB shared-memory
segment they did not arrive at all, and reliable ones took ~13 ms each in fragment repair)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cleanpose_ros import transport

REPO = Path(__file__).resolve().parents[2]


def test_profile_applied_only_without_a_user_choice():
    env = {}
    path = transport.use_large_data_profile(env)
    assert path and Path(path).is_file() and env["FASTDDS_DEFAULT_PROFILES_FILE"] == path
    assert "<segment_size>33554432</segment_size>" in Path(path).read_text()
    # LARGE_DATA asks for what the profile does better: still applied
    env = {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}
    assert transport.use_large_data_profile(env) == env["FASTDDS_DEFAULT_PROFILES_FILE"]
    for chosen in (
        {"FASTDDS_DEFAULT_PROFILES_FILE": "/x.xml"},
        {"FASTRTPS_DEFAULT_PROFILES_FILE": "/x.xml"},
        {"FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"},
        {"ROS_DISCOVERY_SERVER": "127.0.0.1:11811"},
        {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"},
        {"CLEANPOSE_FASTDDS_PROFILE": "0"},
    ):
        env = dict(chosen)
        assert transport.use_large_data_profile(env) is None and env == chosen


_SUB = textwrap.dedent(
    """
    import sys, time, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node("transport_test_sub")
    got = []
    node.create_subscription(Image, "/transport_test/image", lambda m: got.append(len(m.data)),
                             QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
    print("ready", flush=True)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    print("received", len(got), sorted(set(got)), flush=True)
    """
)
_PUB = textwrap.dedent(
    """
    import time, rclpy
    import numpy as np
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from cleanpose_ros.conversions import numpy_to_image
    rclpy.init()
    node = rclpy.create_node("transport_test_pub")
    pub = node.create_publisher(Image, "/transport_test/image",
                                QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
    end = time.monotonic() + 20
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.5)
    img = numpy_to_image(np.zeros((480, 640, 3), np.uint8), "rgb8")
    for _ in range(20):
        pub.publish(img)
        time.sleep(0.05)
    """
)


@pytest.mark.ros
def test_best_effort_640x480_images_cross_processes_with_the_profile(ros_overlay):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTDDS_", "FASTRTPS_"))}
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(transport.profile_path())
    sub = subprocess.Popen(
        [sys.executable, "-c", _SUB, "12"], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert sub.stdout.readline().strip() == "ready"
        subprocess.run([sys.executable, "-c", _PUB], env=env, cwd=REPO, check=True, timeout=60)
        out, _ = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
    n = int(out.split()[1])
    assert n >= 15, out  # best effort on one host: nearly all of the 20
    assert "[921600]" in out  # whole images
