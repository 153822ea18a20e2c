"""Procedural triangle meshes of the six NOCS categories in their canonical (NOCS) frame.

Canonical frame (NOCS): y up, the axis-aligned box of the model centred at the origin and the model scaled so
that the box diagonal is 1. The metric object is `scale * vertices` where `scale` is the metric box diagonal;
the label pickles store `scales` = that diagonal and `sizes` = the normalised extents, so `scales * sizes` is
the metric size. Fronts look along +z (camera lens, laptop screen), the mug handle points along +x.

Every part is a closed, consistently oriented surface (solids of revolution with pole caps, swept tubes with
end caps, subdivided boxes). Parts of one object may overlap each other (a handle sunk into a mug wall), so
the watertightness checks are done per part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cleanpose_model.categories import NOCS

CATEGORIES: tuple[str, ...] = NOCS.names
SYMMETRIC: frozenset[str] = NOCS.symmetric

# Metric box diagonal (m) per category, a uniform range; roughly the REAL275 instances.
DIAGONAL_RANGE_M: dict[str, tuple[float, float]] = {
    "bottle": (0.20, 0.30),
    "bowl": (0.15, 0.22),
    "camera": (0.13, 0.19),
    "can": (0.12, 0.18),
    "laptop": (0.38, 0.50),
    "mug": (0.12, 0.17),
}


@dataclass
class Part:
    vertices: np.ndarray  # (N, 3) float64
    triangles: np.ndarray  # (M, 3) int32, counter-clockwise seen from outside
    colors: np.ndarray  # (N, 3) float32 in [0, 1]
    name: str


@dataclass
class SolidTexture:
    """A pattern evaluated at surface points in the canonical frame, on top of the vertex colours.

    Vertex colours are only as detailed as the mesh; a solid texture adds print-like detail (stripes, checks,
    blotches) at any resolution, which is what an RGB backbone sees on real objects.
    """

    kind: str  # "none", "stripes", "checker" or "blotches"
    waves: np.ndarray  # (3, 3) wave vectors (rad per unit of the normalised frame)
    phases: np.ndarray  # (3,)
    color: np.ndarray  # (3,) second colour
    strength: float  # blend weight of the second colour in [0, 1]

    @classmethod
    def random(cls, rng: np.random.Generator) -> SolidTexture:
        kind = str(rng.choice(["none", "stripes", "checker", "blotches"], p=[0.25, 0.3, 0.15, 0.3]))
        waves = rng.normal(0, 1, (3, 3))
        waves *= (rng.uniform(15, 70, 3) / np.linalg.norm(waves, axis=1))[:, None]
        return cls(
            kind=kind,
            waves=waves,
            phases=rng.uniform(0, 2 * np.pi, 3),
            color=_random_color(rng),
            strength=float(rng.uniform(0.3, 0.8)),
        )

    def weight(self, p: np.ndarray) -> np.ndarray:
        """(n,) blend weight of the second colour at canonical points p (n, 3)."""
        if self.kind == "none":
            return np.zeros(len(p), np.float32)
        arg = p.astype(np.float32) @ self.waves.T.astype(np.float32) + self.phases.astype(np.float32)
        if self.kind == "stripes":
            w = (np.sin(arg[:, 0]) > 0).astype(np.float32)
        elif self.kind == "checker":
            w = ((np.sin(arg[:, 0]) > 0) ^ (np.sin(arg[:, 1]) > 0)).astype(np.float32)
        else:
            w = np.clip(0.5 + np.sin(arg).sum(1) / 3.0, 0, 1)
        return w * np.float32(self.strength)


@dataclass
class ObjectModel:
    """One object instance in its canonical NOCS frame (box centred, diagonal 1)."""

    category: str
    model_id: str
    vertices: np.ndarray  # (N, 3) float64, normalised
    triangles: np.ndarray  # (M, 3) int32
    colors: np.ndarray  # (N, 3) float32
    triangle_part: np.ndarray  # (M,) int16 index into part_names
    part_names: list[str] = field(default_factory=list)
    part_triangle_ranges: list[tuple[int, int]] = field(default_factory=list)
    texture: SolidTexture | None = None

    @property
    def category_id(self) -> int:
        return CATEGORIES.index(self.category)

    @property
    def extents(self) -> np.ndarray:
        """Normalised full extents along x, y, z (norm 1)."""
        return self.vertices.max(0) - self.vertices.min(0)

    @property
    def has_handle(self) -> bool:
        return "handle" in self.part_names

    def part_mask(self, name: str) -> np.ndarray:
        """Boolean mask over triangles of the named part."""
        if name not in self.part_names:
            return np.zeros(len(self.triangles), bool)
        return self.triangle_part == self.part_names.index(name)

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Vertices and triangles (re-indexed) of one part, for per-part checks."""
        lo, hi = self.part_triangle_ranges[self.part_names.index(name)]
        tris = self.triangles[lo:hi]
        used, inverse = np.unique(tris, return_inverse=True)
        return self.vertices[used], inverse.reshape(-1, 3).astype(np.int32)

    def sample_surface(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Area-weighted uniform samples on the surface (the NOCS model point cloud)."""
        v = self.vertices[self.triangles]
        areas = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
        idx = rng.choice(len(areas), size=n, p=areas / areas.sum())
        r1 = np.sqrt(rng.random(n))
        r2 = rng.random(n)
        a, b, c = v[idx, 0], v[idx, 1], v[idx, 2]
        pts = (1 - r1)[:, None] * a + (r1 * (1 - r2))[:, None] * b + (r1 * r2)[:, None] * c
        return pts.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# primitive builders (each returns a closed, outward-oriented surface)


def _tube_faces(n_rings: int, segments: int, start: int, end: int) -> np.ndarray:
    """Triangles of ``n_rings`` rings of ``segments`` vertices each (stored ring after ring): consecutive
    rings joined by quads, the ends closed by fans to the vertices ``start`` (at the first ring) and ``end``
    (at the last one); counter-clockwise seen from outside when the rings turn as ``revolve``'s do."""
    i = np.arange(n_rings - 1)[:, None]
    j = np.arange(segments)[None, :]
    a, b = i * segments + j, i * segments + (j + 1) % segments
    c, d = a + segments, b + segments
    quads = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    jj = np.arange(segments)
    cap0 = np.stack([np.full(segments, start), (jj + 1) % segments, jj], -1)
    last = (n_rings - 1) * segments
    cap1 = np.stack([np.full(segments, end), last + jj, last + (jj + 1) % segments], -1)
    return np.concatenate([quads, cap0, cap1]).astype(np.int32)


def revolve(profile: np.ndarray, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Solid of revolution about y of a profile (K, 2) of (radius > 0, y), closed by two pole vertices.

    The profile runs from the bottom pole to the top pole; a pole is added on the axis at the height of the
    first and of the last profile point, so the surface is closed (genus 0) if the profile does not cross
    itself.
    """
    k = len(profile)
    theta = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    r, y = profile[:, 0], profile[:, 1]
    # Angle runs from +z toward +x so that the quads come out counter-clockwise seen from outside.
    ring = np.stack(
        [
            r[:, None] * np.sin(theta)[None],
            np.broadcast_to(y[:, None], (k, segments)),
            r[:, None] * np.cos(theta)[None],
        ],
        axis=-1,
    ).reshape(-1, 3)
    bottom = k * segments
    top = bottom + 1
    verts = np.concatenate([ring, [[0.0, y[0], 0.0], [0.0, y[-1], 0.0]]])
    tris = _tube_faces(k, segments, bottom, top)
    return verts, tris


def box(extents: np.ndarray, center: np.ndarray, subdiv: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Closed axis-aligned box with each face split into subdiv x subdiv quads (shared edge vertices)."""
    n = subdiv
    # Vertices on a cube lattice surface; an index grid maps lattice points to unique vertex ids.
    grid = np.full((n + 1, n + 1, n + 1), -1, np.int64)
    g = np.arange(n + 1)
    ii, jj, kk = np.meshgrid(g, g, g, indexing="ij")
    surface = (ii == 0) | (ii == n) | (jj == 0) | (jj == n) | (kk == 0) | (kk == n)
    coords = np.stack([ii[surface], jj[surface], kk[surface]], -1)
    grid[surface] = np.arange(len(coords))
    verts = (coords / n - 0.5) * np.asarray(extents)[None] + np.asarray(center)[None]
    tris = []
    for axis in range(3):
        for side in (0, n):
            u_ax, v_ax = [a for a in range(3) if a != axis]
            for u in range(n):
                for v in range(n):
                    idx = []
                    for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1)):
                        p = [0, 0, 0]
                        p[axis], p[u_ax], p[v_ax] = side, u + du, v + dv
                        idx.append(grid[tuple(p)])
                    q0, q1, q2, q3 = idx
                    # Outward orientation depends on which face of the axis this is and on axis parity.
                    flip = (side == 0) == (axis == 1)
                    if flip:
                        tris += [[q0, q1, q2], [q0, q2, q3]]
                    else:
                        tris += [[q0, q2, q1], [q0, q3, q2]]
    return verts.astype(np.float64), np.asarray(tris, np.int32)


def sweep_tube(
    path: np.ndarray, radius_xy: tuple[float, float], segments: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Elliptical tube along a planar path in the x-y plane (P, 3), closed with end-cap fans."""
    p = len(path)
    tang = np.gradient(path, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    binorm = np.array([0.0, 0.0, 1.0])
    normal = np.cross(binorm[None], tang)
    theta = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ra, rb = radius_xy
    rings = (
        path[:, None, :]
        + ra * np.cos(theta)[None, :, None] * normal[:, None, :]
        + rb * np.sin(theta)[None, :, None] * binorm[None, None, :]
    ).reshape(-1, 3)
    start, end = p * segments, p * segments + 1
    verts = np.concatenate([rings, path[:1], path[-1:]])
    tris = _tube_faces(p, segments, start, end)
    return verts, tris


# --------------------------------------------------------------------------------------------------
# colours


def _random_color(rng: np.random.Generator, palette: str = "any") -> np.ndarray:
    if palette == "dark":
        return rng.uniform(0.03, 0.2, 3) * np.array([1.0, 1.0, 1.0]) + rng.uniform(0, 0.04, 3)
    if palette == "metal":
        g = rng.uniform(0.45, 0.8)
        return np.clip(g + rng.normal(0, 0.03, 3), 0, 1)
    hsv_h = rng.random()
    s = rng.uniform(0.2, 0.9)
    v = rng.uniform(0.35, 0.95)
    return _hsv_to_rgb(hsv_h, s, v)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _texture(
    verts: np.ndarray, base: np.ndarray, rng: np.random.Generator, kind: str = "noise"
) -> np.ndarray:
    """Per-vertex colour: base colour times a procedural pattern (bands, stripes or smooth noise)."""
    n = len(verts)
    col = np.broadcast_to(base, (n, 3)).copy()
    if kind == "label":
        # A printed label band around the body with a second colour and vertical stripes.
        lo, hi = np.sort(rng.uniform(verts[:, 1].min(), verts[:, 1].max(), 2))
        band = (verts[:, 1] > lo) & (verts[:, 1] < hi)
        other = _random_color(rng)
        ang = np.arctan2(verts[:, 0], verts[:, 2])
        stripes = 0.5 + 0.5 * np.sign(np.sin(ang * rng.integers(2, 7)))
        col[band] = other * (0.75 + 0.25 * stripes[band, None])
    elif kind == "stripes":
        freq = rng.uniform(20, 60)
        col *= (0.85 + 0.15 * np.sin(verts[:, 1] * freq))[:, None]
    # Smooth low-frequency variation, so no surface is a flat single colour.
    k = rng.normal(0, 1, (3, 3)) * rng.uniform(5, 15)
    ph = rng.uniform(0, 2 * np.pi, 3)
    pattern = np.sin(verts @ k + ph).mean(1)
    col *= (1.0 + 0.08 * pattern)[:, None]
    col += rng.normal(0, 0.015, (n, 3))
    return np.clip(col, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# categories (metric-ish units before normalisation; only proportions matter)


def _profile_segments(rng: np.random.Generator) -> int:
    return int(rng.integers(40, 56))


def _bottle(rng: np.random.Generator) -> list[Part]:
    h = 1.0
    r = rng.uniform(0.14, 0.26)
    neck_r = r * rng.uniform(0.25, 0.45)
    body_top = h * rng.uniform(0.45, 0.68)
    shoulder = h * rng.uniform(0.08, 0.18)
    cap_h = h * rng.uniform(0.05, 0.1)
    neck_top = h - cap_h
    base_bevel = r * 0.08
    prof = [(r * 0.85, 0.0), (r - base_bevel * 0.3, base_bevel * 0.2), (r, base_bevel)]
    prof += [(r * rng.uniform(0.96, 1.02), body_top * 0.5), (r, body_top)]
    ts = np.linspace(0, 1, 7)[1:]
    for t in ts:  # smooth shoulder (cosine blend between body and neck radius)
        prof.append((neck_r + (r - neck_r) * 0.5 * (1 + np.cos(np.pi * t)), body_top + shoulder * t))
    prof += [(neck_r, neck_top)]
    seg = _profile_segments(rng)
    v, t = revolve(np.asarray(prof), seg)
    body = Part(v, t, _texture(v, _random_color(rng), rng, "label"), "body")
    cap_r = neck_r * rng.uniform(1.05, 1.25)
    cv, ct = revolve(np.array([(cap_r, neck_top - cap_h * 0.3), (cap_r, h - 0.01), (cap_r * 0.9, h)]), seg)
    cap = Part(cv, ct, _texture(cv, _random_color(rng), rng, "stripes"), "cap")
    return [body, cap]


def _bowl(rng: np.random.Generator) -> list[Part]:
    rim_r = 1.0
    h = rim_r * rng.uniform(0.35, 0.65)
    foot_r = rim_r * rng.uniform(0.35, 0.55)
    foot_h = h * rng.uniform(0.03, 0.1)
    wall = rim_r * rng.uniform(0.03, 0.06)
    bulge = rng.uniform(0.4, 0.9)  # how round the side is: 0 = conical, 1 = spherical-ish
    ts = np.linspace(0, 1, 12)
    outer_r = foot_r + (rim_r - foot_r) * (ts ** (1 - 0.6 * bulge) if bulge > 0 else ts)
    outer_y = foot_h + (h - foot_h) * ts ** (1 + bulge)
    outer = list(zip(outer_r, outer_y))
    inner_r = np.maximum(outer_r[::-1] - wall, foot_r * 0.3 * (1 - ts[::-1]) + 1e-3)
    inner_y = np.maximum(outer_y[::-1], foot_h + wall)
    inner_y[0] = h - wall * 0.3
    inner = [(max(r_ - 1e-3, 1e-3), y_) for r_, y_ in zip(inner_r[1:], inner_y[1:])]
    prof = [(foot_r, 0.0), *outer, (rim_r - wall * 0.5, h), *inner]
    prof.append((foot_r * 0.2, foot_h + wall))
    v, t = revolve(np.asarray(prof), _profile_segments(rng) + 8)
    return [Part(v, t, _texture(v, _random_color(rng), rng, rng.choice(["noise", "stripes"])), "body")]


def _can(rng: np.random.Generator) -> list[Part]:
    r = rng.uniform(0.28, 0.45)
    h = 1.0
    bevel = r * rng.uniform(0.08, 0.15)
    lid_depth = h * rng.uniform(0.01, 0.03)
    prof = [
        (r - bevel, 0.0),
        (r - bevel * 0.2, bevel * 0.6),
        (r, bevel),
        (r, h - bevel),
        (r - bevel * 0.3, h - bevel * 0.4),
        (r - bevel * 0.5, h),
        (r - bevel * 0.9, h),
        (r - bevel, h - lid_depth),
    ]
    seg = _profile_segments(rng)
    v, t = revolve(np.asarray(prof), seg)
    col = _texture(v, _random_color(rng), rng, "label")
    metal = _random_color(rng, "metal")
    rim = (v[:, 1] < bevel) | (v[:, 1] > h - bevel)
    col[rim] = metal
    return [Part(v, t, col, "body")]


def _mug(rng: np.random.Generator) -> list[Part]:
    r = 1.0
    h = r * rng.uniform(1.6, 2.5)
    wall = r * rng.uniform(0.06, 0.1)
    base_t = h * rng.uniform(0.05, 0.1)
    taper = rng.uniform(0.85, 1.05)  # bottom radius relative to the rim
    rb = r * taper
    prof = [
        (rb * 0.92, 0.0),
        (rb, h * 0.03),
        (r, h),
        (r - wall, h),
        (rb - wall, base_t + wall * 0.5),
        (rb * 0.85 - wall, base_t),
    ]
    seg = _profile_segments(rng)
    v, t = revolve(np.asarray(prof), seg)
    color = _random_color(rng)
    body = Part(v, t, _texture(v, color, rng, rng.choice(["noise", "label", "stripes"])), "body")
    # Handle: a C-shaped elliptic arc in the x-y plane on the +x side, its ends sunk into the wall.
    y0, y1 = h * rng.uniform(0.15, 0.3), h * rng.uniform(0.7, 0.88)
    yc, ry = 0.5 * (y0 + y1), 0.5 * (y1 - y0)
    reach = r * rng.uniform(0.45, 0.8)
    ang = np.linspace(-np.pi / 2, np.pi / 2, 24)
    x_wall = r * (taper + (1 - taper) * 0.5)
    path = np.stack(
        [x_wall - wall * 1.5 + (reach + wall * 1.5) * np.cos(ang), yc + ry * np.sin(ang), np.zeros_like(ang)],
        -1,
    )
    thick = r * rng.uniform(0.08, 0.14)
    hv, ht = sweep_tube(path, (thick, thick * rng.uniform(1.0, 1.6)), 12)
    handle = Part(hv, ht, _texture(hv, color * rng.uniform(0.8, 1.0), rng), "handle")
    return [body, handle]


def _camera(rng: np.random.Generator) -> list[Part]:
    w = 1.0
    hgt = w * rng.uniform(0.55, 0.8)
    d = w * rng.uniform(0.3, 0.55)
    body_col = _random_color(rng, rng.choice(["dark", "metal", "any"], p=[0.5, 0.3, 0.2]))
    bv, bt = box(np.array([w, hgt, d]), np.zeros(3), subdiv=6)
    parts = [Part(bv, bt, _texture(bv, body_col, rng), "body")]
    lens_r = hgt * rng.uniform(0.28, 0.42)
    lens_len = d * rng.uniform(0.4, 1.6)
    lx = rng.uniform(-0.12, 0.12) * w
    ly = rng.uniform(-0.08, 0.02) * hgt
    seg = _profile_segments(rng)
    lv, lt = revolve(
        np.array(
            [
                (lens_r * 1.05, 0.0),
                (lens_r, lens_len * 0.6),
                (lens_r * 0.9, lens_len),
                (lens_r * 0.6, lens_len),
            ]
        ),
        seg,
    )
    lv = lv[:, [0, 2, 1]]  # axis along +z; swapping two axes mirrors, so the triangles are flipped
    lt = lt[:, ::-1].copy()
    lv += np.array([lx, ly, d / 2 - 0.02 * d])
    lcol = _texture(lv, _random_color(rng, "dark"), rng, "stripes")
    glass = lv[:, 2] > lv[:, 2].max() - 1e-6
    lcol[glass] = np.array([0.05, 0.07, 0.12])
    parts.append(Part(lv, lt, lcol, "lens"))
    if rng.random() < 0.8:  # viewfinder hump / flash on top
        fw, fh, fd = w * rng.uniform(0.2, 0.35), hgt * rng.uniform(0.12, 0.25), d * rng.uniform(0.5, 0.9)
        fv, ft = box(
            np.array([fw, fh, fd]), np.array([rng.uniform(-0.2, 0.2) * w, hgt / 2 + fh / 2 - 0.01, 0.0]), 2
        )
        parts.append(Part(fv, ft, _texture(fv, body_col * 0.9, rng), "top"))
    if rng.random() < 0.7:  # shutter button
        sv, st = revolve(np.array([(0.05 * w, 0.0), (0.05 * w, 0.04 * w)]), 16)
        sv += np.array([-0.32 * w, hgt / 2 - 0.005, 0.0])
        parts.append(Part(sv, st, _texture(sv, _random_color(rng, "metal"), rng), "button"))
    return parts


def _laptop(rng: np.random.Generator) -> list[Part]:
    w = 1.0
    depth = w * rng.uniform(0.62, 0.75)
    t_base = w * rng.uniform(0.03, 0.05)
    t_lid = t_base * rng.uniform(0.4, 0.7)
    opening = np.deg2rad(rng.uniform(95.0, 135.0))  # angle between keyboard and screen
    shell = _random_color(rng, rng.choice(["dark", "metal"]))
    bv, bt = box(np.array([w, t_base, depth]), np.array([0.0, t_base / 2, 0.0]), subdiv=6)
    bcol = _texture(bv, shell, rng)
    # Keyboard area: darker patch on the top face toward the front half.
    kb = (
        (bv[:, 1] > t_base - 1e-6)
        & (np.abs(bv[:, 0]) < 0.42 * w)
        & (bv[:, 2] < 0.3 * depth)
        & (bv[:, 2] > -0.35 * depth)
    )
    bcol[kb] *= 0.35
    base = Part(bv, bt, bcol, "base")
    # Screen lid: box in its own frame (width, length along local y, thickness along local z), then hinged at
    # the back edge of the base and rotated by the opening angle about x.
    lv, lt = box(np.array([w, depth, t_lid]), np.array([0.0, depth / 2, -t_lid / 2]), subdiv=6)
    lcol = _texture(lv, shell, rng)
    screen = (
        (lv[:, 2] > -1e-6)
        & (np.abs(lv[:, 0]) < 0.45 * w)
        & (lv[:, 1] > 0.06 * depth)
        & (lv[:, 1] < 0.94 * depth)
    )
    lcol[screen] = np.clip(_random_color(rng) * 0.25 + 0.05, 0, 1)
    tilt = opening - np.pi / 2  # lid leans back from vertical
    c, s = np.cos(tilt), np.sin(tilt)
    rot = np.array([[1, 0, 0], [0, c, s], [0, -s, c]])  # rotation about x, tilting +y toward -z
    lv = lv @ rot.T + np.array([0.0, t_base, -depth / 2 + t_lid * 0.5])
    return [base, Part(lv, lt, lcol, "screen")]


_BUILDERS = {
    "bottle": _bottle,
    "bowl": _bowl,
    "camera": _camera,
    "can": _can,
    "laptop": _laptop,
    "mug": _mug,
}


def _distractor(rng: np.random.Generator) -> list[Part]:
    """Clutter that belongs to no category: a box, a cylinder or a flat block."""
    kind = rng.integers(0, 3)
    if kind == 0:
        v, t = box(rng.uniform(0.3, 1.0, 3), np.zeros(3), subdiv=3)
    elif kind == 1:
        r, h = rng.uniform(0.15, 0.5), rng.uniform(0.05, 1.0)
        v, t = revolve(np.array([(r, 0.0), (r, h)]), 24)
    else:
        v, t = box(np.array([1.0, rng.uniform(0.05, 0.15), rng.uniform(0.6, 1.0)]), np.zeros(3), subdiv=3)
    return [Part(v, t, _texture(v, _random_color(rng), rng), "body")]


def make_distractor(rng: np.random.Generator) -> ObjectModel:
    """A non-category object (no ground truth is written for it); same frame conventions as make_object."""
    return _assemble("distractor", _distractor(rng), rng, None)


def make_object(category: str, rng: np.random.Generator, model_id: str | None = None) -> ObjectModel:
    """Build one random instance of a category in the NOCS canonical frame."""
    if category not in _BUILDERS:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    return _assemble(category, _BUILDERS[category](rng), rng, model_id)


def _assemble(
    category: str, parts: list[Part], rng: np.random.Generator, model_id: str | None
) -> ObjectModel:
    verts, tris, cols, tpart, ranges = [], [], [], [], []
    offset = 0
    ntri = 0
    for k, p in enumerate(parts):
        verts.append(p.vertices)
        tris.append(p.triangles + offset)
        cols.append(p.colors)
        tpart.append(np.full(len(p.triangles), k, np.int16))
        ranges.append((ntri, ntri + len(p.triangles)))
        offset += len(p.vertices)
        ntri += len(p.triangles)
    v = np.concatenate(verts)
    lo, hi = v.min(0), v.max(0)
    v = (v - 0.5 * (lo + hi)) / np.linalg.norm(hi - lo)
    model_id = model_id or f"{category}_{int(rng.integers(0, 1 << 31)):010d}"
    return ObjectModel(
        category=category,
        model_id=model_id,
        vertices=v,
        triangles=np.concatenate(tris).astype(np.int32),
        colors=np.concatenate(cols).astype(np.float32),
        triangle_part=np.concatenate(tpart),
        part_names=[p.name for p in parts],
        part_triangle_ranges=ranges,
        texture=SolidTexture.random(rng),
    )
