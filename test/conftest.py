"""Shared pytest fixtures and hooks for the whole test tree.

- Every test session gets its own ROS_DOMAIN_ID (held by a file lock), so DDS traffic of concurrent test
  runs on one machine (several engineers, CI jobs) never mixes. Child processes inherit it.
- Tests marked ``gpu`` are skipped when torch sees no CUDA device.
- ``ros_overlay`` makes sure the colcon overlay (build/ros_ws) is built and importable; ``rclpy_context``
  gives a test its own initialized rclpy context on the session's domain.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Fast DDS derives UDP ports from the domain id; ids above 101 collide with the Linux ephemeral port range.
_DOMAIN_RANGE = range(20, 101)
_domain_lock_fd: int | None = None


def _claim_domain_id() -> int:
    """Lock one domain id in a machine-wide directory; the lock lives as long as this process."""
    global _domain_lock_fd
    lock_dir = Path(tempfile.gettempdir()) / "cleanpose_ros_test_domains"
    lock_dir.mkdir(exist_ok=True)
    start = os.getpid() % len(_DOMAIN_RANGE)
    for k in range(len(_DOMAIN_RANGE)):
        domain = _DOMAIN_RANGE[(start + k) % len(_DOMAIN_RANGE)]
        fd = os.open(lock_dir / f"{domain}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _domain_lock_fd = fd
        return domain
    raise RuntimeError(f"all ROS domain ids {_DOMAIN_RANGE.start}..{_DOMAIN_RANGE.stop - 1} are in use")


def pytest_configure(config: pytest.Config) -> None:
    # An explicit ROS_DOMAIN_ID from the caller wins (e.g. to watch the test traffic with ros2 topic echo).
    if "CLEANPOSE_TEST_DOMAIN_ID" in os.environ:
        os.environ["ROS_DOMAIN_ID"] = os.environ["CLEANPOSE_TEST_DOMAIN_ID"]
    else:
        os.environ["ROS_DOMAIN_ID"] = str(_claim_domain_id())
    # Keep test traffic on this host: no multicast discovery onto the network.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


def pytest_report_header(config: pytest.Config) -> str:
    env = os.environ
    return f"ROS_DOMAIN_ID={env.get('ROS_DOMAIN_ID')} RMW_IMPLEMENTATION={env.get('RMW_IMPLEMENTATION')}"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    # TRITON_INTERPRET=1 runs the Triton kernel tests on the CPU; those tests skip themselves otherwise.
    if os.environ.get("TRITON_INTERPRET") == "1":
        gpu_items = [item for item in gpu_items if "triton" not in item.nodeid]
    # Importing torch costs seconds, so only ask when a GPU test was actually selected.
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)


def _overlay_problem() -> str | None:
    """Why the overlay's Python bindings cannot be imported in this process, or None when they can."""
    try:
        import cleanpose_msgs.msg  # noqa: F401
        import tf2_msgs.msg  # noqa: F401
        import vision_msgs.msg  # noqa: F401
    except ImportError as exc:
        return f"{exc}; run the tests through `make test` or after `source scripts/env.sh`"
    return None


@pytest.fixture(scope="session")
def ros_overlay() -> Path:
    """The colcon install prefix holding cleanpose_msgs, vision_msgs and tf2_msgs, built and current.

    Runs scripts/setup.sh: a no-op when its stamps match; it rebuilds the overlay when a .msg changed.
    Under `make test` / CI (CLEANPOSE_REQUIRE_ROS=1 or CI set) a missing overlay fails the test instead of
    skipping it: the environment is what those runs check.
    """
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/setup.sh failed:\n{proc.stderr[-4000:]}")
    problem = _overlay_problem()
    if problem:
        if os.environ.get("CLEANPOSE_REQUIRE_ROS") == "1" or os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return REPO_ROOT / "build" / "ros_ws" / "install"


@pytest.fixture
def rclpy_context(ros_overlay: Path):
    """An initialized rclpy context of its own on the session's ROS_DOMAIN_ID; shut down after the test."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
    try:
        yield context
    finally:
        context.try_shutdown()
