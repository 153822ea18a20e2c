"""CPU ray casting of a scene (Open3D RaycastingScene) with sensor-like depth and lit RGB, plus ground truth.

Ray of pixel (u, v) (integer column/row) has camera-frame direction ((u - cx)/fx, (v - cy)/fy, 1), so the ray
parameter at the hit is the depth z and back-projection with the NOCS formula x = (u - cx) z / fx lands
exactly on the surface point (before noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import open3d as o3d

from .scene import Camera, Scene

_NOISE_POOL = np.zeros(0, np.float32)


def _grow_noise_pool(n: int) -> None:
    global _NOISE_POOL
    # A fixed seed: the pool is a constant of the program, not a source of run-to-run variation.
    _NOISE_POOL = np.random.default_rng(20250101).standard_normal(n, dtype=np.float32)


@dataclass
class DepthNoise:
    """Structured-light style depth model (values in metres)."""

    enabled: bool = True
    # Axial noise sigma(z) = a + b (z - 0.4)^2 (Nguyen et al. 2012, Kinect).
    sigma_a: float = 0.0012
    sigma_b: float = 0.0019
    # Disparity quantisation: z = f b / d with d rounded to 1/subpixel px.
    baseline_m: float = 0.05
    subpixel: float = 8.0
    edge_jump_m: float = 0.02  # neighbour depth jump that marks a depth edge
    edge_dropout: float = 0.6  # probability that a (dilated) edge pixel is missing
    random_dropout: float = 0.003
    grazing_cos: float = 0.12  # surfaces seen more obliquely than this return nothing
    min_m: float = 0.15
    max_m: float = 3.0


@dataclass
class Lighting:
    direction_world: np.ndarray  # unit vector toward the light
    ambient: float
    diffuse: float
    color: np.ndarray  # (3,) light tint
    specular: float
    shininess: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Lighting:
        az, el = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(30.0, 80.0))
        d = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        tint = 1.0 + rng.uniform(-0.08, 0.08, 3)
        return cls(
            direction_world=d,
            ambient=rng.uniform(0.25, 0.5),
            diffuse=rng.uniform(0.5, 0.85),
            color=tint,
            specular=rng.uniform(0.0, 0.25),
            shininess=rng.uniform(10, 40),
        )


@dataclass
class Frame:
    """One rendered view and its ground truth; per-instance arrays are index-aligned (visible objects)."""

    rgb: np.ndarray  # (H, W, 3) uint8 RGB
    depth_mm: np.ndarray  # (H, W) uint16, 0 = missing
    depth_clean_m: np.ndarray  # (H, W) float32 noiseless depth (0 where nothing hit)
    instance_map: np.ndarray  # (H, W) int16: scene object index, -1 = table / distractor / background
    T_world_cam: np.ndarray  # (4, 4)
    K: np.ndarray  # (3, 3)
    object_indices: np.ndarray  # (n,) index into scene.objects
    instance_ids: np.ndarray  # (n,) 1-based stable ids
    category_ids: np.ndarray  # (n,) 0-based NOCS category
    model_ids: list[str]
    masks: np.ndarray  # (n, H, W) bool visible masks
    boxes: np.ndarray  # (n, 4) int32 y1, x1, y2, x2 (max exclusive)
    rotations: np.ndarray  # (n, 3, 3) object -> camera
    translations: np.ndarray  # (n, 3) m
    scales: np.ndarray  # (n,) NOCS scale = metric box diagonal
    sizes: np.ndarray  # (n, 3) metric full extents
    nocs_extents: np.ndarray  # (n, 3) normalised extents (norm 1)
    handle_visibility: np.ndarray  # (n,) int: 1 unless a mug whose handle is not visible
    valid_depth_pixels: np.ndarray  # (n,) mask pixels with valid noisy depth
    extras: dict = field(default_factory=dict)


class Renderer:
    """Holds the ray-casting scene of one static layout; render() draws any number of views of it."""

    def __init__(self, scene: Scene, camera: Camera, plane_half_m: float = 6.0, shadows: bool = True):
        self.scene = scene
        self.camera = camera
        self.shadows = shadows
        self._rc = o3d.t.geometry.RaycastingScene()
        h = plane_half_m
        plane_v = np.array([[-h, -h, 0], [h, -h, 0], [h, h, 0], [-h, h, 0]], np.float32)
        plane_t = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
        self._plane_id = self._rc.add_triangles(o3d.core.Tensor(plane_v), o3d.core.Tensor(plane_t))
        self._geom_to_obj = {}
        tri_cols, offsets, handle_flags = [], [], []
        off = 0
        # Objects first, then distractors: index k < len(scene.objects) is a ground-truth object.
        self._bodies = [*scene.objects, *scene.distractors]
        for k, obj in enumerate(self._bodies):
            v = obj.world_vertices().astype(np.float32)
            gid = self._rc.add_triangles(
                o3d.core.Tensor(v), o3d.core.Tensor(obj.model.triangles.astype(np.uint32))
            )
            self._geom_to_obj[gid] = k
            tri_cols.append(obj.model.colors[obj.model.triangles])
            handle_flags.append(obj.model.part_mask("handle"))
            offsets.append(off)
            off += len(obj.model.triangles)
        n_geom = max([self._plane_id, *self._geom_to_obj]) + 1
        # Lookup tables indexed by geometry id: object index and first row in the stacked triangle tables.
        self._obj_of_geom = np.full(n_geom + 1, -1, np.int32)
        self._tri_offset = np.zeros(n_geom + 1, np.int64)
        for gid, k in self._geom_to_obj.items():
            self._obj_of_geom[gid] = k
            self._tri_offset[gid] = offsets[k]
        self._tri_cols = np.concatenate(tri_cols) if tri_cols else np.zeros((0, 3, 3), np.float32)
        self._tri_handle = np.concatenate(handle_flags) if handle_flags else np.zeros(0, bool)
        K = camera.K
        u, v = np.meshgrid(np.arange(camera.width), np.arange(camera.height))
        self._dirs_cam = (
            np.stack(
                [(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=np.float64)], -1
            )
            .reshape(-1, 3)
            .astype(np.float32)
        )
        self._inv_dir_norm = (1.0 / np.linalg.norm(self._dirs_cam, axis=1)).astype(np.float32)
        self._tex_flat = scene.table_texture.reshape(-1, 3)

    def render(
        self,
        T_world_cam: np.ndarray,
        rng: np.random.Generator,
        lighting: Lighting | None = None,
        noise: DepthNoise | None = None,
        rgb_noise_sigma: float | None = None,
        handle_min_pixels: int = 10,
    ) -> Frame:
        cam = self.camera
        H, W = cam.height, cam.width
        noise = noise or DepthNoise()
        lighting = lighting or Lighting.random(rng)
        R_wc, eye = T_world_cam[:3, :3], T_world_cam[:3, 3]
        N = H * W
        f32 = np.float32
        dirs = self._dirs_cam @ R_wc.T.astype(f32)
        rays = np.empty((N, 6), f32)
        rays[:, :3] = eye
        rays[:, 3:] = dirs
        hit = self._rc.cast_rays(o3d.core.Tensor.from_numpy(rays), nthreads=0)
        t_hit = hit["t_hit"].numpy()
        valid = np.isfinite(t_hit)
        depth = np.where(valid, t_hit, f32(0.0))
        # Misses carry Open3D's INVALID_ID; clamping sends them to the last lookup slot (object -1).
        gid = np.minimum(hit["geometry_ids"].numpy(), len(self._obj_of_geom) - 1)
        obj_idx = self._obj_of_geom[gid]
        oi = np.flatnonzero(obj_idx >= 0)  # object pixels (a minority): handled by index lists
        prim_o = hit["primitive_ids"].numpy()[oi].astype(np.int64)
        rows = self._tri_offset[gid[oi]] + prim_o
        pts = dirs * depth[:, None]
        pts += eye.astype(f32)

        # --- colour: albedo (tiled texture on the table, barycentric vertex colours on objects) -------------
        ts = self.scene.table_texture.shape[0]
        q = np.floor(pts[:, :2] * f32(ts / self.scene.texture_period_m)).astype(np.int32) % ts
        albedo = self._tex_flat[q[:, 1] * ts + q[:, 0]]
        tc = self._tri_cols[rows]
        uvs = hit["primitive_uvs"].numpy()[oi]
        w1, w2 = uvs[:, 0:1], uvs[:, 1:2]
        albedo[oi] = tc[:, 0] * (1 - w1 - w2) + tc[:, 1] * w1 + tc[:, 2] * w2
        obj_o = obj_idx[oi]
        for k, obj in enumerate(self._bodies):
            tex_k = obj.model.texture
            if tex_k is None or tex_k.kind == "none":
                continue
            sel = np.flatnonzero(obj_o == k)
            if len(sel):
                # Canonical (normalised) coordinates of the hit points: R^T (p - t) / scale.
                pc = (pts[oi[sel]] - obj.t_world.astype(f32)) @ (obj.R_world / obj.scale).astype(f32)
                w = tex_k.weight(pc)[:, None]
                albedo[oi[sel]] = albedo[oi[sel]] * (1 - w) + tex_k.color.astype(f32)[None] * w
        # --- shading: ambient + Lambert (+ shadow ray) + a little Blinn-Phong on objects ----------------
        n = hit["primitive_normals"].numpy()
        facing = np.einsum("ij,ij->i", n, dirs)
        L = lighting.direction_world.astype(f32)
        # Normals are flipped toward the viewer (inner walls of bowls and mugs) by the sign of `facing`.
        ndl = np.maximum(np.where(facing > 0, -1, 1).astype(f32) * (n @ L), 0)
        if self.shadows:
            # Shadow rays start 2 mm back along the view ray (no self-hit, no normal offset needed).
            srays = np.empty((N, 6), f32)
            srays[:, :3] = dirs * (depth - f32(2e-3))[:, None]
            srays[:, :3] += eye.astype(f32)
            srays[:, 3:] = L
            occluded = self._rc.test_occlusions(o3d.core.Tensor.from_numpy(srays), nthreads=0).numpy()
            ndl[occluded] = 0.0
        shade = f32(lighting.ambient) + f32(lighting.diffuse) * ndl
        img = albedo * (shade[:, None] * (lighting.color.astype(f32) * f32(255.0))[None])
        if lighting.specular > 0 and len(oi):
            no = n[oi] * np.where(facing[oi] > 0, -1, 1).astype(f32)[:, None]
            half = L[None] - dirs[oi] * self._inv_dir_norm[oi, None]
            half /= np.linalg.norm(half, axis=1, keepdims=True)
            spec = np.maximum(np.einsum("ij,ij->i", no, half), 0) ** lighting.shininess
            img[oi] += (f32(255.0 * lighting.specular) * spec * (ndl[oi] > 0))[:, None]
        if not valid.all():
            img[~valid] = np.array([0.55, 0.6, 0.68], f32) * 255.0  # nothing hit: a plain far wall
        sigma = rgb_noise_sigma if rgb_noise_sigma is not None else rng.uniform(1.0, 4.0)
        img += self._noise(rng, N * 3).reshape(N, 3) * f32(sigma)
        rgb = np.clip(img, 0, 255).astype(np.uint8).reshape(H, W, 3)

        # --- depth --------------------------------------------------------------------------------------
        z = depth.reshape(H, W)
        cos_view = np.abs(facing) * self._inv_dir_norm
        depth_mm = self._sensor_depth(z, cos_view.reshape(H, W), valid.reshape(H, W), noise, rng)
        is_obj = np.zeros(N, bool)
        is_obj[oi] = True

        # --- ground truth -------------------------------------------------------------------------------
        inst = obj_idx.reshape(H, W).astype(np.int16)
        inst[inst >= len(self.scene.objects)] = -1  # distractors are background for the ground truth
        R_cw, t_cw = R_wc.T, -R_wc.T @ eye
        present = np.unique(inst[inst >= 0])
        masks = np.stack([inst == k for k in present]) if len(present) else np.zeros((0, H, W), bool)
        boxes, rots, trans, hv, nvalid = [], [], [], [], []
        handle_hits = np.zeros(H * W, bool)
        if self._tri_handle.size:
            handle_hits[is_obj] = self._tri_handle[rows]
        handle_hits = handle_hits.reshape(H, W)
        for k, m in zip(present, masks):
            obj = self.scene.objects[k]
            rr = np.flatnonzero(m.any(1))
            cc = np.flatnonzero(m.any(0))
            boxes.append([rr[0], cc[0], rr[-1] + 1, cc[-1] + 1])
            rots.append(R_cw @ obj.R_world)
            trans.append(R_cw @ obj.t_world + t_cw)
            vis = 1
            if obj.model.has_handle:
                vis = int(np.count_nonzero(handle_hits & m) >= handle_min_pixels)
            hv.append(vis)
            nvalid.append(int(np.count_nonzero(depth_mm[m] > 0)))
        objs = [self.scene.objects[k] for k in present]
        return Frame(
            rgb=rgb,
            depth_mm=depth_mm,
            depth_clean_m=z,
            instance_map=inst,
            T_world_cam=np.asarray(T_world_cam, np.float64),
            K=cam.K.copy(),
            object_indices=present.astype(np.int64),
            instance_ids=np.array([o.instance_id for o in objs], np.int64),
            category_ids=np.array([o.model.category_id for o in objs], np.int64),
            model_ids=[o.model.model_id for o in objs],
            masks=masks,
            boxes=np.asarray(boxes, np.int32).reshape(-1, 4),
            rotations=np.asarray(rots, np.float64).reshape(-1, 3, 3),
            translations=np.asarray(trans, np.float64).reshape(-1, 3),
            scales=np.array([o.scale for o in objs], np.float64),
            sizes=np.array([o.size for o in objs], np.float64).reshape(-1, 3),
            nocs_extents=np.array([o.model.extents for o in objs], np.float64).reshape(-1, 3),
            handle_visibility=np.asarray(hv, np.int64),
            valid_depth_pixels=np.asarray(nvalid, np.int64),
        )

    def _noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n standard-normal float32 values: a window of a fixed pool at a random offset.

        Drawing fresh normals for every pixel cost a fifth of a frame; a shifted window of a large fixed pool
        is statistically the same per frame and keeps the output a pure function of the generator's state.
        The offsets span twice a frame's largest request (the colour noise, 3 values per pixel) whatever
        earlier frames of this process left in the pool (one seeded stream: a longer pool keeps a shorter one
        as its prefix), so a frame rendered after others, of any size, equals the same frame rendered in a
        fresh process (a render worker); a process of one resolution draws what it always drew.
        """
        span = 6 * self.camera.height * self.camera.width
        if len(_NOISE_POOL) < span:
            _grow_noise_pool(span)
        start = int(rng.integers(0, span - n))
        return _NOISE_POOL[start : start + n]

    def _sensor_depth(
        self,
        z: np.ndarray,
        cos_view: np.ndarray,
        valid: np.ndarray,
        noise: DepthNoise,
        rng: np.random.Generator,
    ) -> np.ndarray:
        H, W = z.shape
        if not noise.enabled:
            return np.where(valid, np.round(z * 1000.0), 0).astype(np.uint16)
        zn = z + self._noise(rng, z.size).reshape(z.shape) * (
            np.float32(noise.sigma_a) + np.float32(noise.sigma_b) * (z - np.float32(0.4)) ** 2
        )
        fb = self.camera.K[0, 0] * noise.baseline_m
        disp = np.round(fb / np.maximum(zn, 1e-3) * noise.subpixel) / noise.subpixel
        zn = np.where(disp > 0, fb / np.maximum(disp, 1e-6), 0.0)
        ok = valid & (z > noise.min_m) & (z < noise.max_m) & (cos_view > noise.grazing_cos)
        # Depth edges: a large jump to any 4-neighbour; dilated once, then dropped at random (ragged edges).
        zz = np.where(valid, z, 1e3)
        jump = np.zeros((H, W), bool)
        dv = np.abs(np.diff(zz, axis=0)) > noise.edge_jump_m
        dh = np.abs(np.diff(zz, axis=1)) > noise.edge_jump_m
        jump[1:] |= dv
        jump[:-1] |= dv
        jump[:, 1:] |= dh
        jump[:, :-1] |= dh
        # The ragged band is a few sensor pixels wide at 640 columns: scale it with the image width.
        k = 2 * round(W / 640) + 1
        edge = cv2.dilate(jump.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool) if k > 1 else jump
        # One uniform draw serves both dropouts (disjoint ranges of it), halving the RNG cost.
        r = rng.random((H, W), dtype=np.float32)
        drop = (edge & (r < noise.edge_dropout)) | (r > 1.0 - noise.random_dropout)
        ok &= ~drop
        return np.where(ok, np.round(zn * 1000.0), 0).clip(0, 65535).astype(np.uint16)


def project_box_corners(size: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(8, 2) pixel (u, v) of the 3D box corners, in the evaluation's corner order."""
    s = (
        np.array(
            [
                [1, 1, 1],
                [1, 1, -1],
                [-1, 1, 1],
                [-1, 1, -1],
                [1, -1, 1],
                [1, -1, -1],
                [-1, -1, 1],
                [-1, -1, -1],
            ]
        )
        * (np.asarray(size) / 2)[None]
    )
    p = s @ R.T + t
    uv = p @ K.T
    return uv[:, :2] / uv[:, 2:3]


def draw_boxes(frame: Frame, names: list[str] | None = None) -> np.ndarray:
    """RGB image with the projected GT 3D boxes, object axes and labels drawn (for looking at frames)."""
    from .shapes import CATEGORIES

    img = np.ascontiguousarray(frame.rgb[..., ::-1]).copy()  # BGR for OpenCV drawing
    edges = [(0, 1), (0, 2), (1, 3), (2, 3), (4, 5), (4, 6), (5, 7), (6, 7), (0, 4), (1, 5), (2, 6), (3, 7)]
    palette = [(0, 220, 255), (255, 120, 0), (60, 255, 60), (255, 60, 220), (0, 80, 255), (255, 255, 0)]
    for i in range(len(frame.instance_ids)):
        col = palette[int(frame.category_ids[i]) % len(palette)]
        uv = project_box_corners(frame.sizes[i], frame.rotations[i], frame.translations[i], frame.K)
        for a, b in edges:
            cv2.line(
                img,
                tuple(np.round(uv[a]).astype(int)),
                tuple(np.round(uv[b]).astype(int)),
                col,
                1,
                cv2.LINE_AA,
            )
        R, t = frame.rotations[i], frame.translations[i]
        o = frame.K @ t
        o = o[:2] / o[2]
        for ax, acol in zip(np.eye(3), [(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
            p = frame.K @ (t + R @ ax * frame.sizes[i].max() * 0.4)
            cv2.line(img, tuple(np.round(o).astype(int)), tuple(np.round(p[:2] / p[2]).astype(int)), acol, 2)
        label = CATEGORIES[int(frame.category_ids[i])]
        if label == "mug":
            label += f" h={int(frame.handle_visibility[i])}"
        y1, x1 = frame.boxes[i, :2]
        cv2.putText(
            img, label, (int(x1), max(int(y1) - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, col, 1, cv2.LINE_AA
        )
    return img[..., ::-1].copy()
