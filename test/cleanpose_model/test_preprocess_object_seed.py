"""Per-object sampling seeds (`object_seed`, `reference.object_rng`): an object's samples depend only on its
own inputs, so reordering or dropping the other detections of a frame leaves its network inputs bit-identical,
in the numpy reference and in the torch form alike; the one-stream `rng` path (the datasets') is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_scene import order_scene

from cleanpose_model.preprocess.graphed import GraphedInputBuilder
from cleanpose_model.preprocess.reference import build_object_inputs_np

K = np.array([[400.0, 0, 160.0], [0, 400.0, 120.0], [0, 0, 1]])


def _rows(objs) -> dict:
    """kept detection index -> (pts, choose, rgb) of that object."""
    return {int(k): (objs.pts[i], objs.choose[i], objs.rgb[i]) for i, k in enumerate(objs.kept)}


@pytest.mark.parametrize("order", [[4, 2, 0, 1, 3], [1, 0], [2], [3, 1, 4]])
def test_reordered_or_dropped_detections_leave_each_object_bit_identical(order):
    rgb, depth, masks, boxes, cats = order_scene()
    full = _rows(build_object_inputs_np(rgb, depth, K, masks, boxes, cats, object_seed=7))
    assert sorted(full) == [0, 1, 2, 4]  # detection 3 (9 pixels) is dropped
    sub = build_object_inputs_np(rgb, depth, K, masks[order], boxes[order], cats[order], object_seed=7)
    got = {order[k]: v for k, v in _rows(sub).items()}
    assert sorted(got) == sorted(j for j in order if j != 3)
    for j, (pts, choose, crop) in got.items():
        assert np.array_equal(pts, full[j][0]) and np.array_equal(choose, full[j][1])
        assert np.array_equal(crop, full[j][2])


def test_one_stream_depends_on_order_and_object_seeds_differ_between_objects_and_seeds():
    """What the per-object path fixes: with one stream the second object's samples change when the first is
    dropped. Two objects of one category and shape still draw different pixels, and the base seed matters."""
    rgb, depth, masks, boxes, cats = order_scene()
    stream = build_object_inputs_np(rgb, depth, K, masks, boxes, cats, rng=np.random.default_rng(0))
    stream_sub = build_object_inputs_np(
        rgb, depth, K, masks[1:], boxes[1:], cats[1:], rng=np.random.default_rng(0)
    )
    assert not np.array_equal(stream.choose[1], stream_sub.choose[0])
    a = build_object_inputs_np(rgb, depth, K, masks, boxes, cats, object_seed=0)
    b = build_object_inputs_np(rgb, depth, K, masks, boxes, cats, object_seed=1)
    assert not np.array_equal(a.choose[0], b.choose[0])
    # objects 0 and 1 have the same box size and category: only their windows (and counts) tell them apart
    sizes = boxes[:2, 2:] - boxes[:2, :2]
    assert np.array_equal(sizes[0], sizes[1])
    assert not np.array_equal(a.choose[0], a.choose[1])


def test_torch_form_equals_numpy_with_object_seeds_and_arguments_are_exclusive():
    rgb, depth, masks, boxes, cats = order_scene(3)
    builder = GraphedInputBuilder("cpu", buckets=(1, 2, 4, 8))
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 4]):
        fr = (rgb, depth, K, masks[order], boxes[order], cats[order])
        ref = build_object_inputs_np(*fr, object_seed=11)
        batch, kept, num_points, wins = builder(*fr, object_seed=11)
        assert np.array_equal(kept, ref.kept) and np.array_equal(num_points, ref.num_points)
        assert np.array_equal(wins, ref.windows)
        assert np.array_equal(batch.pts.numpy(), ref.pts) and np.array_equal(batch.choose.numpy(), ref.choose)
        assert np.array_equal(batch.rgb.numpy(), ref.rgb)
    with pytest.raises(ValueError, match="not both"):
        build_object_inputs_np(rgb, depth, K, masks, boxes, cats, rng=np.random.default_rng(0), object_seed=1)
    with pytest.raises(ValueError, match="not both"):
        builder(rgb, depth, K, masks, boxes, cats, rng=np.random.default_rng(0), object_seed=1)
