"""The development environment itself: set-up is a fast no-op when done, env.sh works from a bare shell, and
the shared rclpy fixture runs on this session's own DDS domain."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_setup_is_a_fast_no_op_when_done(ros_overlay: Path) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=300
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    # Every step that does work logs a line; a current set-up logs only the final "done".
    work = [line for line in proc.stderr.splitlines() if line.startswith("[setup") and "] done." not in line]
    assert work == [], work
    assert elapsed < 15, f"no-op set-up took {elapsed:.1f} s"


def test_env_sh_works_from_a_bare_shell(ros_overlay: Path) -> None:
    """A new terminal: nothing of the test process's environment, only `source scripts/env.sh`."""
    bare_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    code = (
        "from cleanpose_msgs.msg import InstanceSegmentation, ObjectPose, ObjectPoseArray\n"
        "from vision_msgs.msg import Detection3DArray\n"
        "from tf2_msgs.msg import TFMessage\n"
        "import rclpy, cleanpose_model, cleanpose_ros, cleanpose_tools, cleanpose_training\n"
        "print('ok', InstanceSegmentation.FORMAT_LABEL_IMAGE)\n"
    )
    proc = subprocess.run(
        ["bash", "-c", f'set -u; source scripts/env.sh && python -c "{code}" && command -v cleanpose_node'],
        cwd=REPO_ROOT,
        env=bare_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split()
    assert lines[:2] == ["ok", "1"]
    assert lines[-1] == str(REPO_ROOT / ".venv" / "bin" / "cleanpose_node")


def test_rclpy_context_uses_the_session_domain(rclpy_context) -> None:
    import rclpy

    domain = int(os.environ["ROS_DOMAIN_ID"])
    assert 0 <= domain <= 101  # ids above 101 collide with Linux ephemeral ports in Fast DDS
    assert rclpy_context.get_domain_id() == domain
    node = rclpy.create_node("cleanpose_fixture_check", context=rclpy_context)
    try:
        assert node.context is rclpy_context
    finally:
        node.destroy_node()
