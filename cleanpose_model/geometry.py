"""Rotation and box geometry helpers (torch, batched over leading dimensions)."""

from __future__ import annotations

import math

import torch


def normalize_vector(v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """v / max(||v||, eps) over the last dim; the clamp lives on v's device and dtype."""
    mag = torch.sqrt((v * v).sum(dim=-1, keepdim=True))
    return v / mag.clamp_min(eps)


def cross_product(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    i = u[..., 1] * v[..., 2] - u[..., 2] * v[..., 1]
    j = u[..., 2] * v[..., 0] - u[..., 0] * v[..., 2]
    k = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
    return torch.stack([i, j, k], dim=-1)


def ortho6d_to_matrix(r6: torch.Tensor) -> torch.Tensor:
    """6D rotation (..., 6) -> (..., 3, 3), spec model.md §3.9.

    The *second* 3-vector is the y axis (the NOCS symmetry axis); the first only fixes the
    x/z plane. Columns are [x, y, z].
    """
    a, b = r6[..., 0:3], r6[..., 3:6]
    y = normalize_vector(b)
    z = normalize_vector(cross_product(a, y))
    x = cross_product(y, z)
    return torch.stack([x, y, z], dim=-1)


def matrix_to_ortho6d(rot: torch.Tensor) -> torch.Tensor:
    """Inverse of `ortho6d_to_matrix` for proper rotations: (x column, y column)."""
    return torch.cat([rot[..., :, 0], rot[..., :, 1]], dim=-1)


def rot_x(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([o, z, z, z, c, -s, z, s, c], dim=-1).reshape(*a.shape, 3, 3)


def rot_y(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*a.shape, 3, 3)


def rot_z(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*a.shape, 3, 3)


def euler_xyz_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """angles (..., 3) radians (alpha, beta, gamma) -> Rx(alpha) @ Ry(beta) @ Rz(gamma)."""
    return rot_x(angles[..., 0]) @ rot_y(angles[..., 1]) @ rot_z(angles[..., 2])


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, (..., 3) -> (..., 3, 3)."""
    theta = torch.linalg.vector_norm(axis_angle, dim=-1, keepdim=True)
    k = axis_angle / theta.clamp_min(1e-12)
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    kmat = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], dim=-1).reshape(*k.shape[:-1], 3, 3)
    s = torch.sin(theta)[..., None]
    c = torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(kmat)
    return eye + s * kmat + (1 - c) * (kmat @ kmat)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternion (..., 4) as (x, y, z, w) (ROS order) -> (..., 3, 3)."""
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - z * w),
            2 * (x * z + y * w),
            2 * (x * y + z * w),
            1 - 2 * (x * x + z * z),
            2 * (y * z - x * w),
            2 * (x * z - y * w),
            2 * (y * z + x * w),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(rot: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> unit quaternion (..., 4) as (x, y, z, w) with w >= 0.

    Picks the numerically best of the four standard branches per element.
    """
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    cand = torch.stack(
        [
            torch.stack(
                [
                    1 + m00 - m11 - m22,
                    m[..., 0, 1] + m[..., 1, 0],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 2, 1] - m[..., 1, 2],
                ],
                dim=-1,
            ),
            torch.stack(
                [
                    m[..., 0, 1] + m[..., 1, 0],
                    1 - m00 + m11 - m22,
                    m[..., 1, 2] + m[..., 2, 1],
                    m[..., 0, 2] - m[..., 2, 0],
                ],
                dim=-1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 1, 2] + m[..., 2, 1],
                    1 - m00 - m11 + m22,
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                dim=-1,
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                    1 + m00 + m11 + m22,
                ],
                dim=-1,
            ),
        ],
        dim=-2,
    )  # (..., 4 branches, 4)
    diag = torch.stack([cand[..., 0, 0], cand[..., 1, 1], cand[..., 2, 2], cand[..., 3, 3]], dim=-1)
    best = diag.argmax(dim=-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., 3:4] < 0, -q, q)


def rotation_angle_deg(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between rotations, degrees."""
    rel = r1.transpose(-1, -2) @ r2
    cos = ((rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2]) - 1.0) / 2.0
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def symmetric_rotation_angle_deg(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Angle between the y axes only (rotation about y is unobservable for symmetric objects)."""
    cos = (r1[..., :, 1] * r2[..., :, 1]).sum(-1)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def box_corners(size: torch.Tensor) -> torch.Tensor:
    """Full extents (..., 3) -> the 8 corners (..., 8, 3) of the box centred at the origin.

    Corner order: bit 2/1/0 of the corner index selects +x/+y/+z (0 = min).
    """
    signs = (
        torch.tensor(
            [[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=size.dtype, device=size.device
        )
        - 0.5
    )
    return signs * size.unsqueeze(-2)


def transform_points(points: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """points (..., N, 3) object frame -> camera frame: R p + t."""
    return points @ rot.transpose(-1, -2) + trans.unsqueeze(-2)


def project_points(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points (..., N, 3) -> pixel coordinates (..., N, 2) with intrinsics K (3,3)."""
    uvw = points @ K.transpose(-1, -2)
    return uvw[..., :2] / uvw[..., 2:3].clamp_min(1e-9)


def random_augmentation(
    batch: int,
    generator: torch.Generator | None = None,
    max_translation: float = 0.02,
    max_angle_deg: float = 20.0,
    scale_min: float = 0.8,
    scale_max: float = 1.2,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-time geometric augmentation (preprocessing.md §5), drawn from `generator`.

    Returns (dR (B,3,3), dt (B,1,3), ds (B,1)) on the generator's device. dR = Rx Ry Rz of
    angles uniform in [-max_angle, max_angle].
    """
    device = generator.device if generator is not None else torch.device("cpu")
    kw = {"generator": generator, "device": device, "dtype": dtype}
    dt = (torch.rand(batch, 1, 3, **kw) * 2.0 - 1.0) * max_translation
    angles = (torch.rand(batch, 3, **kw) * 2.0 - 1.0) * math.radians(max_angle_deg)
    ds = scale_min + torch.rand(batch, 1, **kw) * (scale_max - scale_min)
    return euler_xyz_to_matrix(angles), dt, ds
