"""Per-object network inputs from one RGB-D frame + instance masks: one protocol, two forms.

- `reference` (numpy/OpenCV): the published protocol step for step; serving's CPU path and the training
  datasets both call it (its docstring lists which steps are serving / dataset options);
- `graphed` (torch): the same outputs with fixed shapes on any device, each device phase one CUDA graph
  replay on CUDA and plain eager calls on the CPU (`GraphedInputBuilder`).

The node's entry points are re-exported here (DESIGN.md "Preprocessing contract"); the protocol's steps
(`get_bbox`, `sample_object`, `normalize_rgb`, ...) are imported from `reference` by their callers.
"""

from cleanpose_model.preprocess.graphed import GraphedInputBuilder
from cleanpose_model.preprocess.reference import (
    DEFAULT_SEED,
    IMAGENET_STD,
    FrameInputs,
    ObjectInputs,
    build_object_inputs,
    build_object_inputs_np,
    mask_to_box,
)

__all__ = [
    "DEFAULT_SEED",
    "IMAGENET_STD",
    "FrameInputs",
    "GraphedInputBuilder",
    "ObjectInputs",
    "build_object_inputs",
    "build_object_inputs_np",
    "mask_to_box",
]
