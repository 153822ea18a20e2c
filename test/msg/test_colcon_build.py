"""colcon builds the interface package(s) from the checkout, the way a robot workspace does.

- package discovery: with the repository in a workspace's src/, a plain crawl finds only the root package
  (colcon stops descending at a package.xml), the README's base paths find both, and the test-only interface
  copies under test/ros_interfaces (COLCON_IGNORE) are never picked up;
- the README's robot command builds cleanpose_msgs and cleanpose_ros into a fresh workspace, with this
  machine's overlay standing in for the distribution's vision_msgs;
- (slow) a from-scratch build of all three interface packages with only the venv as underlay, which is what
  scripts/setup.sh does on a clean machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

REPO_ROOT = Path(__file__).resolve().parents[2]
# What a robot engineer types (README "For robots"); relative to the workspace root.
ROBOT_BASE_PATHS = ["src", "src/cleanpose_ros/msg"]
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "install", "log", "outputs", "__pycache__", "*.egg-info", ".*_cache", "data"
)


def _venv() -> Path:
    venv = os.environ.get("VIRTUAL_ENV")
    if not venv:
        pytest.skip("needs the venv active (source scripts/env.sh)")
    return Path(venv)


def _colcon(args: list[str], cwd: Path, underlays: list[Path], timeout: int = 600):
    env = dict(os.environ)
    prefixes = os.pathsep.join(str(p) for p in underlays)
    env["CMAKE_PREFIX_PATH"] = prefixes
    env["AMENT_PREFIX_PATH"] = prefixes
    # The workspace is the only place colcon may write to; keep its logs there too.
    env["COLCON_LOG_PATH"] = str(cwd / "log")
    cmd = [str(_venv() / "bin" / "colcon"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _workspace_with_repo(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(REPO_ROOT, ws / "src" / "cleanpose_ros", ignore=COPY_IGNORE, symlinks=True)
    return ws


def _listed(proc: subprocess.CompletedProcess) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    return {line.split("\t")[0]: line.split("\t")[1] for line in proc.stdout.splitlines() if "\t" in line}


def _msg_field_names(msg_file: Path) -> list[str]:
    names = []
    for line in msg_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and "=" not in line:  # constants are not fields
            names.append(line.split()[1])
    return names


def _import_check(install: Path, package: str, msg_dir: Path) -> None:
    """Import the generated bindings from `install` in a fresh process; fields must equal the .msg files."""
    site = install / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(install / "lib"), env.get("LD_LIBRARY_PATH", "")])
    names = sorted(p.stem for p in msg_dir.glob("*.msg"))
    code = (
        f"import json, {package}.msg as m\n"
        f"fields = {{n: list(getattr(m, n).get_fields_and_field_types()) for n in {names!r}}}\n"
        "print(json.dumps({'file': m.__file__, 'fields': fields}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(install.resolve()), result["file"]
    for name in names:
        assert result["fields"][name] == _msg_field_names(msg_dir / f"{name}.msg"), name


def test_package_discovery_in_a_robot_workspace(ros_overlay: Path, tmp_path: Path) -> None:
    ws = _workspace_with_repo(tmp_path)
    underlays = [_venv()]
    # A bare crawl stops at the root package.xml, so cleanpose_msgs needs its own base path (README).
    assert set(_listed(_colcon(["list", "--base-paths", "src"], ws, underlays))) == {"cleanpose_ros"}
    found = _listed(_colcon(["list", "--base-paths", *ROBOT_BASE_PATHS], ws, underlays))
    assert found == {"cleanpose_ros": "src/cleanpose_ros", "cleanpose_msgs": "src/cleanpose_ros/msg"}
    # Even a crawl that starts above test/ros_interfaces must not find the test-only copies of robot packages.
    deep = _listed(_colcon(["list", "--base-paths", "src/cleanpose_ros/test"], ws, underlays))
    assert not {"vision_msgs", "tf2_msgs"} & set(deep)


def test_robot_command_builds_both_packages(ros_overlay: Path, tmp_path: Path) -> None:
    """README's `colcon build --base-paths src src/cleanpose_ros/msg`, from a copy of the checkout."""
    ws = _workspace_with_repo(tmp_path)
    quiet = ["--event-handlers", "console_cohesion-", "status-"]
    cmd = ["build", "--base-paths", *ROBOT_BASE_PATHS, *quiet, "--cmake-args", "-DBUILD_TESTING=OFF"]
    proc = _colcon(cmd, ws, [ros_overlay, _venv()])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert re.search(r"2 packages finished", proc.stdout), proc.stdout[-2000:]

    ros = ws / "install" / "cleanpose_ros"
    assert (ros / "share" / "ament_index" / "resource_index" / "packages" / "cleanpose_ros").is_file()
    assert (ros / "share" / "cleanpose_ros" / "package.xml").is_file()
    for script in ["cleanpose_node", "cleanpose-bench", "cleanpose-demo", "cleanpose-convert"]:
        assert os.access(ros / "lib" / "cleanpose_ros" / script, os.X_OK), script
    for kind, pattern in [("launch", "*.py"), ("config", "*.yaml"), ("rviz", "*.rviz")]:
        shipped = {p.name for p in (REPO_ROOT / kind).glob(pattern)}
        installed = {p.name for p in (ros / "share" / "cleanpose_ros" / kind).glob(pattern)}
        assert installed == shipped, kind
    site = ros / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for package in ["cleanpose_model", "cleanpose_ros", "cleanpose_tools", "cleanpose_training"]:
        assert (site / package / "__init__.py").is_file(), package
    # Installed import names are namespaced: the training/ folder must not land as a top-level "training".
    assert not (site / "training").exists()

    msgs = ws / "install" / "cleanpose_msgs"
    assert (msgs / "share" / "cleanpose_msgs" / "msg" / "ObjectPoseArray.msg").is_file()
    _import_check(msgs, "cleanpose_msgs", REPO_ROOT / "msg" / "msg")


@pytest.mark.slow
def test_fresh_build_of_all_interface_packages(tmp_path: Path) -> None:
    """What scripts/setup.sh does on a clean machine, with nothing but the venv underneath."""
    venv = _venv()
    ws = _workspace_with_repo(tmp_path)
    src = ws / "src" / "cleanpose_ros"
    test_pkgs = src / "test" / "ros_interfaces"
    paths = [str(src / "msg"), str(test_pkgs / "vision_msgs"), str(test_pkgs / "tf2_msgs")]
    cmake_args = ["-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={venv / 'bin' / 'python'}"]
    cmd = ["build", "--merge-install", "--base-paths", *paths, "--event-handlers", "console_cohesion-"]
    proc = _colcon([*cmd, "--cmake-args", *cmake_args], ws, [venv], timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    install = ws / "install"
    _import_check(install, "cleanpose_msgs", src / "msg" / "msg")
    _import_check(install, "vision_msgs", test_pkgs / "vision_msgs" / "msg")
    _import_check(install, "tf2_msgs", test_pkgs / "tf2_msgs" / "msg")
