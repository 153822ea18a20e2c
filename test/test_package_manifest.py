"""package.xml is valid for catkin_pkg / rosdep and declares every runtime dependency the installed code
imports.

The import scan is strict on purpose: an import guarded by try/except ImportError (a fallback where the
distribution lacks a package) must still be declared, because on a robot the distribution's package is what
should be used. Only the modules in OPTIONAL_UNDECLARED, each with its reason, are exempt.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from catkin_pkg.package import parse_package

REPO_ROOT = Path(__file__).resolve().parents[1]
# The Python packages setup.py installs, import name -> folder (benchmarks/, scripts/ and test/ are not
# installed, so their imports do not count).
INSTALLED_PACKAGES = {
    "cleanpose_model": "cleanpose_model",
    "cleanpose_ros": "cleanpose_ros",
    "cleanpose_tools": "cleanpose_tools",
    "cleanpose_training": "training",
}
FIRST_PARTY = set(INSTALLED_PACKAGES)

# import name -> rosdep key (ROS package name for ROS packages)
MODULE_TO_ROSDEP = {
    "rclpy": "rclpy",
    "rcl_interfaces": "rcl_interfaces",
    "builtin_interfaces": "builtin_interfaces",
    "std_msgs": "std_msgs",
    "sensor_msgs": "sensor_msgs",
    "geometry_msgs": "geometry_msgs",
    "visualization_msgs": "visualization_msgs",
    "vision_msgs": "vision_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "diagnostic_updater": "diagnostic_updater",
    "lifecycle_msgs": "lifecycle_msgs",
    "tf2_msgs": "tf2_msgs",
    "tf2_ros": "tf2_ros_py",
    "message_filters": "message_filters",
    "ament_index_python": "ament_index_python",
    "cleanpose_msgs": "cleanpose_msgs",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "numpy": "python3-numpy",
    "scipy": "python3-scipy",
    "yaml": "python3-yaml",
    "cv2": "python3-opencv",
    "matplotlib": "python3-matplotlib",
    "tqdm": "python3-tqdm",
    "psutil": "python3-psutil",
    "PIL": "python3-pil",
    "torch": "python3-pytorch-pip",
    "safetensors": "python3-safetensors-pip",
    "open3d": "python3-open3d-pip",
    "rosbags": "python3-rosbags-pip",
}

# Python libraries that are not ROS packages must also be in requirements/base.txt (this machine's install).
MODULE_TO_PIP = {
    "numpy": "numpy",
    "scipy": "scipy",
    "yaml": "pyyaml",
    "cv2": "opencv-python-headless",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "psutil": "psutil",
    "PIL": "pillow",
    "torch": "torch",
    "safetensors": "safetensors",
    "open3d": "open3d-cpu",
    "rosbags": "rosbags",
}

OPTIONAL_UNDECLARED = {
    "pynvml": "GPU memory readout of the benchmark, used only when NVIDIA's bindings happen to be installed",
    "triton": "GPU farthest-point-sampling kernel; ships inside CUDA builds of torch, absent on CPU builds",
    "yolo_msgs": "yolo_ros' interfaces, imported only with segmenter_input yolo (no rosdep key)",
}


def imported_modules(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level names of absolute imports in the .py files under `paths` -> files importing them."""
    found: dict[str, set[str]] = {}
    for root in paths:
        for file in sorted(root.rglob("*.py")):
            tree = ast.parse(file.read_text(), filename=str(file))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(file.relative_to(root.parent)))
    return found


def third_party(found: dict[str, set[str]]) -> dict[str, set[str]]:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    return {m: files for m, files in found.items() if m not in stdlib and m not in FIRST_PARTY}


def undeclared(found: dict[str, set[str]], declared_keys: set[str]) -> list[str]:
    """Problems, one line each: modules with no known rosdep key, or whose key package.xml lacks."""
    problems = []
    for module, files in sorted(third_party(found).items()):
        if module in OPTIONAL_UNDECLARED:
            continue
        key = MODULE_TO_ROSDEP.get(module)
        where = ", ".join(sorted(files)[:3])
        if key is None:
            problems.append(
                f"{module} (imported by {where}): add its rosdep key to package.xml and MODULE_TO_ROSDEP"
            )
        elif key not in declared_keys:
            problems.append(
                f"{module} (imported by {where}): package.xml lacks <exec_depend>{key}</exec_depend>"
            )
    return problems


@pytest.fixture(scope="module")
def package():
    return parse_package(str(REPO_ROOT / "package.xml"))


def _runtime_keys(pkg) -> set[str]:
    # <depend> expands into build, build_export and exec depends; runtime needs exec.
    return {dep.name for dep in pkg.exec_depends}


def test_package_xml_is_valid(package) -> None:
    package.validate()
    assert package.name == "cleanpose_ros"
    assert package.get_build_type() == "ament_python"
    assert package.package_format == 3
    setup_py = (REPO_ROOT / "setup.py").read_text()
    assert f'version="{package.version}"' in setup_py, "setup.py and package.xml versions differ"


@pytest.mark.parametrize(
    "manifest",
    [
        "msg/package.xml",
        "test/ros_interfaces/vision_msgs/package.xml",
        "test/ros_interfaces/tf2_msgs/package.xml",
        "test/ros_interfaces/yolo_msgs/package.xml",
    ],
)
def test_interface_package_xml_is_valid(manifest: str) -> None:
    pkg = parse_package(str(REPO_ROOT / manifest))
    pkg.validate()
    assert pkg.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in {group.name for group in pkg.member_of_groups}
    assert "rosidl_default_generators" in {dep.name for dep in pkg.buildtool_depends}


def test_every_imported_module_is_declared(package) -> None:
    found = imported_modules([REPO_ROOT / p for p in INSTALLED_PACKAGES.values()])
    assert found, "the import scan found nothing; are the package paths right?"
    problems = undeclared(found, _runtime_keys(package))
    assert not problems, "undeclared runtime dependencies:\n  " + "\n  ".join(problems)


def test_python_libraries_are_in_requirements() -> None:
    req_text = (REPO_ROOT / "requirements" / "base.txt").read_text().lower()
    required = {re.split(r"[<>=!~\[;\s]", line.strip())[0] for line in req_text.splitlines()}
    found = third_party(imported_modules([REPO_ROOT / p for p in INSTALLED_PACKAGES.values()]))
    missing = [
        f"{m} -> {MODULE_TO_PIP[m]}" for m in found if m in MODULE_TO_PIP and MODULE_TO_PIP[m] not in required
    ]
    assert not missing, f"imported but not in requirements/base.txt: {missing}"


def test_scan_catches_a_new_unlisted_import(tmp_path: Path, package) -> None:
    """The check must fail for an import that nobody declared, including one hidden in a function or a try."""
    pkg_dir = tmp_path / "cleanpose_ros"
    pkg_dir.mkdir()
    (pkg_dir / "new_feature.py").write_text(
        "import numpy\n"
        "def f():\n"
        "    try:\n"
        "        from sklearn.cluster import KMeans\n"
        "    except ImportError:\n"
        "        KMeans = None\n"
        "    import rclpy.node\n"
        "    from . import sibling\n"
    )
    problems = undeclared(imported_modules([pkg_dir]), _runtime_keys(package))
    assert len(problems) == 1 and problems[0].startswith("sklearn "), problems
    # ... and a known module whose key is missing from package.xml is reported as such.
    problems = undeclared(imported_modules([pkg_dir]), _runtime_keys(package) - {"python3-numpy"})
    assert any("<exec_depend>python3-numpy</exec_depend>" in p for p in problems), problems


# ------------------------------------------------------------- the newcomer / CI contract of the repository
def test_readme_commands_are_make_targets_and_ci_runs_the_test_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]

    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = dict(re.findall(r"^([\w-]+):([^=\n]*)$", makefile, re.M))
    for target in ["setup", "demo", "test", "test-all", "lint", "format", "bench"]:
        assert target in targets, f"Makefile lacks target {target}"
    for target in ["demo", "test", "test-all", "bench"]:
        assert "setup" in targets[target].split(), f"make {target} must set up first"

    ci = REPO_ROOT / ".ci" / "run"
    lines = ci.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert ci.stat().st_mode & 0o111, ".ci/run is not executable"
    body = [line.strip() for line in lines[1:] if line.strip() and not line.lstrip().startswith("#")]
    assert body[0] == "set -euo pipefail"
    assert [line for line in body if not line.startswith(("set ", "cd "))] == ["make test"]


def test_pytest_configuration() -> None:
    import tomllib

    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pytest_cfg = config["tool"]["pytest"]["ini_options"]
    assert pytest_cfg["testpaths"] == ["test"]
    assert "-m 'not gpu'" in pytest_cfg["addopts"]
    assert "--strict-markers" in pytest_cfg["addopts"]
    assert {m.split(":")[0] for m in pytest_cfg["markers"]} == {"slow", "gpu", "ros"}
    assert config["tool"]["ruff"]["line-length"] == 110
