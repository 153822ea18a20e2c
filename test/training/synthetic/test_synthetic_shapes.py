"""Procedural NOCS-category meshes: closed surfaces, canonical frame, symmetries, variation."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest

from cleanpose_training.synthetic.shapes import CATEGORIES, SYMMETRIC, make_object


def _signed_volume(v: np.ndarray, t: np.ndarray) -> float:
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _distance_to_mesh(v: np.ndarray, t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(t.astype(np.uint32)))
    return rc.compute_distance(o3d.core.Tensor(pts.astype(np.float32))).numpy()


@pytest.mark.parametrize("category", CATEGORIES)
def test_parts_are_closed_outward_oriented_surfaces(category):
    rng = np.random.default_rng(11)
    for _ in range(3):
        model = make_object(category, rng)
        for name in model.part_names:
            v, t = model.part(name)
            mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(t))
            assert mesh.is_edge_manifold(allow_boundary_edges=False), (category, name)
            assert mesh.is_vertex_manifold(), (category, name)
            assert mesh.is_watertight(), (category, name)
            assert mesh.is_orientable(), (category, name)
            # Positive enclosed volume: the triangles wind counter-clockwise seen from outside, so the
            # ray-cast normals point out of the object.
            assert _signed_volume(v, t) > 0, (category, name)


@pytest.mark.parametrize("category", CATEGORIES)
def test_canonical_box_centred_with_unit_diagonal(category):
    rng = np.random.default_rng(3)
    model = make_object(category, rng)
    lo, hi = model.vertices.min(0), model.vertices.max(0)
    np.testing.assert_allclose(0.5 * (lo + hi), 0.0, atol=1e-12)
    assert np.linalg.norm(hi - lo) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(model.extents, hi - lo)
    assert model.colors.shape == model.vertices.shape
    assert model.colors.min() >= 0 and model.colors.max() <= 1
    # Per-vertex colour variation: no model is a single flat colour.
    assert model.colors.std(0).max() > 0.01


@pytest.mark.parametrize("category", sorted(SYMMETRIC))
def test_symmetric_categories_are_invariant_under_rotation_about_y(category):
    rng = np.random.default_rng(5)
    model = make_object(category, rng)
    for theta in (0.37, 1.9, 4.1):
        c, s = np.cos(theta), np.sin(theta)
        Ry = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        d = _distance_to_mesh(model.vertices, model.triangles, model.vertices @ Ry.T)
        # Only the polygonal approximation of the circles (>= 40 segments) separates the rotated copy.
        assert d.max() < 4e-3, (category, theta, d.max())
    # The extents are equal in x and z as well.
    assert model.extents[0] == pytest.approx(model.extents[2], rel=0.01)


@pytest.mark.parametrize("category", ["mug", "camera", "laptop"])
def test_asymmetric_categories_change_under_rotation_about_y(category):
    model = make_object(category, np.random.default_rng(5))
    Ry = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    d = _distance_to_mesh(model.vertices, model.triangles, model.vertices @ Ry.T)
    assert d.max() > 0.05


def test_mug_handle_points_along_plus_x_and_is_tagged():
    rng = np.random.default_rng(8)
    for _ in range(4):
        mug = make_object("mug", rng)
        assert mug.has_handle
        hv, _ = mug.part("handle")
        assert hv[:, 0].max() == pytest.approx(mug.vertices[:, 0].max())
        bv, _ = mug.part("body")
        assert hv[:, 0].mean() > bv[:, 0].mean() + 0.05
        assert abs(hv[:, 2].mean() - bv[:, 2].mean()) < 1e-3
        assert mug.part_mask("handle").sum() == len(mug.part("handle")[1])


@pytest.mark.parametrize("category", CATEGORIES)
def test_intra_category_variation(category):
    rng = np.random.default_rng(21)
    models = [make_object(category, rng) for _ in range(6)]
    ext = np.array([m.extents for m in models])
    # Proportions differ between instances (several percent of the unit diagonal).
    assert ext.std(0).max() > 0.01, ext
    assert len({m.model_id for m in models}) == len(models)


def test_surface_samples_lie_on_the_mesh_and_are_deterministic():
    model = make_object("bottle", np.random.default_rng(1))
    pts = model.sample_surface(1024, np.random.default_rng(2))
    assert pts.shape == (1024, 3) and pts.dtype == np.float32
    assert _distance_to_mesh(model.vertices, model.triangles, pts).max() < 1e-5
    np.testing.assert_array_equal(pts, model.sample_surface(1024, np.random.default_rng(2)))


def test_same_seed_same_mesh():
    a = make_object("camera", np.random.default_rng(4))
    b = make_object("camera", np.random.default_rng(4))
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.colors, b.colors)
    assert a.model_id == b.model_id


def test_unknown_category_is_rejected():
    with pytest.raises(ValueError, match="unknown category"):
        make_object("teapot", np.random.default_rng(0))
