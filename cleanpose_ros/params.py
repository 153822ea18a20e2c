"""Every node parameter in one typed dataclass: default, description, range, and whether it is read-only
(needs a restart: lifecycle cleanup + configure) or changeable at run time through the parameter service.
`config/cleanpose.yaml` carries the same defaults (a test checks they agree)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from cleanpose_ros.class_map import DEFAULT_CLASS_MAP


def _p(default, desc: str, *, read_only: bool = False, range=None, choices=None, **kw):
    meta = {"desc": desc, "read_only": read_only, "range": range, "choices": choices}
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
        read_only=True,
    )
    device: str = _p(
        "cuda",
        "Torch device: 'cuda', 'cuda:N' or 'cpu'. Falls back to cpu with a warning when CUDA is unavailable.",
        read_only=True,
    )
    precision: str = _p(
        "fast",
        "'fp32': exact (the published network's numbers); 'fast': DINOv2 in fp16 + TF32 on CUDA "
        "(poses within ~0.5 deg / 1 mm of fp32, measured by bench/perf.py). CPU always runs fp32.",
        read_only=True,
        choices=("fp32", "fast"),
    )
    torch_compile: bool = _p(
        False,
        "Run DINOv2 and the network head through torch.compile before the CUDA-graph capture (H100: 3.5 -> "
        "3.1 ms for 1 object, 6.6 -> 5.4 ms for 6 in fast mode; adds about a minute per batch bucket "
        "when the bucket is first used). CUDA only.",
        read_only=True,
    )
    cuda_graphs: bool = _p(
        True,
        "Replay the forward from CUDA graphs (same outputs, far fewer launches). CUDA only.",
        read_only=True,
    )
    queue_mode: str = _p(
        "deterministic",
        "CleanPose confounder-queue selection: 'deterministic' (same input, "
        "same pose) or 'random' (published behaviour).",
        read_only=True,
        choices=("deterministic", "random"),
    )
    warmup: bool = _p(
        True,
        "Run forwards at configure (and capture the CUDA graphs for up to 8 objects) so the first frames are "
        "not slow.",
        read_only=True,
    )
    # --- inputs / sync (restart needed) ---
    sync_slop: float = _p(
        0.05,
        "Approximate-time sync: max stamp spread (s) of image, depth and detections.",
        read_only=True,
        range=(0.0, 10.0),
    )
    sync_queue_size: int = _p(
        10, "Approximate-time sync queue length per input.", read_only=True, range=(1, 1000)
    )
    input_reliability: str = _p(
        "best_effort",
        "Input QoS reliability. The default with input_depth 5 is the "
        "sensor-data profile; 'reliable' for reliable-only publishers.",
        read_only=True,
        choices=("best_effort", "reliable"),
    )
    input_depth: int = _p(5, "Input QoS history depth.", read_only=True, range=(1, 1000))
    box_source: str = _p(
        "mask",
        "Crop box of each detection: 'mask' (mask extent, as the NOCS pipeline) or "
        "'detection' (Detection2D bbox, mask extent when empty).",
        read_only=True,
        choices=("mask", "detection"),
    )
    autostart: bool = _p(
        True,
        "Configure and activate on start-up (plain launches without a lifecycle manager).",
        read_only=True,
    )
    free_gpu_on_deactivate: bool = _p(
        False,
        "On deactivate, move the model to the CPU and release cached GPU memory (it moves back on activate).",
        read_only=True,
    )
    diagnostics_period: float = _p(
        1.0, "Seconds between /diagnostics messages.", read_only=True, range=(0.1, 60.0)
    )
    # --- processing (run time) ---
    score_threshold: float = _p(0.0, "Detections below this score are ignored.", range=(0.0, 1.0))
    max_objects: int = _p(20, "At most this many objects per frame (highest scores first).", range=(1, 200))
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
        "Seed of the per-frame point sampling (fixed: the same frame gives the same pose).",
        range=(0, 2**31 - 1),
    )
    # --- outputs (run time) ---
    publish_tf: bool = _p(True, "Broadcast one TF frame per object.")
    tf_prefix: str = _p("cleanpose_", "Object TF frame name = <tf_prefix><class>_<instance id>.")
    publish_markers: bool = _p(True, "Publish ~/markers (DELETEALL, boxes, labels).")
    marker_axes: bool = _p(True, "Add an RGB axes marker per object.")
    publish_debug_image: bool = _p(False, "Publish ~/debug_image (projected boxes and axes over the RGB).")
    target_frame: str = _p(
        "",
        "When set, outputs are transformed into this frame through TF (latest "
        "transform); empty: the image's optical frame.",
    )
    log_throttle: float = _p(5.0, "Seconds between repeats of the same warning.", range=(0.0, 3600.0))

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
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


def descriptor(name: str):
    """rcl_interfaces ParameterDescriptor for a NodeParams field (ranges, read_only, description)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    m = NodeParams.meta(name)
    desc = m["desc"] + (f" One of {list(m['choices'])}." if m["choices"] else "")
    d = ParameterDescriptor(name=name, description=desc, read_only=m["read_only"])
    default = getattr(NodeParams(), name)
    if m["range"] is not None:
        lo, hi = m["range"]
        if isinstance(default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        elif isinstance(default, int) and not isinstance(default, bool):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    return d


def declare(node) -> NodeParams:
    """Declare all parameters on `node` (values from overrides / params file) and return them typed."""
    defaults = NodeParams()
    for name in NodeParams.names():
        node.declare_parameter(name, getattr(defaults, name), descriptor(name))
    return from_node(node)


def from_node(node) -> NodeParams:
    p = NodeParams()
    for name in NodeParams.names():
        v = node.get_parameter(name).value
        if isinstance(getattr(p, name), list):
            v = list(v) if v is not None else []
        setattr(p, name, v)
    return p
