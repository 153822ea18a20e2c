"""Scene layouts (objects standing on a table plane) and camera poses / trajectories.

World frame: z up, the table is the plane z = 0. Camera poses are `T_world_cam` 4x4 of the camera *optical*
frame (x right, y down, z forward). An object's pose in the world maps its canonical NOCS frame (y up) so that
canonical y becomes world z, followed by a random yaw about world z.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .shapes import CATEGORIES, DIAGONAL_RANGE_M, ObjectModel, make_distractor, make_object

# REAL275 colour intrinsics (preprocessing.md §1.3).
REAL275_K = np.array([[591.0125, 0.0, 322.525], [0.0, 590.16775, 244.11084], [0.0, 0.0, 1.0]])

# Canonical (y up) -> world (z up): x -> x, y -> z, z -> -y.
_CANON_TO_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclass
class Camera:
    K: np.ndarray  # (3, 3)
    width: int
    height: int

    @classmethod
    def real275(cls, width: int = 640, height: int = 480) -> Camera:
        """REAL275 intrinsics, rescaled when another resolution is asked for (same field of view)."""
        K = REAL275_K.copy()
        K[0] *= width / 640.0
        K[1] *= height / 480.0
        return cls(K=K, width=width, height=height)


@dataclass
class SceneObject:
    model: ObjectModel
    scale: float  # metric box diagonal (m) = NOCS scale
    R_world: np.ndarray  # (3, 3) canonical -> world
    t_world: np.ndarray  # (3,) box centre in the world (m)
    instance_id: int  # 1-based, stable within the scene

    @property
    def size(self) -> np.ndarray:
        """Metric full extents (m) along the object's x, y, z."""
        return self.scale * self.model.extents

    def world_vertices(self) -> np.ndarray:
        return (self.scale * self.model.vertices) @ self.R_world.T + self.t_world


@dataclass
class Scene:
    objects: list[SceneObject]
    center: np.ndarray  # (3,) the point cameras look at
    radius: float  # radius of the placement disc (m)
    table_color: np.ndarray  # (3,)
    table_texture: np.ndarray  # (T, T, 3) float32, tiled over the plane
    texture_period_m: float
    distractors: list[SceneObject] = field(default_factory=list)  # clutter without ground truth


def yaw(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _table_texture(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Procedural table-top texture: wood-like grain, tiles or smooth noise, tiled periodically."""
    base = np.array([rng.uniform(0.35, 0.85), rng.uniform(0.3, 0.75), rng.uniform(0.2, 0.65)])
    if rng.random() < 0.3:
        base = np.full(3, rng.uniform(0.3, 0.9))
    u, v = np.meshgrid(np.linspace(0, 1, size, endpoint=False), np.linspace(0, 1, size, endpoint=False))
    kind = rng.integers(0, 3)
    # Periodic functions only (integer frequencies) so that the tiling has no seams.
    noise = np.zeros_like(u)
    for _ in range(6):
        fu, fv = rng.integers(1, 9, 2)
        noise += np.sin(2 * np.pi * (fu * u + fv * v) + rng.uniform(0, 2 * np.pi)) / (fu + fv)
    if kind == 0:  # grain
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.integers(8, 24) * v + 1.5 * noise))
        shade = 0.8 + 0.2 * pattern
    elif kind == 1:  # tiles with grout lines
        n = int(rng.integers(2, 6))
        grout = ((u * n) % 1 < 0.04) | ((v * n) % 1 < 0.04)
        shade = np.where(grout, 0.55, 0.95 + 0.1 * noise)
    else:
        shade = 0.85 + 0.25 * noise
    tex = base[None, None] * shade[..., None]
    tex += rng.normal(0, 0.02, tex.shape)
    return np.clip(tex, 0, 1).astype(np.float32), base


def sample_scene(
    rng: np.random.Generator,
    n_objects: int,
    categories: tuple[str, ...] | list[str] = CATEGORIES,
    max_tries: int = 200,
    distractors: tuple[int, int] = (0, 2),
) -> Scene:
    """Random non-interpenetrating layout of n_objects upright objects on the table.

    Footprints are discs around the box centre whose radius is half the xz box diagonal, a conservative bound
    for every yaw; discs may not overlap (with a small gap). Objects that cannot be placed after max_tries
    are skipped, so a scene may hold fewer objects than asked for. Distractors (a uniform count in the
    `distractors` range) are placed the same way after the objects.
    """
    cats = list(categories)
    objects: list[SceneObject] = []
    placed: list[tuple[np.ndarray, float]] = []
    place_r = 0.06 + 0.035 * n_objects
    n_distractors = int(rng.integers(distractors[0], distractors[1] + 1)) if distractors[1] > 0 else 0
    clutter: list[SceneObject] = []
    for k in range(n_objects + n_distractors):
        if k < n_objects:
            cat = cats[int(rng.integers(len(cats)))]
            model = make_object(cat, rng)
            scale = float(rng.uniform(*DIAGONAL_RANGE_M[cat]))
        else:
            model = make_distractor(rng)
            scale = float(rng.uniform(0.06, 0.16))
        ext = scale * model.extents
        foot = 0.5 * float(np.hypot(ext[0], ext[2]))
        for _ in range(max_tries):
            ang, rad = rng.uniform(0, 2 * np.pi), place_r * np.sqrt(rng.random())
            xy = np.array([rad * np.cos(ang), rad * np.sin(ang)])
            if all(np.linalg.norm(xy - c) > foot + r + 0.005 for c, r in placed):
                break
        else:
            continue
        placed.append((xy, foot))
        R = yaw(rng.uniform(0, 2 * np.pi)) @ _CANON_TO_WORLD
        # Resting on the table: the lowest vertex touches z = 0 (the box bottom for upright objects).
        t = np.array([xy[0], xy[1], 0.0])
        t[2] = -float(((scale * model.vertices) @ R.T)[:, 2].min())
        so = SceneObject(
            model=model, scale=scale, R_world=R, t_world=t, instance_id=k + 1 if k < n_objects else 0
        )
        (objects if k < n_objects else clutter).append(so)
    tex, base = _table_texture(rng)
    centers = np.array([o.t_world for o in objects]) if objects else np.zeros((1, 3))
    center = np.array([centers[:, 0].mean(), centers[:, 1].mean(), 0.04])
    return Scene(
        objects=objects,
        center=center,
        radius=place_r,
        table_color=base,
        table_texture=tex,
        texture_period_m=float(rng.uniform(0.25, 0.8)),
        distractors=clutter,
    )


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """T_world_cam of an optical frame at eye looking at target (image up ~ world up)."""
    up = np.array([0.0, 0.0, 1.0]) if up is None else up
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T


def spherical_eye(center: np.ndarray, azimuth: float, elevation: float, distance: float) -> np.ndarray:
    return center + distance * np.array(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
    )


def random_views(
    rng: np.random.Generator,
    scene: Scene,
    n: int,
    elevation_deg: tuple[float, float] = (18.0, 65.0),
    distance_m: tuple[float, float] = (0.5, 1.0),
) -> list[np.ndarray]:
    """Independent camera poses looking down at the scene (a REAL275-like hand-held sequence, unordered)."""
    views = []
    for _ in range(n):
        d = rng.uniform(*distance_m) + 0.6 * scene.radius
        eye = spherical_eye(
            scene.center, rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(*elevation_deg)), d
        )
        target = scene.center + np.append(rng.normal(0, 0.03, 2), 0.0)
        views.append(look_at(eye, target))
    return views


def arc_trajectory(
    rng: np.random.Generator,
    scene: Scene,
    n: int,
    rate_hz: float = 30.0,
    angular_speed_rad_s: float = 0.25,
    elevation_deg: tuple[float, float] = (30.0, 60.0),
) -> list[np.ndarray]:
    """A smooth camera arc around the static scene: constant azimuth rate, slowly oscillating elevation.

    Positions and orientations are C-infinity in time, so a pose estimator's output should be as smooth.
    """
    a0 = rng.uniform(0, 2 * np.pi)
    e_mid = np.deg2rad(rng.uniform(*elevation_deg))
    e_amp = np.deg2rad(rng.uniform(3.0, 8.0))
    d = rng.uniform(0.6, 0.9) + 0.6 * scene.radius
    direction = rng.choice([-1.0, 1.0])
    period = rng.uniform(6.0, 12.0)
    views = []
    for i in range(n):
        t = i / rate_hz
        eye = spherical_eye(
            scene.center,
            a0 + direction * angular_speed_rad_s * t,
            e_mid + e_amp * np.sin(2 * np.pi * t / period),
            d,
        )
        views.append(look_at(eye, scene.center))
    return views
