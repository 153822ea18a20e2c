"""Small packed datasets (training/datasets/packed.py layout) written object by object for tests."""

from __future__ import annotations

import json

import numpy as np

from cleanpose_model.categories import NOCS


def pack_object(category: int, image: int, **fields) -> dict:
    """One object of a pack (the fields of ``_ShardWriter.add``): a 5-pixel object 0.6 m away, identity pose,
    10 cm box, unless ``fields`` say otherwise."""
    obj = {
        "jpeg": np.zeros(4, np.uint8),
        "depth_mm": np.full(5, 600, np.uint16),
        "pix": np.arange(5, dtype=np.uint32),
        "window": [0, 40, 0, 40],
        "category": category,
        "rotation": np.eye(3, dtype=np.float32),
        "translation": np.array([0, 0, 0.6], np.float32),
        "size": np.array([0.1, 0.1, 0.1], np.float32),
        "model": 0,
        "image": image,
    }
    return {**obj, **fields}


def write_pack(
    root, objects: list[dict], intrinsics, image_hw, per_shard: int, model_points: int
) -> list[str]:
    """A pack directory of ``objects``, as ``packed pack`` writes one; returns its shard names."""
    from cleanpose_training.datasets.packed import FORMAT, VERSION, _ShardWriter

    w = _ShardWriter(root, per_shard=per_shard)
    for obj in objects:
        w.add(**obj)
    w.flush()
    np.save(root / "models.npy", np.zeros((1, model_points, 3), np.float16))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "intrinsics": list(intrinsics),
        "image_size": list(image_hw),
        "shards": w.names,
        "categories": list(NOCS.names),
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return w.names
