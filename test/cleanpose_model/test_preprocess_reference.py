"""The numpy reference (cleanpose_model/preprocess/reference.py) against the published protocol
(preprocessing.md §1.4-1.6), written out literally here."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cleanpose_model.preprocess.reference import (
    NORM_LUT,
    backproject,
    build_object_inputs,
    build_object_inputs_np,
    camera_params,
    get_bbox,
    mask_to_box,
    normalize_rgb,
    remap_choose,
    resize_crop,
    sample_indices,
    sample_object,
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


def test_normalize_lookup_equals_protocol_float_ops():
    crop = np.random.default_rng(1).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    resized = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_LINEAR)
    t = torch.from_numpy(resized).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    np.testing.assert_array_equal(normalize_rgb(resized), ((t - mean) / std).numpy())
    assert NORM_LUT.shape == (3, 256) and NORM_LUT.dtype == np.float32


def test_sample_object_is_the_frame_builders_step():
    """One object through `sample_object` gives the row `build_object_inputs_np` returns for it, and its
    parts are the protocol's steps on the sampled pixels."""
    rgb, depth_mm, masks, boxes = _scene(seed=4)
    d = depth_mm / 1000.0
    win = get_bbox(boxes[1])
    s = sample_object(rgb, d, K_REAL, masks[1], win, np.random.default_rng(2), min_points=16)
    frame = build_object_inputs_np(rgb, d, K_REAL, masks[1:2], boxes[1:2], [4], rng=np.random.default_rng(2))
    np.testing.assert_array_equal(frame.pts[0], s.pts)
    np.testing.assert_array_equal(frame.choose[0], s.choose)
    np.testing.assert_array_equal(frame.rgb[0], normalize_rgb(s.rgb))
    assert frame.windows[0].tolist() == list(s.window) and frame.num_points[0] == s.num_points
    rmin, rmax, cmin, cmax = win
    valid = masks[1, rmin:rmax, cmin:cmax] & (depth_mm[rmin:rmax, cmin:cmax] > 0)
    assert s.num_points == valid.sum() and valid.reshape(-1)[s.pixels].all()
    np.testing.assert_array_equal(s.rgb, resize_crop(rgb, win))
    np.testing.assert_array_equal(s.choose, remap_choose(s.pixels, rmax - rmin))
    row, col = np.divmod(s.pixels, cmax - cmin)
    np.testing.assert_array_equal(s.pts[:, 2], (depth_mm[rmin + row, cmin + col] / 1000.0).astype(np.float32))


def test_keep_rule_is_an_option_and_a_drop_draws_nothing():
    h, w = 120, 160
    rgb = np.zeros((h, w, 3), np.uint8)
    depth = np.full((h, w), 0.5)
    mask = np.zeros((h, w), bool)
    mask[30, 40:56] = True  # 16 valid pixels
    win = get_bbox(mask_to_box(mask), h, w)
    rng = np.random.default_rng(0)
    assert sample_object(rgb, depth, K_REAL, mask, win, rng, min_points=16) is None
    assert rng.integers(1 << 30) == np.random.default_rng(0).integers(1 << 30)
    # the training sample's rule (min_points=0): kept, 1024 draws with replacement from 16 pixels
    s = sample_object(rgb, depth, K_REAL, mask, win, np.random.default_rng(0))
    assert s.num_points == 16 and len(np.unique(s.pixels)) <= 16 and s.pts.shape == (1024, 3)
    depth[30, 40:56] = 0.0  # no valid pixel: dropped whatever the rule
    assert sample_object(rgb, depth, K_REAL, mask, win, np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="no candidate"):
        sample_indices(0, 1024, np.random.default_rng(0))


def test_intrinsics_as_matrix_or_tuple_and_float64_back_projection():
    rgb, depth_mm, masks, boxes = _scene(seed=6)
    d32 = (depth_mm / 1000.0).astype(np.float32)
    fx, fy, cx, cy = camera_params(K_REAL)
    a = build_object_inputs_np(rgb, d32, K_REAL, masks, boxes, [0, 1, 2, 3], rng=np.random.default_rng(5))
    b = build_object_inputs_np(
        rgb, d32, (fx, fy, cx, cy), masks, boxes, [0, 1, 2, 3], rng=np.random.default_rng(5)
    )
    np.testing.assert_array_equal(a.pts, b.pts)
    with pytest.raises(ValueError, match="K must be"):
        camera_params(np.eye(2))
    # float32 depth and integer pixels are promoted before any product (the published float64 maps)
    u, v, z = np.array([0, 639]), np.array([0, 479]), np.array([0.7, 1.3], np.float32)
    want = np.stack([(u - cx) * z.astype(np.float64) / fx, (v - cy) * z.astype(np.float64) / fy, z], 1)
    np.testing.assert_array_equal(backproject(u, v, z, K_REAL), want.astype(np.float32))
