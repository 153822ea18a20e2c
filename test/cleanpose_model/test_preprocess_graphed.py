"""cleanpose_model/preprocess/graphed.py: the fixed-shape torch form gives the numpy reference's objects bit
for bit. On the CPU its phases run eagerly; the gpu tests replay the graphs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from synthetic_scene import rgbd_scene

from cleanpose_model.preprocess.graphed import GraphedInputBuilder, resize_uint8_like_cv2, window_side
from cleanpose_model.preprocess.reference import build_object_inputs_np, mask_to_box

K_REAL = np.array([[591.0125, 0, 322.525], [0, 590.16775, 244.11084], [0, 0, 1]])
# Explicit buckets: the defaults come from the inference forms (`default_buckets`), not needed here.
BUCKETS = (1, 2, 3, 4, 6, 8)


def _scene(seed=0, h=480, w=640):
    """4 objects: > 1024 valid pixels, ~500 (with replacement), 9 (dropped), one in a corner."""
    g = np.random.default_rng(seed)
    rgb = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = (g.integers(400, 1500, (h, w)) / 1000.0).astype(np.float32)
    depth[g.random((h, w)) < 0.2] = 0.0
    masks = np.zeros((4, h, w), bool)
    masks[0, 100:180, 200:290] = True
    masks[1, 300:320, 50:75] = True
    masks[2, 10:13, 600:603] = True
    masks[3, 400:479, 560:639] = True
    boxes = np.array([mask_to_box(m) for m in masks])
    return rgb, depth, masks, boxes


def _border_scene():
    """8 windows touching every border and corner, sides 40 to the 440 cap, one object of exactly 17 px."""
    boxes = [
        (0, 0, 30, 25),
        (470, 620, 480, 640),
        (0, 300, 50, 380),
        (200, 0, 290, 60),
        (300, 600, 420, 640),
        (430, 100, 480, 260),
        (20, 20, 470, 620),
        (240, 320, 241, 337),
    ]
    rgb, depth, masks = rgbd_scene(np.random.default_rng(4), 480, 640, boxes, (0.3, 2.0), holes=0.1, fill=0.8)
    masks[7, 240, 320:337] = True  # the 17 px object: every pixel
    depth[240, 320:337] = 0.7
    return rgb, depth, masks, np.array(boxes)


def _bad_depth_scene():
    """Small frame (window side capped at min(H, W) = 120), NaN / inf / negative / zero depth, uint8 masks."""
    h, w = 120, 160
    g = np.random.default_rng(6)
    rgb = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = np.full((h, w), 0.8, np.float32)
    depth[:, :40] = np.nan
    depth[:, 40:60] = np.inf
    depth[:, 60:70] = -1.0
    depth[:, 70:75] = -np.inf
    depth[:, 75:80] = 0.0
    K = np.array([[100.0, 0, 80], [0, 100, 60], [0, 0, 1]])
    masks = np.zeros((2, h, w), np.uint8)
    masks[0] = 255
    masks[1, 10:50, 30:90] = 1
    return rgb, depth, K, masks, np.array([(0, 0, h, w), (10, 30, 50, 90)])


def _assert_same(got, ref, rgb_exact=True):
    """got: (ObjectBatch, kept, num_points, windows); ref: ObjectInputs of the numpy path."""
    batch, kept, nums, wins = got
    assert kept.dtype == np.int64 and kept.tolist() == ref.kept.tolist()
    np.testing.assert_array_equal(nums, ref.num_points)
    np.testing.assert_array_equal(wins.reshape(-1, 4), ref.windows)
    assert batch.pts.dtype == torch.float32 and batch.choose.dtype == torch.int64
    assert batch.category.dtype == torch.int64 and batch.rgb.shape == ref.rgb.shape
    np.testing.assert_array_equal(batch.pts.cpu().numpy(), ref.pts)
    np.testing.assert_array_equal(batch.choose.cpu().numpy(), ref.choose)
    np.testing.assert_array_equal(batch.category.cpu().numpy(), ref.category)
    if (
        rgb_exact
    ):  # the integer resize equals this OpenCV build's (test_resize_model_equals_opencv_inter_linear)
        np.testing.assert_array_equal(batch.rgb.cpu().numpy(), ref.rgb)


def _frames():
    """(rgb, depth, K, masks, boxes, categories) of every test frame."""
    out = []
    for seed in (0, 5):
        rgb, depth, masks, boxes = _scene(seed)
        out.append((rgb, depth, K_REAL, masks, boxes, np.array([5, 0, 1, 3])))
    rgb, depth, masks, boxes = _border_scene()
    out.append((rgb, depth, K_REAL, masks, boxes, np.arange(8) % 6))
    rgb, depth, K, masks, boxes = _bad_depth_scene()
    out.append((rgb, depth, K, masks, boxes, np.array([1, 4])))
    rgb, depth, masks, boxes = _scene(8)
    out.append((rgb, depth, K_REAL, masks[:1], boxes[:1], np.array([2])))  # one object
    return out


def _tensors(frame, dev="cpu"):
    rgb, depth, K, masks, boxes, cats = frame
    t = [torch.from_numpy(a).to(dev) for a in (rgb, depth, masks)]
    return (t[0], t[1], K, t[2], boxes, cats)


def test_resize_model_equals_opencv_inter_linear():
    """The integer model of cv2.resize INTER_LINEAR uint8 that phase A computes: at most one level anywhere
    (the documented bound); on OpenCV builds with the vectorised kernel (x86 SSE/AVX, NEON) it is exact,
    while a float bilinear or the scalar rounding would differ in ~12% of the pixels."""
    g = np.random.default_rng(0)
    for side in [*range(40, 441, 40), 37, 224, 225, 480]:
        img = g.integers(0, 256, (side, side, 3), dtype=np.uint8)
        ref = cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR).astype(int)
        diff = np.abs(resize_uint8_like_cv2(img).astype(int) - ref)
        assert diff.max() <= 1, side
        assert (diff > 0).mean() < 0.01, side


def test_cpu_phases_equal_numpy_reference_on_many_frames():
    """One builder over all frames (buckets and frame sizes change between calls, slots are reused), host
    arrays and tensors as inputs: each call equals the numpy reference."""
    builder = GraphedInputBuilder("cpu", buckets=BUCKETS)
    frames = _frames()
    for rep in range(2):
        for i, fr in enumerate(frames):
            seed = 10 * i + rep
            ref = build_object_inputs_np(*fr, rng=np.random.default_rng(seed))
            _assert_same(builder(*fr, rng=np.random.default_rng(seed)), ref)
            _assert_same(builder(*_tensors(fr), rng=np.random.default_rng(seed)), ref)
    assert builder.fallbacks == 0
    # slots: (bucket, H, W, ...) of 4 objects at 640x480, 8 objects, 2 objects at 160x120, 1 object
    assert sorted((k[0], k[1], k[2]) for k in builder._slots) == [
        (1, 480, 640),
        (2, 120, 160),
        (4, 480, 640),
        (8, 480, 640),
    ]


def test_expected_drops_and_border_windows():
    builder = GraphedInputBuilder("cpu", buckets=BUCKETS)
    fr = _frames()
    _, kept, nums, wins = builder(*fr[0], rng=np.random.default_rng(0))
    assert kept.tolist() == [0, 1, 3]  # the 9-pixel object is dropped
    _, kept, nums, wins = builder(*fr[2], rng=np.random.default_rng(0))
    assert kept.tolist() == list(range(8)) and nums[7] == 17
    assert (wins[:, 1] - wins[:, 0]).tolist() == [40, 40, 120, 120, 160, 200, 440, 40]
    assert wins[:, [0, 2]].min() == 0 and wins[:, 1].max() == 480 and wins[:, 3].max() == 640
    assert window_side(480, 640) == 440 and window_side(120, 160) == 120


def test_padded_rows_and_stale_buffers_do_not_leak():
    """Fewer objects than the bucket after a call that filled it (stale mask / table rows from the previous
    frame stay in the static buffers), then an odd count: still the numpy objects."""
    builder = GraphedInputBuilder("cpu", buckets=(4, 8))
    rgb, depth, masks, boxes = _scene(3)
    cats = np.array([0, 1, 2, 3])
    for sel in ([0, 1, 2, 3], [3], [1, 3, 0], [2], [0, 1, 2, 3, 0, 1]):
        fr = (rgb, depth, K_REAL, masks[sel], boxes[sel], cats[sel])
        _assert_same(
            builder(*fr, rng=np.random.default_rng(1)),
            build_object_inputs_np(*fr, rng=np.random.default_rng(1)),
        )


def test_bool_uint8_and_int_masks_give_the_same_objects():
    rgb, depth, masks, boxes = _scene(2)
    ref = build_object_inputs_np(rgb, depth, K_REAL, masks, boxes, [0, 1, 2, 3], rng=np.random.default_rng(4))
    builder = GraphedInputBuilder("cpu", buckets=BUCKETS)
    for m in (masks, masks.astype(np.uint8) * 255, masks.astype(np.int64) * 256):
        _assert_same(builder(rgb, depth, K_REAL, m, boxes, [0, 1, 2, 3], rng=np.random.default_rng(4)), ref)
        got = builder(
            torch.from_numpy(rgb),
            torch.from_numpy(depth),
            K_REAL,
            torch.from_numpy(m),
            boxes,
            [0, 1, 2, 3],
            rng=np.random.default_rng(4),
        )
        _assert_same(got, ref)


def test_depth_dtypes_n_points_default_and_legacy_generators():
    rgb, depth, masks, boxes = _scene(7)
    d64 = depth.astype(np.float64) + 1e-9  # not representable in float32: must not be rounded through it
    builder = GraphedInputBuilder("cpu", buckets=BUCKETS)
    cats = [0, 1, 2, 3]
    for d in (d64, depth.astype(np.float16)):
        ref = build_object_inputs_np(rgb, d, K_REAL, masks, boxes, cats)
        _assert_same(builder(rgb, d, K_REAL, masks, boxes, cats), ref)
        _assert_same(builder(*_tensors((rgb, d, K_REAL, masks, boxes, cats))), ref)
    got = builder(rgb, depth, K_REAL, masks, boxes, cats, n_points=256, rng=np.random.default_rng(2))
    ref = build_object_inputs_np(
        rgb, depth, K_REAL, masks, boxes, cats, n_points=256, rng=np.random.default_rng(2)
    )
    _assert_same(got, ref)
    assert got[0].pts.shape == (3, 256, 3)
    ref = build_object_inputs_np(rgb, depth, K_REAL, masks, boxes, cats, rng=np.random.RandomState(3))
    _assert_same(builder(rgb, depth, K_REAL, masks, boxes, cats, rng=np.random.RandomState(3)), ref)


def test_empty_all_rejected_too_many_objects_and_bad_inputs():
    rgb, depth, masks, boxes = _scene()
    builder = GraphedInputBuilder("cpu", buckets=(1, 2))
    batch, _, _, wins = builder(rgb, depth, K_REAL, masks[:0], boxes[:0], [])
    assert len(batch) == 0 and batch.pts.shape == (0, 1024, 3) and wins.shape == (0, 4)
    # every object with <= 16 valid pixels: nothing is drawn from the generator
    m = np.zeros((2, 480, 640), bool)
    m[0, 50, 100:116] = True
    m[1, 10:13, 600:603] = True
    rng = np.random.default_rng(0)
    batch, kept, _, _ = builder(rgb, depth, K_REAL, m, [mask_to_box(x) for x in m], [0, 1], rng)
    assert len(batch) == 0 and kept.shape == (0,) and batch.rgb.shape == (0, 3, 224, 224)
    assert rng.integers(1 << 30) == np.random.default_rng(0).integers(1 << 30)
    # 4 and 3 objects > the largest bucket (2): the same phases on 4 rows, same objects
    for sel in ([0, 1, 2, 3], [3, 0, 1]):
        fr = (rgb, depth, K_REAL, masks[sel], boxes[sel], np.array([0, 1, 2, 3])[sel])
        _assert_same(
            builder(*fr, rng=np.random.default_rng(2)),
            build_object_inputs_np(*fr, rng=np.random.default_rng(2)),
        )
    assert builder.fallbacks == 2 and sorted(k[0] for k in builder._slots) == [2, 4]
    with pytest.raises(ValueError, match="masks but"):
        builder(rgb, depth, K_REAL, masks, boxes[:2], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="does not match rgb"):
        builder(rgb[:100], depth, K_REAL, masks, boxes, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="CUDA graphs"):
        GraphedInputBuilder("cpu", graphs=True)


@pytest.mark.gpu
def test_cuda_graphs_equal_eager_and_numpy():
    """The graphed CUDA path (host arrays and device tensors in) equals the eager phases on CUDA and the
    numpy reference; outputs are copies that later calls do not change; more objects than the largest
    bucket run eagerly with the same result."""
    dev = torch.device("cuda")
    graphed = GraphedInputBuilder(dev, buckets=BUCKETS)
    eager = GraphedInputBuilder(dev, buckets=BUCKETS, graphs=False)
    frames = _frames()
    kept_results = []
    for rep in range(2):
        for i, fr in enumerate(frames):
            seed = 10 * i + rep
            ref = build_object_inputs_np(*fr, rng=np.random.default_rng(seed))
            for got in (
                graphed(*fr, rng=np.random.default_rng(seed)),
                graphed(*_tensors(fr, dev), rng=np.random.default_rng(seed)),
                eager(*fr, rng=np.random.default_rng(seed)),
            ):
                assert got[0].pts.device.type == "cuda"
                _assert_same(got, ref)
            kept_results.append((graphed(*fr, rng=np.random.default_rng(seed)), ref))
    for got, ref in kept_results:  # still the values of their own frame
        _assert_same(got, ref)
    assert graphed.fallbacks == 0 and all(s.graph_a is not None for s in graphed._slots.values())
    # a side stream: the builder orders itself after the previous call
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        got = graphed(*frames[0], rng=np.random.default_rng(0))
    s.synchronize()
    _assert_same(got, build_object_inputs_np(*frames[0], rng=np.random.default_rng(0)))
    small = GraphedInputBuilder(dev, buckets=(1, 2))
    fr = frames[2]  # 8 objects: eager on 8 rows
    _assert_same(
        small(*fr, rng=np.random.default_rng(3)), build_object_inputs_np(*fr, rng=np.random.default_rng(3))
    )
    assert small.fallbacks == 1


@pytest.mark.gpu
def test_pipeline_cuda_build_inputs_uses_one_builder_and_gives_the_numpy_inputs():
    """FramePipeline's CUDA branch (host arrays in) keeps one builder across frames and gives the numpy
    path's inputs; this runs without the ROS interface packages, unlike test/cleanpose_ros."""
    from cleanpose_ros.pipeline import FramePipeline, PipelineConfig

    cats = ["bottle", "bowl", "camera", "can", "laptop", "mug"]
    est = type("E", (), {"device": torch.device("cuda"), "dtype": torch.float32, "categories": cats})()
    cpu = type("E", (), {"device": torch.device("cpu"), "dtype": torch.float32, "categories": cats})()
    pipe = FramePipeline(est)
    ref_pipe = FramePipeline(cpu, PipelineConfig(preprocess="numpy"))
    builders = set()
    for fr in _frames():
        rgb, depth, K, masks, boxes, c = fr
        got = pipe.build_inputs(rgb, depth, K, masks, boxes, c)
        ref = ref_pipe.build_inputs(rgb, depth, K, masks, boxes, c)
        builders.add(id(pipe._builder))
        for name in ("rgb", "pts", "choose", "category"):
            assert torch.equal(getattr(got[0], name).cpu(), getattr(ref[0], name)), name
        for a, b in zip(got[1:], ref[1:]):
            np.testing.assert_array_equal(a, b)
    assert len(builders) == 1
