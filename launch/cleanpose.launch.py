"""ros2 launch cleanpose_ros cleanpose.launch.py [namespace:=...] [image:=...] [depth:=...]
    [camera_info:=...] [detections:=...] [checkpoint:=...] [device:=cuda|cpu] [params_file:=...]
    [use_rviz:=true] [log_level:=info] [autostart:=true|false] [cameras:=cam_left,cam_right]

Starts cleanpose_node as a lifecycle node. With autostart (the params file's default) it configures and
activates itself; with autostart:=false a lifecycle manager (or `ros2 lifecycle set`) drives it.

Several cameras (cameras:=a,b or config/two_cameras.yaml): camera `a` reads a/image, a/depth, a/camera_info,
a/detections and publishes ~/a/poses etc.; the image/depth/camera_info/detections arguments remap only the
single camera's plain names.

Node parameter values come from the params file (config/cleanpose.yaml, generated from
cleanpose_ros/params.py, the one source of defaults); this file repeats none of them and overrides only what
the user gives on the command line.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from launch import LaunchDescription


def _nodes(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    # Only given values override the params file (an empty launch argument keeps the file's value).
    overrides = {}
    if arg("autostart"):
        overrides["autostart"] = arg("autostart").lower() in ("1", "true", "yes")
    if arg("checkpoint"):
        overrides["checkpoint"] = arg("checkpoint")
    if arg("device"):
        overrides["device"] = arg("device")
    if arg("cameras"):
        overrides["cameras"] = [c.strip() for c in arg("cameras").split(",")]
    use_rviz = arg("use_rviz").lower() in ("1", "true", "yes")
    if use_rviz:
        overrides["publish_debug_image"] = True  # the RViz config shows it
    remaps = [(k, arg(k)) for k in ("image", "depth", "camera_info", "detections")]
    actions = [
        LifecycleNode(
            package="cleanpose_ros",
            executable="cleanpose_node",
            name="cleanpose_node",
            namespace=arg("namespace"),
            parameters=[arg("params_file"), overrides],
            remappings=remaps,
            arguments=["--ros-args", "--log-level", arg("log_level")],
            output="screen",
            emulate_tty=True,
        )
    ]
    if use_rviz:
        rviz_cfg = os.path.join(get_package_share_directory("cleanpose_ros"), "rviz", "cleanpose.rviz")
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="cleanpose_rviz",
                namespace=arg("namespace"),
                arguments=["-d", rviz_cfg],
                output="screen",
            )
        )
    return actions


def generate_launch_description():
    share = get_package_share_directory("cleanpose_ros")
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node"),
        DeclareLaunchArgument(
            "image", default_value="/camera/color/image_raw", description="Colour image topic"
        ),
        DeclareLaunchArgument(
            "depth",
            default_value="/camera/aligned_depth_to_color/image_raw",
            description="Depth registered to the colour camera (16UC1 mm or 32FC1 m)",
        ),
        DeclareLaunchArgument(
            "camera_info",
            default_value="/camera/color/camera_info",
            description="CameraInfo of the colour camera",
        ),
        DeclareLaunchArgument(
            "detections", default_value="/detections", description="cleanpose_msgs/InstanceSegmentation topic"
        ),
        DeclareLaunchArgument(
            "checkpoint",
            default_value="",
            description="Checkpoint (.safetensors); empty: params file / shipped demo model",
        ),
        DeclareLaunchArgument(
            "device", default_value="", description="cuda | cuda:N | cpu; empty: params file"
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=os.path.join(share, "config", "cleanpose.yaml"),
            description="Parameters file",
        ),
        DeclareLaunchArgument(
            "cameras",
            default_value="",
            description="Camera namespaces, comma-separated (cam_left,cam_right): one node, one batched "
            "forward for all; empty: params file (one camera, plain topic names)",
        ),
        DeclareLaunchArgument(
            "use_rviz", default_value="false", description="Start RViz with rviz/cleanpose.rviz"
        ),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error"),
        DeclareLaunchArgument(
            "autostart",
            default_value="",
            description="true: configure + activate on start; false: leave it to a lifecycle manager; "
            "empty: params file",
        ),
        DeclareLaunchArgument(
            "fastdds_builtin_transports",
            default_value=os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA"),
            description="Fast DDS transports of the node (LARGE_DATA: shared memory + TCP for images; with "
            "the default UDP transport, lost fragments of 640x480 images stall reliable topics for seconds "
            "and drop best-effort ones). Give the camera and detector the same setting.",
        ),
    ]
    transports = SetEnvironmentVariable(
        "FASTDDS_BUILTIN_TRANSPORTS", LaunchConfiguration("fastdds_builtin_transports")
    )
    return LaunchDescription([*args, transports, OpaqueFunction(function=_nodes)])
