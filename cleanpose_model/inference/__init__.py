"""Inference forms of the reference network, bound once by an explicit mode.

    from cleanpose_model.inference import InferenceMode, build_inference
    fwd = build_inference(net, InferenceMode(precision="fast", cuda_graphs=True), queue_entries=80)
    out = fwd(rgb, pts, choose, category, queue_feats)   # CleanPoseNet.forward's eval dict
    fwd.capture(DEFAULT_BUCKETS)                          # CUDA graphs ahead of use

``forms/`` mirrors the reference modules one to one; ``build.py`` is the one place a mode is decided;
``graphs.py`` replays a bound network from CUDA graphs.
"""

from cleanpose_model.inference.build import InferenceMode, build_inference
from cleanpose_model.inference.graphs import DEFAULT_BUCKETS

__all__ = ["DEFAULT_BUCKETS", "InferenceMode", "build_inference"]
