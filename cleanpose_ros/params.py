"""Every node parameter in one typed dataclass: default, description, range, and whether it is read at
configure or changeable at run time. This dataclass is the one source of the node's defaults:
`config/cleanpose.yaml` is generated from it (`python -m cleanpose_ros.params --yaml > config/cleanpose.yaml`;
a test fails when the file differs) and the launch file passes that file without repeating any value.

Configure-time parameters ("read-only" in the sense of "not applied while running") are read in on_configure.
They can be set at any time; a new value takes effect at the next configure (lifecycle cleanup + configure),
which is why their ROS descriptors are not marked read_only (a read_only ROS parameter can never be set after
start-up, so cleanup + configure could not apply a change). Run-time parameters apply to the next frame;
`autostart` is read once, when the node starts.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cleanpose_ros.class_map import DEFAULT_CLASS_MAP

# When a changed value takes effect: at the next frame (run time), at the next configure, or at the next
# start of the node (autostart: it decides whether configure happens at all).
APPLIES = ("frame", "configure", "start")
_TAGS = {"frame": "", "configure": "[configure]", "start": "[start-up]"}


def _p(default, desc: str, *, applies: str = "frame", range=None, choices=None, **kw):
    assert applies in APPLIES, applies
    meta = {"desc": desc, "applies": applies, "range": range, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class NodeParams:
    # --- model (restart needed) ---
    checkpoint: str = _p(
        "",
        "Checkpoint path (.safetensors, our format). Empty: the demo checkpoint "
        "models/demo/ of this package.",
        applies="configure",
    )
    device: str = _p(
        "cuda",
        "Torch device: 'cuda', 'cuda:N' or 'cpu'. Falls back to cpu with a warning when CUDA is unavailable.",
        applies="configure",
    )
    precision: str = _p(
        "fast",
        "'fp32': exact (the published network's numbers); 'fast': DINOv2 in fp16 + TF32 on CUDA "
        "(poses within ~0.5 deg / 1 mm of fp32, measured by benchmarks/forward.py). CPU always runs fp32.",
        applies="configure",
        choices=("fp32", "fast"),
    )
    torch_compile: bool = _p(
        False,
        "Run DINOv2 and the network head through torch.compile before the CUDA-graph capture (H100: 3.5 -> "
        "3.1 ms for 1 object, 6.6 -> 5.4 ms for 6 in fast mode; adds about a minute per batch bucket "
        "when the bucket is first used). CUDA only.",
        applies="configure",
    )
    cuda_graphs: bool = _p(
        True,
        "Replay the forward from CUDA graphs (same outputs, far fewer launches). CUDA only.",
        applies="configure",
    )
    queue_mode: str = _p(
        "deterministic",
        "CleanPose confounder-queue selection: 'deterministic' (same input, "
        "same pose) or 'random' (published behaviour).",
        applies="configure",
        choices=("deterministic", "random"),
    )
    warmup: bool = _p(
        True,
        "Run forwards at configure (and capture the CUDA graphs for up to 8 objects) so the first frames are "
        "not slow.",
        applies="configure",
    )
    # --- inputs / sync (restart needed) ---
    sync_slop: float = _p(
        0.05,
        "Approximate-time sync: max stamp spread (s) of image, depth and detections.",
        applies="configure",
        range=(0.0, 10.0),
    )
    sync_queue_size: int = _p(
        10, "Approximate-time sync queue length per input.", applies="configure", range=(1, 1000)
    )
    time_jump_threshold: float = _p(
        1.0,
        "A stamp this many seconds older than its input's newest is a time jump (bag loop, clock reset): the "
        "sync queues are emptied and start again. A smaller step back is a stale, out-of-order message "
        "(dropped and counted).",
        applies="configure",
        range=(0.0, 3600.0),
    )
    input_reliability: str = _p(
        "best_effort",
        "Input QoS reliability. The default with input_depth 5 is the "
        "sensor-data profile; 'reliable' for reliable-only publishers.",
        applies="configure",
        choices=("best_effort", "reliable"),
    )
    input_depth: int = _p(5, "Input QoS history depth.", applies="configure", range=(1, 1000))
    color_transport: str = _p(
        "raw",
        "Colour input: 'raw' (sensor_msgs/Image on image) or 'compressed' (sensor_msgs/CompressedImage "
        "jpeg/png on <image>/compressed, as image_transport's compressed plugin publishes it; decoded in the "
        "node).",
        applies="configure",
        choices=("raw", "compressed"),
    )
    depth_transport: str = _p(
        "raw",
        "Depth input: 'raw' (sensor_msgs/Image on depth) or 'compressedDepth' (sensor_msgs/CompressedImage "
        "16UC1/32FC1 png on <depth>/compressedDepth, as image_transport's compressedDepth plugin publishes "
        "it).",
        applies="configure",
        choices=("raw", "compressedDepth"),
    )
    segmenter_input: str = _p(
        "instance_segmentation",
        "Type of the detections input: 'instance_segmentation' (cleanpose_msgs/InstanceSegmentation), "
        "'detection2d_labels' (vision_msgs/Detection2DArray on detections + an instance-label image on "
        "label_image, see label_values) or 'yolo' (yolo_ros' yolo_msgs/DetectionArray, polygon masks).",
        applies="configure",
        choices=("instance_segmentation", "detection2d_labels", "yolo"),
    )
    label_values: str = _p(
        "id",
        "segmenter_input detection2d_labels: which label image value is a detection's: 'id' (the integer in "
        "Detection2D.id, vision_msgs' identity of an object) or 'index' (detections[k] owns label k + 1). 0 "
        "and the encoding's maximum (vision_msgs' UNLABELED) are background.",
        choices=("id", "index"),
    )
    box_source: str = _p(
        "mask",
        "Crop box of each detection: 'mask' (mask extent, as the NOCS pipeline) or "
        "'detection' (Detection2D bbox, mask extent when empty).",
        applies="configure",
        choices=("mask", "detection"),
    )
    cameras: list = _p(  # noqa: RUF009 - _p returns a dataclasses.field
        [""],
        "Camera namespaces served by this node, one entry per camera: its inputs are <entry>/image, "
        "<entry>/depth, <entry>/camera_info, <entry>/detections, its outputs ~/<entry>/poses (and the other "
        'outputs), its TF frames <tf_prefix><entry>_<class>_<id>, its own /diagnostics status. [""] = '
        "one camera with the plain topic names. The objects of the latest set of every camera go through "
        "one batched forward per cycle; tracks are per camera.",
        applies="configure",
    )
    camera_wait: float = _p(
        0.01,
        "Several cameras: once one camera's set is ready, wait at most this many seconds for the other "
        "live cameras' sets so they share the forward (a camera without a set for stale_timeout is not "
        "waited for).",
        range=(0.0, 1.0),
    )
    autostart: bool = _p(
        True,
        "Configure and activate on start-up (plain launches without a lifecycle manager).",
        applies="start",
    )
    free_gpu_on_deactivate: bool = _p(
        False,
        "On deactivate, release the model and the cached GPU memory (the model is loaded again on activate).",
        applies="configure",
    )
    diagnostics_period: float = _p(
        0.5, "Seconds between /diagnostics messages.", applies="configure", range=(0.1, 60.0)
    )
    # --- processing (run time) ---
    score_threshold: float = _p(0.0, "Detections below this score are ignored.", range=(0.0, 1.0))
    max_objects: int = _p(20, "At most this many objects per frame (highest scores first).", range=(1, 200))
    max_detections: int = _p(
        256,
        "At most this many detections of a message are read (highest scores; the rest are logged and "
        "counted): bounds the per-frame mask memory.",
        range=(1, 100000),
    )
    max_image_pixels: int = _p(
        16_777_216,
        "Colour or depth images with more pixels (width x height) are skipped, logged and counted.",
        range=(1, 2**31 - 1),
    )
    min_points: int = _p(
        16,
        "Objects need MORE than this many valid depth pixels in their crop (protocol: 16).",
        range=(0, 1024),
    )
    min_depth: float = _p(
        0.0, "Depth below this (m) is treated as invalid; 0 = no bound.", range=(0.0, 100.0)
    )
    max_depth: float = _p(
        0.0, "Depth above this (m) is treated as invalid; 0 = no bound.", range=(0.0, 100.0)
    )
    class_map: list = _p(  # noqa: RUF009 - _p returns a dataclasses.field
        list(DEFAULT_CLASS_MAP),
        "Detector class -> model category, 'detector_class:category' "
        "entries (case-insensitive). Model category names always map to themselves.",
    )
    seed: int = _p(
        0,
        "Base seed of each object's own point sampling (with its crop window, valid-pixel count and class: "
        "the same object in the same frame gives the same pose whatever the other detections are).",
        range=(0, 2**31 - 1),
    )
    # --- outputs (run time) ---
    publish_tf: bool = _p(True, "Broadcast one TF frame per object.")
    tf_prefix: str = _p("cleanpose_", "Object TF frame name = <tf_prefix><class>_<instance id>.")
    publish_markers: bool = _p(True, "Publish ~/markers (DELETEALL, boxes, labels).")
    marker_axes: bool = _p(True, "Add an RGB axes marker per object.")
    trail_length: int = _p(
        0,
        "Markers: a line through the last N published positions of each track (0 = no trails).",
        range=(0, 1000),
    )
    publish_debug_image: bool = _p(False, "Publish ~/debug_image (projected boxes and axes over the RGB).")
    target_frame: str = _p(
        "",
        "When set, outputs are transformed into this frame through TF (latest "
        "transform); empty: the image's optical frame.",
    )
    log_throttle: float = _p(
        5.0,
        "Seconds between repeats of the same warning (per reason; the first one is always logged).",
        range=(0.0, 3600.0),
    )
    # --- tracking and filtering (configure) ---
    tracking: bool = _p(
        True,
        "Associate objects across frames per class (3D box overlap + centre distance, Hungarian): "
        "instance_id, Detection3D.id and TF frame names carry the track id (the detector's own id when it "
        "gives one). False: each frame alone, ids = the detector's id or the detection's index.",
        applies="configure",
    )
    track_max_distance: float = _p(
        0.1,
        "Largest centre distance (m) between an object and its track in the next frame.",
        applies="configure",
        range=(0.001, 10.0),
    )
    track_min_iou: float = _p(
        0.0,
        "Smallest 3D box overlap (IoU) of an object and its track; 0 = the distance alone gates.",
        applies="configure",
        range=(0.0, 1.0),
    )
    track_confirm_hits: int = _p(
        1,
        "Frames with a detection before a track is published (1 = at once; 2+ hides one-frame false "
        "detections).",
        applies="configure",
        range=(1, 100),
    )
    track_max_coast: int = _p(
        10,
        "Frames a track survives without a detection (not published meanwhile); the same id resumes.",
        applies="configure",
        range=(0, 100000),
    )
    filter_mode: str = _p(
        "full",
        "Temporal filter per track: 'none', 'light' (exponential smoothing) or 'full' (constant-velocity "
        "Kalman filters; bottle/bowl/can filter only the y axis, never the unobservable spin; outlier jumps "
        "held until repeated; covariance into ~/detections_3d). In target_frame when set, else the camera "
        "frame. Measured by benchmarks/tracking.py.",
        applies="configure",
        choices=("none", "light", "full"),
    )
    # --- diagnostics (run time) ---
    diagnostics_window: float = _p(
        1.0,
        "Seconds of recent history the /diagnostics level and shares are judged on (back to OK within this "
        "plus diagnostics_period after recovery).",
        range=(0.1, 600.0),
    )
    stale_timeout: float = _p(
        2.0,
        "ERROR when image, depth or detections had no message for this many seconds.",
        range=(0.1, 3600.0),
    )
    warn_skip_share: float = _p(
        0.2,
        "WARN when more than this share of input sets (or of objects) in the window was not used.",
        range=(0.0, 1.0),
    )
    warn_drop_share: float = _p(
        0.5,
        "WARN when more than this share of input sets in the window was dropped (model slower than input).",
        range=(0.0, 1.0),
    )
    min_input_rate: float = _p(
        0.0,
        "WARN when image, depth or detections arrive slower than this (Hz); 0 = no check.",
        range=(0.0, 1000.0),
    )

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def meta(cls, name: str) -> dict[str, Any]:
        return next(f.metadata for f in fields(cls) if f.name == name)

    def validate(self) -> None:
        """Cross-field checks; raises ValueError with the reason."""
        for f in fields(self):
            m, v = f.metadata, getattr(self, f.name)
            if m["choices"] and v not in m["choices"]:
                raise ValueError(f"{f.name} must be one of {m['choices']}, got {v!r}")
            if m["range"] and not (m["range"][0] <= v <= m["range"][1]):
                raise ValueError(f"{f.name} must be in [{m['range'][0]}, {m['range'][1]}], got {v}")
        if self.min_depth > 0 and self.max_depth > 0 and self.min_depth >= self.max_depth:
            raise ValueError(f"min_depth ({self.min_depth}) must be below max_depth ({self.max_depth})")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be a non-empty list of distinct namespaces, got {self.cameras}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


def descriptor(name: str):
    """rcl_interfaces ParameterDescriptor for a NodeParams field (ranges, choices, description)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    d = ParameterDescriptor(name=name, description=_describe(name))
    default = getattr(NodeParams(), name)
    m = NodeParams.meta(name)
    if m["range"] is not None:
        lo, hi = m["range"]
        if isinstance(default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        elif isinstance(default, int) and not isinstance(default, bool):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    return d


def _describe(name: str) -> str:
    """One description for the ROS descriptor and the YAML comment: when a change applies, range, choices,
    text."""
    m = NodeParams.meta(name)
    parts = [_TAGS[m["applies"]]] if _TAGS[m["applies"]] else []
    if m["range"] is not None:
        parts.append(f"range [{m['range'][0]}, {m['range'][1]}]")
    if m["choices"]:
        parts.append(f"one of: {', '.join(m['choices'])}.")
    return " ".join([*parts, m["desc"]])


def declare(node) -> None:
    """Declare every parameter on `node` (the node's __init__); values come from overrides / params file and
    are read with from_node() at configure."""
    defaults = NodeParams()
    for name in NodeParams.names():
        node.declare_parameter(name, getattr(defaults, name), descriptor(name))


def from_node(node) -> NodeParams:
    """The node's current parameter values, typed."""
    p = NodeParams()
    for name in NodeParams.names():
        v = node.get_parameter(name).value
        if isinstance(getattr(p, name), list):
            v = list(v) if v is not None else []
        setattr(p, name, v)
    return p


def with_changes(p: NodeParams, changes) -> NodeParams:
    """A copy of `p` with the rclpy Parameters in `changes` applied (unknown names are ignored)."""
    new = replace(p, class_map=list(p.class_map), cameras=list(p.cameras))
    for prm in changes:
        if prm.name in NodeParams.names():
            v = prm.value
            setattr(new, prm.name, list(v) if isinstance(getattr(new, prm.name), list) else v)
    return new


def pending_changes(running: NodeParams, new: NodeParams, names) -> dict[str, str]:
    """name -> when it applies ("configure" / "start"), for those of `names` that do not apply at the next
    frame and whose value in `new` differs from the one `running` uses."""
    return {
        n: NodeParams.meta(n)["applies"]
        for n in names
        if n in NodeParams.names()
        and NodeParams.meta(n)["applies"] != "frame"
        and getattr(new, n) != getattr(running, n)
    }


def run_time_update(running: NodeParams, new: NodeParams) -> NodeParams:
    """`running` with the run-time parameters of `new` (configure-time ones stay as configured)."""
    out = replace(running, class_map=list(running.class_map))
    for n in NodeParams.names():
        if NodeParams.meta(n)["applies"] == "frame":
            setattr(out, n, getattr(new, n))
    return out


# ------------------------------------------------------------------------------------------ params file
# Headings of the generated params file: the field that starts each group.
_SECTIONS = {
    "checkpoint": "model",
    "sync_slop": "inputs and synchronization",
    "score_threshold": "processing",
    "publish_tf": "outputs",
    "tracking": "tracking and filtering",
    "diagnostics_window": "diagnostics",
}
_YAML_HEADER = """\
# cleanpose_node parameters (ROS 2 params file). Every parameter, its default and meaning.
# GENERATED from cleanpose_ros/params.py (the one source of the defaults); do not edit by hand:
#   python -m cleanpose_ros.params --yaml > config/cleanpose.yaml
# [configure] = read at configure: a change takes effect at the next lifecycle cleanup + configure;
# [start-up] = read when the node starts;
# the others apply to the next frame: ros2 param set /cleanpose_node <name> <value>
# Use: ros2 launch cleanpose_ros cleanpose.launch.py params_file:=<a copy of this file>
#
# Topics (relative names: remap them, or push the node into a namespace):
#   in   image         sensor_msgs/Image          colour image, rgb8 / bgr8 / rgba8 / bgra8
#   in   depth         sensor_msgs/Image          depth registered to the colour camera, 16UC1 mm or 32FC1 m
#   in   camera_info   sensor_msgs/CameraInfo     intrinsics K of the colour camera (latest one is used)
#   in   detections    cleanpose_msgs/InstanceSegmentation   instance masks + classes + scores
#                      or (segmenter_input) vision_msgs/Detection2DArray + label_image, yolo_msgs/...Array
#   in   label_image   sensor_msgs/Image          instance labels, mono8/16UC1/32SC1 (detection2d_labels only)
#        color_transport compressed: image/compressed; depth_transport compressedDepth: depth/compressedDepth
#   out  ~/poses          cleanpose_msgs/ObjectPoseArray       header = the colour image's (or target_frame)
#   out  ~/detections_3d  vision_msgs/Detection3DArray         pose in bbox.center and results[0].pose.pose
#   out  ~/markers        visualization_msgs/MarkerArray       DELETEALL, then box + label (+ axes) per object
#   out  ~/debug_image    sensor_msgs/Image rgb8               projected boxes and axes (publish_debug_image)
#   out  /tf              object frames <tf_prefix><class>_<instance id> under the image frame (publish_tf)
#   out  /diagnostics     per-input rates/ages, sync misses, skips per reason (lifetime and recent window),
#                         latency, drops, GPU memory, RSS; level OK / WARN / ERROR (diagnostics section)
/**:
  ros__parameters:
"""


def _yaml_value(v) -> str:
    # JSON scalars and lists are valid YAML flow values and read back as the same Python values.
    return json.dumps(v)


def to_yaml(width: int = 110) -> str:
    """The params file: every parameter with its default and its description as a comment."""
    lines = [_YAML_HEADER.rstrip("\n")]
    defaults = NodeParams()
    for name in NodeParams.names():
        if name in _SECTIONS:
            lines.append(f"    # ---- {_SECTIONS[name]} ----")
        lines += textwrap.wrap(_describe(name), width, initial_indent="    # ", subsequent_indent="    # ")
        lines.append(f"    {name}: {_yaml_value(getattr(defaults, name))}")
    return "\n".join(lines) + "\n"


def to_markdown() -> str:
    """The README's parameter table (a test keeps README.md equal to it)."""
    rows = ["| parameter | default | changes apply | meaning |", "|---|---|---|---|"]
    defaults = NodeParams()
    for name in NodeParams.names():
        m = NodeParams.meta(name)
        when = f"next {m['applies']}"
        extra = f" One of {', '.join(m['choices'])}." if m["choices"] else ""
        extra += f" Range [{m['range'][0]}, {m['range'][1]}]." if m["range"] is not None else ""
        desc = (m["desc"] + extra).replace("|", "\\|")
        rows.append(f"| `{name}` | `{_yaml_value(getattr(defaults, name))}` | {when} | {desc} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cleanpose_ros.params", description=__doc__.split("\n")[0])
    out = ap.add_mutually_exclusive_group(required=True)
    out.add_argument("--yaml", action="store_true", help="print the params file (config/cleanpose.yaml)")
    out.add_argument("--markdown", action="store_true", help="print the README's parameter table")
    args = ap.parse_args(argv)
    sys.stdout.write(to_yaml() if args.yaml else to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
