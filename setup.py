"""ament_python package cleanpose_ros: installs cleanpose_model, cleanpose_ros (the node runtime),
cleanpose_tools (demo, rosbag replay, replay benchmark) and cleanpose_training (folder training/), the console
entry points, and launch/config/rviz as ROS data files (share/cleanpose_ros/...).

Works both under `colcon build` (ament_python) and `pip install -e .` (scripts/setup.sh). It must not import
the project packages: they pull in torch / rclpy, which a build step should not need.
"""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "cleanpose_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    # The on-disk folder training/ installs under the namespaced import name cleanpose_training, so that no
    # top-level module called "training" lands in site-packages.
    packages=find_packages(include=["cleanpose_model*", "cleanpose_ros*", "cleanpose_tools*"])
    + [
        "cleanpose_training" + p[len("training") :] for p in find_packages(include=["training", "training.*"])
    ],
    package_dir={"cleanpose_training": "training"},
    package_data={
        "cleanpose_model": ["configs/*.yaml", "data/*"],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.py"))),
        (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml") + glob("config/*.xml"))),
        (f"share/{PACKAGE}/rviz", sorted(glob("rviz/*.rviz"))),
        # The shipped demo checkpoint; the node finds it through ament_index outside the source tree.
        (f"share/{PACKAGE}/models/demo", sorted(f for f in glob("models/demo/*") if os.path.isfile(f))),
    ],
    # Runtime dependencies come from package.xml (rosdep) on a robot and from requirements/*.txt here.
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="cleanpose_ros maintainers",
    maintainer_email="maintainers@cleanpose-ros.dev",
    description="Category-level metric 6D pose and size from RGB-D and instance masks (CleanPose) for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "cleanpose_node = cleanpose_ros.node:main",
            "cleanpose-bench = cleanpose_tools.bench:main",
            "cleanpose-demo = cleanpose_tools.demo:main",
            "cleanpose-convert = cleanpose_model.convert:main",
            "cleanpose-synth = cleanpose_training.synthetic.__main__:main",
            "cleanpose-train = cleanpose_training.train:main",
            "cleanpose-eval = cleanpose_training.evaluation.evaluate:main",
        ],
    },
)
