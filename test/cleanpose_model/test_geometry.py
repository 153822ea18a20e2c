"""6D -> rotation (spec model.md §3.9) and rotation / box helpers."""

from __future__ import annotations

import math

import torch

from cleanpose_model import geometry as g


def _literal_ortho6d(r6: torch.Tensor) -> torch.Tensor:
    # Direct restatement of the published Ortho6d2Mat(x_raw=r6[:, :3], y_raw=r6[:, 3:]).
    def norm(v):
        mag = torch.sqrt(v.pow(2).sum(1)).clamp_min(1e-8)
        return v / mag[:, None]

    y = norm(r6[:, 3:])
    z = norm(torch.linalg.cross(r6[:, :3], y, dim=1))
    x = torch.linalg.cross(y, z, dim=1)
    return torch.stack([x, y, z], dim=2)


def test_ortho6d_matches_published_formula_and_is_rotation() -> None:
    r6 = torch.randn(64, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rot = g.ortho6d_to_matrix(r6)
    torch.testing.assert_close(rot, _literal_ortho6d(r6))
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, eye)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(64, dtype=torch.float64))
    # The second 3-vector *is* the y column.
    torch.testing.assert_close(rot[:, :, 1], r6[:, 3:] / r6[:, 3:].norm(dim=1, keepdim=True))


def test_ortho6d_roundtrip_and_degenerate_input() -> None:
    rot = g.euler_xyz_to_matrix(torch.tensor([[0.3, -0.2, 1.1]], dtype=torch.float64))
    torch.testing.assert_close(g.ortho6d_to_matrix(g.matrix_to_ortho6d(rot)), rot)
    zero = g.ortho6d_to_matrix(torch.zeros(2, 6))
    assert torch.isfinite(zero).all()


def test_euler_order_is_rx_ry_rz() -> None:
    a = torch.tensor([0.4, 0.0, 0.0])
    torch.testing.assert_close(g.euler_xyz_to_matrix(a), g.rot_x(a[0]))
    angles = torch.tensor([0.1, 0.2, 0.3])
    torch.testing.assert_close(
        g.euler_xyz_to_matrix(angles), g.rot_x(angles[0]) @ g.rot_y(angles[1]) @ g.rot_z(angles[2])
    )
    # Right-handed: Rz(90°) maps x to y.
    torch.testing.assert_close(
        g.rot_z(torch.tensor(math.pi / 2)) @ torch.tensor([1.0, 0, 0]),
        torch.tensor([0.0, 1.0, 0.0]),
        atol=1e-7,
        rtol=0,
    )


def test_quaternion_roundtrip_and_axis_angle() -> None:
    gen = torch.Generator().manual_seed(2)
    rot = g.ortho6d_to_matrix(torch.randn(50, 6, generator=gen, dtype=torch.float64))
    q = g.matrix_to_quaternion(rot)
    assert (q[:, 3] >= 0).all()
    torch.testing.assert_close(g.quaternion_to_matrix(q), rot)
    aa = torch.tensor([0.0, 0.0, math.pi / 3], dtype=torch.float64)
    torch.testing.assert_close(g.axis_angle_to_matrix(aa), g.rot_z(aa[2]))
    ang = g.rotation_angle_deg(torch.eye(3, dtype=torch.float64), g.rot_z(aa[2]))
    torch.testing.assert_close(ang, torch.tensor(60.0, dtype=torch.float64))
    # Rotation about y leaves the symmetric error at zero.
    eye = torch.eye(3, dtype=torch.float64)
    sym = g.symmetric_rotation_angle_deg(eye, g.rot_y(torch.tensor(1.0, dtype=torch.float64)))
    assert float(sym) < 1e-5


def test_box_corners_transform_and_projection() -> None:
    size = torch.tensor([0.2, 0.4, 0.6])
    c = g.box_corners(size)
    assert c.shape == (8, 3)
    torch.testing.assert_close(c.max(0).values - c.min(0).values, size)
    torch.testing.assert_close(c[0], -size / 2)
    pts = g.transform_points(c, torch.eye(3), torch.tensor([0.0, 0.0, 1.0]))
    K = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    uv = g.project_points(torch.tensor([[0.0, 0.0, 1.0], [0.1, -0.2, 2.0]]), K)
    torch.testing.assert_close(uv, torch.tensor([[320.0, 240.0], [345.0, 190.0]]))
    assert pts.shape == (8, 3)


def test_random_augmentation_ranges_and_determinism() -> None:
    a = g.random_augmentation(500, torch.Generator().manual_seed(7))
    b = g.random_augmentation(500, torch.Generator().manual_seed(7))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    rot, dt, ds = a
    assert rot.shape == (500, 3, 3) and dt.shape == (500, 1, 3) and ds.shape == (500, 1)
    assert dt.abs().max() <= 0.02 and ds.min() >= 0.8 and ds.max() <= 1.2
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(500), atol=1e-5, rtol=0)
    # Rx Ry Rz of angles within ±20° never rotates by more than about 34.6°.
    assert g.rotation_angle_deg(torch.eye(3), rot).max() < 35.0
