"""Ray-cast frames: ground truth consistent with the pixels, sensor-like depth, determinism."""

from __future__ import annotations

import cv2
import numpy as np
import open3d as o3d
import pytest

from cleanpose_training.synthetic.render import DepthNoise, Renderer, project_box_corners
from cleanpose_training.synthetic.scene import Camera, look_at, random_views, sample_scene

W, H = 160, 120


def _setup(seed: int = 0, n_objects: int = 4, categories=None, width: int = W, height: int = H):
    rng = np.random.default_rng(seed)
    kwargs = {} if categories is None else {"categories": categories}
    scene = sample_scene(rng, n_objects, **kwargs)
    return rng, scene, Renderer(scene, Camera.real275(width, height))


@pytest.fixture(scope="module")
def frames():
    rng, scene, renderer = _setup(seed=1, n_objects=5)
    out = [renderer.render(T, rng) for T in random_views(rng, scene, 3)]
    return scene, out


def test_intrinsics_default_to_real275():
    cam = Camera.real275()
    assert (cam.width, cam.height) == (640, 480)
    np.testing.assert_allclose(cam.K[[0, 1, 0, 1], [0, 1, 2, 2]], [591.0125, 590.16775, 322.525, 244.11084])


def test_layout_has_no_overlapping_footprints():
    for seed in range(5):
        _, scene, _ = _setup(seed=seed, n_objects=6)
        assert len(scene.objects) >= 3
        for i, a in enumerate(scene.objects):
            ra = 0.5 * np.hypot(a.size[0], a.size[2])
            # Upright on the table: canonical y is world z, the lowest point touches z = 0.
            np.testing.assert_allclose(a.R_world[:, 1], [0, 0, 1], atol=1e-12)
            assert a.world_vertices()[:, 2].min() == pytest.approx(0.0, abs=1e-9)
            for b in scene.objects[i + 1 :]:
                rb = 0.5 * np.hypot(b.size[0], b.size[2])
                assert np.linalg.norm(a.t_world[:2] - b.t_world[:2]) > ra + rb


def test_frame_arrays_and_pose_conventions(frames):
    scene, fs = frames
    for f in fs:
        assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
        assert f.depth_mm.shape == (H, W) and f.depth_mm.dtype == np.uint16
        n = len(f.instance_ids)
        assert n >= 2 and f.masks.shape == (n, H, W)
        assert not np.any(f.masks.sum(0) > 1), "visible masks overlap"
        R_cw = f.T_world_cam[:3, :3].T
        for i in range(n):
            R = f.rotations[i]
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
            assert np.linalg.det(R) == pytest.approx(1.0)
            obj = scene.objects[f.object_indices[i]]
            # Object y axis is world up, seen from the camera.
            np.testing.assert_allclose(R[:, 1], R_cw @ np.array([0, 0, 1.0]), atol=1e-9)
            np.testing.assert_allclose(f.sizes[i], f.scales[i] * f.nocs_extents[i])
            assert np.linalg.norm(f.nocs_extents[i]) == pytest.approx(1.0)
            assert f.scales[i] == obj.scale
            y1, x1, y2, x2 = f.boxes[i]
            rr, cc = np.nonzero(f.masks[i])
            assert (y1, x1, y2, x2) == (rr.min(), cc.min(), rr.max() + 1, cc.max() + 1)


def test_projected_gt_boxes_enclose_the_masks(frames):
    _, fs = frames
    for f in fs:
        for i in range(len(f.instance_ids)):
            uv = project_box_corners(f.sizes[i], f.rotations[i], f.translations[i], f.K)
            hull = cv2.convexHull(np.round(uv).astype(np.int32))
            inside = np.zeros((H, W), np.uint8)
            cv2.fillConvexPoly(inside, hull, 1)
            # One pixel of slack for the rounding of the corner projections.
            inside = cv2.dilate(inside, np.ones((3, 3), np.uint8)).astype(bool)
            assert not np.any(f.masks[i] & ~inside)


def _posed_scene_distance(scene, T_world_cam, pts_cam):
    rc = o3d.t.geometry.RaycastingScene()
    for obj in scene.objects:
        rc.add_triangles(
            o3d.core.Tensor(obj.world_vertices().astype(np.float32)),
            o3d.core.Tensor(obj.model.triangles.astype(np.uint32)),
        )
    pts_w = pts_cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    return rc.compute_distance(o3d.core.Tensor(pts_w.astype(np.float32))).numpy()


def _backproject(f, mask, depth_m):
    v, u = np.nonzero(mask)
    z = depth_m[v, u]
    K = f.K
    return np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], 1)


@pytest.mark.parametrize("noisy", [False, True])
def test_backprojected_masked_depth_lies_on_the_posed_mesh(noisy):
    rng, scene, renderer = _setup(seed=4, n_objects=4, width=320, height=240)
    T = random_views(rng, scene, 1)[0]
    f = renderer.render(T, rng, noise=DepthNoise(enabled=noisy))
    for i in range(len(f.instance_ids)):
        m = f.masks[i] & (f.depth_mm > 0)
        pts = _backproject(f, m, f.depth_mm.astype(np.float64) / 1000.0)
        # Object frame check too: R^T (p - t) stays inside the metric box (plus the noise).
        q = (pts - f.translations[i]) @ f.rotations[i]
        d = _posed_scene_distance(scene, f.T_world_cam, pts)
        if not noisy:
            assert d.max() < 1.0e-3  # millimetre rounding only
            assert np.all(np.abs(q) <= f.sizes[i] / 2 + 1.0e-3)
        else:
            z = pts[:, 2]
            sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2
            quant = z**2 / (f.K[0, 0] * 0.05 * 8)  # disparity step of 1/8 px
            # Median within one sigma, 99% within 4 sigma plus quantisation and mm rounding.
            assert np.median(d) < np.median(sigma) + 1e-3
            assert np.mean(d < 4 * sigma + quant + 1e-3) > 0.99


def test_sensor_depth_has_noise_and_missing_edge_pixels(frames):
    _, fs = frames
    f = fs[0]
    z = f.depth_clean_m
    hit = z > 0
    missing = hit & (f.depth_mm == 0)
    frac = missing.sum() / hit.sum()
    assert 0.003 < frac < 0.2
    # Missing pixels concentrate on depth discontinuities.
    jump = np.zeros_like(hit)
    jump[1:] |= np.abs(np.diff(z, axis=0)) > 0.02
    jump[:, 1:] |= np.abs(np.diff(z, axis=1)) > 0.02
    near_edge = cv2.dilate(jump.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert missing[near_edge].mean() > 5 * missing[~near_edge].mean()
    err = f.depth_mm[hit & ~missing] / 1000.0 - z[hit & ~missing]
    assert 0.0005 < err.std() < 0.01 and abs(np.median(err)) < 0.002


def test_lighting_varies_between_frames_and_shadows_darken(frames):
    _, fs = frames
    table_means = [f.rgb[f.instance_map < 0].mean() for f in fs]
    assert np.ptp(table_means) > 1.0
    rng, scene, renderer = _setup(seed=2)
    T = random_views(rng, scene, 1)[0]
    lit = Renderer(scene, renderer.camera, shadows=False).render(T, np.random.default_rng(0))
    shadowed = renderer.render(T, np.random.default_rng(0))
    assert shadowed.rgb.astype(int).sum() < lit.rgb.astype(int).sum()


def test_same_seed_same_frame_and_different_seed_differs():
    def run(seed):
        rng, scene, renderer = _setup(seed=seed)
        return renderer.render(random_views(rng, scene, 1)[0], rng)

    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth_mm, b.depth_mm)
    np.testing.assert_array_equal(a.rotations, b.rotations)
    assert not np.array_equal(a.rgb, c.rgb)


def test_mug_handle_visibility_follows_the_view():
    rng, scene, renderer = _setup(seed=3, n_objects=1, categories=["mug"], width=320, height=240)
    mug = scene.objects[0]
    handle_dir = mug.R_world[:, 0]  # canonical +x: the handle side
    target = mug.t_world.copy()
    results = {}
    for side in (+1, -1):
        eye = target + 0.45 * side * handle_dir + np.array([0, 0, 0.05])
        f = renderer.render(look_at(eye, target), rng)
        assert len(f.instance_ids) == 1
        results[side] = int(f.handle_visibility[0])
    assert results == {+1: 1, -1: 0}


def test_solid_texture_changes_only_object_pixels():
    from cleanpose_training.synthetic.shapes import SolidTexture

    rng, scene, renderer = _setup(seed=6, n_objects=3)
    T = random_views(rng, scene, 1)[0]
    for obj in scene.objects:
        obj.model.texture = SolidTexture(
            kind="checker",
            waves=np.diag([60.0, 60.0, 60.0]),
            phases=np.zeros(3),
            color=np.array([1.0, 0.0, 0.0]),
            strength=0.8,
        )
    textured = Renderer(scene, renderer.camera).render(T, np.random.default_rng(0), rgb_noise_sigma=0.0)
    for obj in scene.objects:
        obj.model.texture = None
    plain = Renderer(scene, renderer.camera).render(T, np.random.default_rng(0), rgb_noise_sigma=0.0)
    changed = np.any(textured.rgb != plain.rgb, axis=2)
    on_objects = textured.instance_map >= 0
    assert not np.any(changed & ~on_objects)
    assert changed[on_objects].mean() > 0.2
    np.testing.assert_array_equal(textured.depth_mm, plain.depth_mm)


def test_distractors_are_rendered_but_have_no_ground_truth():
    rng = np.random.default_rng(12)
    scene = sample_scene(rng, 2, distractors=(3, 3))
    assert len(scene.distractors) >= 2 and all(d.instance_id == 0 for d in scene.distractors)
    renderer = Renderer(scene, Camera.real275(W, H))
    f = renderer.render(look_at(scene.center + np.array([0.0, -0.5, 0.6]), scene.center), rng)
    assert len(f.instance_ids) <= len(scene.objects)
    # Pixels above the table that belong to no labelled object: the distractors.
    K = f.K
    v, u = np.nonzero(f.depth_clean_m > 0)
    z = f.depth_clean_m[v, u]
    p_cam = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], 1)
    height = (p_cam @ f.T_world_cam[:3, :3].T + f.T_world_cam[:3, 3])[:, 2]
    unlabelled_above = (height > 0.01) & (f.instance_map[v, u] < 0)
    assert unlabelled_above.sum() > 20
