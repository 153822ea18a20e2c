"""Per-object input construction against the published protocol (preprocessing.md §1.4-1.6)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cleanpose_model.preprocess import (
    build_object_inputs,
    build_object_inputs_batched,
    build_object_inputs_np,
    build_object_inputs_torch,
    get_bbox,
    mask_to_box,
    normalize_rgb,
    remap_choose,
    resize_uint8_like_cv2,
)

K_REAL = np.array([[591.0125, 0, 322.525], [0, 590.16775, 244.11084], [0, 0, 1]])


def _reference_object(rgb, depth_mm, K, mask, bbox, rs):
    """The original TestDataset loop body for one instance, written out literally (global-RNG style draws
    through a RandomState `rs`), depth in mm as the original reads it."""
    rmin, rmax, cmin, cmax = get_bbox(bbox)
    h, w = depth_mm.shape
    xmap = np.array([[i for i in range(w)] for _ in range(h)])
    ymap = np.array([[j for _ in range(w)] for j in range(h)])
    pts2 = depth_mm.copy() / 1000.0
    pts0 = (xmap - K[0, 2]) * pts2 / K[0, 0]
    pts1 = (ymap - K[1, 2]) * pts2 / K[1, 1]
    pts = np.transpose(np.stack([pts0, pts1, pts2]), (1, 2, 0)).astype(np.float32)
    m = np.logical_and(mask > 0, depth_mm > 0)
    choose = m[rmin:rmax, cmin:cmax].flatten().nonzero()[0]
    if len(choose) <= 16:
        return None
    if len(choose) <= 1024:
        choose_idx = rs.choice(len(choose), 1024)
    else:
        choose_idx = rs.choice(len(choose), 1024, replace=False)
    choose = choose[choose_idx]
    p = pts[rmin:rmax, cmin:cmax, :].reshape((-1, 3))[choose, :].copy()
    crop = rgb[rmin:rmax, cmin:cmax, :]
    crop = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_LINEAR)
    t = torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    t = ((t - mean) / std).numpy()
    crop_w = rmax - rmin
    ratio = 224 / crop_w
    col_idx = choose % crop_w
    row_idx = choose // crop_w
    choose = (np.floor(row_idx * ratio) * 224 + np.floor(col_idx * ratio)).astype(np.int64)
    return t, p, choose


def _scene(h=480, w=640, seed=0):
    g = np.random.default_rng(seed)
    rgb = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth_mm = g.integers(400, 1500, (h, w)).astype(np.uint16)
    depth_mm[g.random((h, w)) < 0.2] = 0  # holes
    masks = np.zeros((4, h, w), bool)
    masks[0, 100:180, 200:290] = True  # large: > 1024 valid -> without replacement
    masks[1, 300:320, 50:75] = True  # 500 px -> with replacement
    masks[2, 10:13, 600:603] = True  # 9 px -> dropped (<= 16)
    masks[3, 400:479, 560:639] = True  # near the corner -> shifted window
    boxes = np.array([mask_to_box(m) for m in masks])
    return rgb, depth_mm, masks, boxes


def test_get_bbox_window_rule_and_shift():
    # side 80 -> 120 (strictly above), 79 -> 80
    r0, r1, c0, c1 = get_bbox((100, 100, 180, 150))
    assert r1 - r0 == 120 and c1 - c0 == 120
    r0, r1, c0, c1 = get_bbox((100, 100, 179, 150))
    assert r1 - r0 == 80
    # capped at 440
    assert get_bbox((0, 0, 470, 630))[1] - get_bbox((0, 0, 470, 630))[0] == 440
    # shifted into the image, never shrunk
    assert get_bbox((0, 0, 10, 10)) == (0, 40, 0, 40)
    assert get_bbox((470, 630, 480, 640)) == (440, 480, 600, 640)
    # small images: the window also fits the image
    r0, r1, c0, c1 = get_bbox((0, 0, 119, 150), img_width=120, img_length=160)
    assert (r0, r1) == (0, 120) and c0 >= 0 and c1 <= 160 and c1 - c0 == 120


def test_remap_choose_floor():
    # crop 120: pixel (row 119, col 119) -> floor(119*224/120) = 222
    assert remap_choose(np.array([119 * 120 + 119]), 120)[0] == 222 * 224 + 222
    assert remap_choose(np.array([0]), 120)[0] == 0


def test_numpy_path_equals_protocol_reference():
    rgb, depth_mm, masks, boxes = _scene()
    cats = np.array([5, 0, 1, 3])
    objs = build_object_inputs_np(
        rgb, depth_mm.astype(np.float64) / 1000.0, K_REAL, masks, boxes, cats, rng=np.random.RandomState(7)
    )
    assert objs.kept.tolist() == [0, 1, 3]  # object 2 has 9 valid pixels at most
    rs = np.random.RandomState(7)
    for i, j in enumerate(objs.kept):
        ref = _reference_object(rgb, depth_mm, K_REAL, masks[j], boxes[j], rs)
        np.testing.assert_allclose(objs.rgb[i], ref[0], atol=1e-6)
        np.testing.assert_array_equal(objs.pts[i], ref[1])
        np.testing.assert_array_equal(objs.choose[i], ref[2])
    assert objs.category.tolist() == [5, 0, 3]
    assert objs.pts.dtype == np.float32 and objs.choose.dtype == np.int64
    assert objs.choose.min() >= 0 and objs.choose.max() < 224 * 224


def test_sampling_replacement_rules():
    h, w = 120, 160
    rgb = np.zeros((h, w, 3), np.uint8)
    depth = np.ones((h, w), np.float32)
    K = np.array([[100.0, 0, 80], [0, 100, 60], [0, 0, 1]])
    for n_valid, unique_max in ((17, 17), (1024, 1024), (1100, 1024)):
        mask = np.zeros((1, h, w), bool)
        block = np.zeros(40 * 40, bool)
        block[:n_valid] = True
        mask[0, 20:60, 20:60] = block.reshape(40, 40)
        objs = build_object_inputs_np(
            rgb, depth, K, mask, [mask_to_box(mask[0])], [0], rng=np.random.default_rng(0)
        )
        n_unique = len(np.unique(objs.pts[0], axis=0))
        assert objs.num_points[0] == n_valid
        if n_valid > 1024:
            assert n_unique == 1024  # without replacement
        else:
            assert n_unique < unique_max or n_valid == 17  # replacement also at exactly 1024
    mask = np.zeros((1, h, w), bool)
    mask[0, 5, :16] = True
    assert len(build_object_inputs_np(rgb, depth, K, mask, [mask_to_box(mask[0])], [0])) == 0


def test_invalid_depth_never_becomes_a_point():
    h, w = 120, 160
    rgb = np.zeros((h, w, 3), np.uint8)
    depth = np.full((h, w), 0.8, np.float32)
    depth[:, :40] = np.nan
    depth[:, 40:60] = np.inf
    depth[:, 60:70] = -1.0
    mask = np.ones((1, h, w), bool)
    objs = build_object_inputs_np(
        rgb, depth, np.array([[100.0, 0, 80], [0, 100, 60], [0, 0, 1]]), mask, [(0, 0, h, w)], [0]
    )
    assert np.isfinite(objs.pts).all() and (objs.pts[..., 2] == np.float32(0.8)).all()


def test_default_rng_is_deterministic_and_design_contract():
    rgb, depth_mm, masks, boxes = _scene(seed=3)
    d = depth_mm / 1000.0
    a = build_object_inputs_np(rgb, d, K_REAL, masks, boxes, [0, 1, 2, 3])
    b = build_object_inputs_np(rgb, d, K_REAL, masks, boxes, [0, 1, 2, 3])
    np.testing.assert_array_equal(a.pts, b.pts)
    batch, kept = build_object_inputs(rgb, d, K_REAL, masks, boxes, [0, 1, 2, 3])
    assert len(batch) == 3 and kept.tolist() == [0, 1, 3]
    assert batch.rgb.shape == (3, 3, 224, 224) and batch.pts.dtype == torch.float32


def test_shape_errors_are_clear():
    rgb, depth_mm, masks, boxes = _scene()
    with pytest.raises(ValueError, match="masks must be"):
        build_object_inputs_np(rgb, depth_mm / 1000.0, K_REAL, masks[:, :100], boxes, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="does not match rgb"):
        build_object_inputs_np(rgb, depth_mm[:100] / 1000.0, K_REAL, masks, boxes, [0, 1, 2, 3])


def test_torch_path_matches_numpy_path():
    rgb, depth_mm, masks, boxes = _scene(seed=5)
    d = (depth_mm / 1000.0).astype(np.float32)
    cats = np.array([0, 1, 2, 3])
    ref = build_object_inputs_np(rgb, d, K_REAL, masks, boxes, cats, rng=np.random.default_rng(1))
    batch, kept, nums, wins = build_object_inputs_torch(
        torch.from_numpy(rgb),
        torch.from_numpy(d),
        K_REAL,
        torch.from_numpy(masks),
        boxes,
        cats,
        rng=np.random.default_rng(1),
    )
    assert kept.tolist() == ref.kept.tolist() and nums.tolist() == ref.num_points.tolist()
    np.testing.assert_array_equal(wins, ref.windows)
    np.testing.assert_array_equal(batch.pts.numpy(), ref.pts)
    np.testing.assert_array_equal(batch.choose.numpy(), ref.choose)
    np.testing.assert_array_equal(batch.category.numpy(), ref.category)
    # torch's float bilinear vs OpenCV's fixed-point uint8 resize: within about one grey level
    assert np.abs(batch.rgb.numpy() - ref.rgb).max() < 2.0 / 255 / 0.224


# One grey level of the uint8 resize, after /255 and the smallest ImageNet std.
ONE_LEVEL = 1.0 / 255 / 0.224 + 1e-6


def _batched(rgb, depth, K, masks, boxes, cats, rng, **kw):
    return build_object_inputs_batched(
        torch.from_numpy(rgb), torch.from_numpy(depth), K, torch.from_numpy(masks), boxes, cats, rng=rng, **kw
    )


def _assert_batched_equals_numpy(rgb, depth, K, masks, boxes, cats, seed=0, **kw):
    """Same generator state for both paths -> the same pixels, bit for bit; RGB within one grey level."""
    ref = build_object_inputs_np(rgb, depth, K, masks, boxes, cats, rng=np.random.default_rng(seed), **kw)
    batch, kept, nums, wins = _batched(rgb, depth, K, masks, boxes, cats, np.random.default_rng(seed), **kw)
    assert kept.dtype == np.int64 and kept.tolist() == ref.kept.tolist()
    np.testing.assert_array_equal(nums, ref.num_points)
    np.testing.assert_array_equal(wins.reshape(-1, 4), ref.windows)
    assert batch.pts.dtype == torch.float32 and batch.choose.dtype == torch.int64
    assert batch.rgb.shape == ref.rgb.shape and batch.category.dtype == torch.int64
    np.testing.assert_array_equal(batch.pts.numpy(), ref.pts)
    np.testing.assert_array_equal(batch.choose.numpy(), ref.choose)
    np.testing.assert_array_equal(batch.category.numpy(), ref.category)
    if len(ref):
        assert np.abs(batch.rgb.numpy() - ref.rgb).max() <= ONE_LEVEL
    return ref, batch


def test_resize_model_equals_opencv_inter_linear():
    """The integer model of cv2.resize INTER_LINEAR uint8 the batched path uses: at most one level anywhere
    (the documented bound); on OpenCV builds with the vectorised kernel (x86 SSE/AVX, NEON) it is exact,
    while a float bilinear or the scalar rounding would differ in ~12% of the pixels."""
    g = np.random.default_rng(0)
    for side in [*range(40, 441, 40), 37, 224, 225, 480]:
        img = g.integers(0, 256, (side, side, 3), dtype=np.uint8)
        ref = cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR).astype(int)
        diff = np.abs(resize_uint8_like_cv2(img).astype(int) - ref)
        assert diff.max() <= 1, side
        assert (diff > 0).mean() < 0.01, side


def test_normalize_lookup_equals_protocol_float_ops():
    crop = np.random.default_rng(1).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    resized = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_LINEAR)
    t = torch.from_numpy(resized).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    np.testing.assert_array_equal(normalize_rgb(crop), ((t - mean) / std).numpy())


@pytest.mark.parametrize("seed", [0, 5])
def test_batched_equals_numpy_path(seed):
    rgb, depth_mm, masks, boxes = _scene(seed=seed)
    d = (depth_mm / 1000.0).astype(np.float32)
    ref, _ = _assert_batched_equals_numpy(rgb, d, K_REAL, masks, boxes, np.array([5, 0, 1, 3]), seed=seed)
    assert ref.kept.tolist() == [0, 1, 3]


def test_batched_default_and_legacy_generators():
    rgb, depth_mm, masks, boxes = _scene(seed=2)
    d = (depth_mm / 1000.0).astype(np.float32)
    cats = [0, 1, 2, 3]
    ref = build_object_inputs_np(rgb, d, K_REAL, masks, boxes, cats)  # rng=None: fixed default seed
    batch, *_ = _batched(rgb, d, K_REAL, masks, boxes, cats, None)
    np.testing.assert_array_equal(batch.pts.numpy(), ref.pts)
    ref = build_object_inputs_np(rgb, d, K_REAL, masks, boxes, cats, rng=np.random.RandomState(3))
    batch, *_ = _batched(rgb, d, K_REAL, masks, boxes, cats, np.random.RandomState(3))
    np.testing.assert_array_equal(batch.choose.numpy(), ref.choose)


def test_batched_empty_frame_and_all_rejected():
    rgb, depth_mm, masks, boxes = _scene()
    d = (depth_mm / 1000.0).astype(np.float32)
    batch, kept, nums, wins = _batched(rgb, d, K_REAL, masks[:0], boxes[:0], [], None)
    assert len(batch) == 0 and batch.rgb.shape == (0, 3, 224, 224) and batch.pts.shape == (0, 1024, 3)
    assert kept.shape == (0,) and nums.shape == (0,) and wins.shape == (0, 4)
    # every mask with <= 16 valid pixels: 16 exactly, 9, and a large mask over invalid depth only
    m = np.zeros((3, 480, 640), bool)
    m[0, 50, 100:116] = True
    m[1, 10:13, 600:603] = True
    m[2, 200:300, 200:300] = True
    d2 = d.copy()
    d2[200:300, 200:300] = 0.0
    rng = np.random.default_rng(0)
    batch, kept, nums, wins = _batched(rgb, d2, K_REAL, m, [mask_to_box(x) for x in m], [0, 1, 2], rng)
    assert len(batch) == 0 and kept.shape == (0,) and batch.choose.shape == (0, 1024)
    assert rng.integers(1 << 30) == np.random.default_rng(0).integers(1 << 30)  # nothing drawn
    assert len(build_object_inputs_np(rgb, d2, K_REAL, m, [mask_to_box(x) for x in m], [0, 1, 2])) == 0


def test_batched_windows_at_borders_and_mixed_sizes():
    """Windows shifted into every border and corner, sides from 40 to the 440 cap in one batch (padding to
    the largest), 17 pixels (just kept, with replacement) up to far more than 1024."""
    g = np.random.default_rng(4)
    h, w = 480, 640
    rgb = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = g.uniform(0.3, 2.0, (h, w)).astype(np.float32)
    depth[g.random((h, w)) < 0.1] = 0.0
    boxes = [
        (0, 0, 30, 25),  # top-left corner, side 40
        (470, 620, 480, 640),  # bottom-right corner
        (0, 300, 50, 380),  # top border, side 120
        (200, 0, 290, 60),  # left border
        (300, 600, 420, 640),  # right border, side 160
        (430, 100, 480, 260),  # bottom border, side 200
        (20, 20, 470, 620),  # capped at 440
        (240, 320, 241, 337),  # 17 pixels in one row
    ]
    masks = np.zeros((len(boxes), h, w), bool)
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        masks[k, y1:y2, x1:x2] = g.random((y2 - y1, x2 - x1)) < 0.8 if k < 7 else True
    depth[240, 320:337] = 0.7  # the 17 pixels all valid
    ref, _ = _assert_batched_equals_numpy(
        rgb, depth, K_REAL, masks, np.array(boxes), np.arange(8) % 6, seed=9
    )
    assert ref.kept.tolist() == list(range(8))
    sides = ref.windows[:, 1] - ref.windows[:, 0]
    assert sides.tolist() == [40, 40, 120, 120, 160, 200, 440, 40]
    assert ref.windows[:, [0, 2]].min() == 0 and ref.windows[:, 1].max() == h and ref.windows[:, 3].max() == w
    assert ref.num_points[7] == 17


def test_batched_invalid_depth_and_uint8_masks():
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
    masks[0] = 255  # one full-frame mask (window capped at min(H, W) = 120)
    masks[1, 10:50, 30:90] = 1
    _, batch = _assert_batched_equals_numpy(rgb, depth, K, masks, [(0, 0, h, w), (10, 30, 50, 90)], [1, 4])
    assert np.isfinite(batch.pts.numpy()).all() and (batch.pts.numpy()[..., 2] == np.float32(0.8)).all()


def test_batched_single_object_and_n_points():
    rgb, depth_mm, masks, boxes = _scene(seed=8)
    d = (depth_mm / 1000.0).astype(np.float32)
    _assert_batched_equals_numpy(rgb, d, K_REAL, masks[:1], boxes[:1], [2], seed=1)
    _, batch = _assert_batched_equals_numpy(
        rgb, d, K_REAL, masks[:2], boxes[:2], [2, 3], seed=1, n_points=256
    )
    assert batch.pts.shape == (2, 256, 3)


def test_batched_rejects_mismatched_inputs():
    rgb, depth_mm, masks, boxes = _scene()
    d = (depth_mm / 1000.0).astype(np.float32)
    with pytest.raises(ValueError, match="masks but"):
        _batched(rgb, d, K_REAL, masks, boxes[:2], [0, 1, 2, 3], None)
    with pytest.raises(ValueError, match="do not match depth"):
        _batched(rgb[:100], d, K_REAL, masks, boxes, [0, 1, 2, 3], None)


def test_preprocess_bench_short_mode(tmp_path):
    """bench/preprocess_bench.py on the CPU (CI short mode): table, JSON, and its own equality check."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(root / "bench" / "preprocess_bench.py"), "--device", "cpu", "--synthetic"]
    cmd += ["--runs", "1", "--warmup", "0", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr
    assert "| torch batched | cpu |" in out.stdout and "| numpy (CPU) | cpu |" in out.stdout
    res = json.loads((tmp_path / "preprocess_bench.json").read_text())
    assert res["check"]["pts_choose_kept_equal"] and res["check"]["rgb_max_diff_grey_levels"] <= 1.0
    assert res["objects"] == 6 and res["image"] == [480, 640]


def test_upload_many_round_trip_in_one_buffer():
    """The batched path's single upload: each array comes back with its dtype, shape and bytes (CPU here; the
    same views on CUDA, where tests/test_pipeline_preprocess.py checks the whole pipeline)."""
    import torch

    from cleanpose_model.preprocess import _upload_many

    a = np.arange(3 * 7, dtype=np.int32).reshape(3, 7)
    f = np.array([591.0125, 590.16775], np.float64)
    b = np.array([True, False, True])
    ta, tf, tb = _upload_many([a, f, b], torch.device("cpu"))
    assert ta.dtype == torch.int32 and tf.dtype == torch.float64 and tb.dtype == torch.bool
    np.testing.assert_array_equal(ta.numpy(), a)
    np.testing.assert_array_equal(tf.numpy(), f)  # bit-exact float64
    np.testing.assert_array_equal(tb.numpy(), b)
