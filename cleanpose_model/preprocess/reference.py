"""The per-object input protocol in numpy: the reference every other form is checked against
(`/work/shared/spec/preprocessing.md` §1.4-1.6 test time, §3 train time), step for step:

- square crop window (`get_bbox`): side = next multiple of 40 strictly above the box side, capped at 440,
  shifted (never shrunk) into the image;
- valid pixels = mask > 0 AND finite depth > 0, gathered row-major inside the window;
- sampling (`sample_indices`): with replacement when there are <= n_points candidates (also exactly
  n_points), else without;
- points = back-projection of the chosen pixels (`backproject`), float64 arithmetic, float32 metres;
- RGB crop -> cv2.resize(224, INTER_LINEAR) on uint8 (`resize_crop`) -> /255 -> ImageNet normalisation
  (`normalize_rgb`);
- choose remapped into the 224 x 224 crop with floor (`remap_choose`).

`sample_object` is one object through all of these; `build_object_inputs_np` is every detection of a frame.

Serving and training are the same protocol with different options, never separate copies of it:

- window, valid pixels, sampling, back-projection, resize, remap: `sample_object` for both. The node calls
  `build_object_inputs*`; the NOCS test set calls `build_object_inputs_np` itself; training samples and the
  HouseCat6D test set call `sample_object` per instance.
- keep rule (`min_points`): serving and the test sets keep an object with more than 16 valid pixels in its
  window (the HouseCat6D test set applies its published count to the full-image mask first); a training
  sample uses 0 (None = the dataset draws another sample).
- depth hole filling (`fill_missing`, training/datasets/depth_fill.py): on in the dataset protocol, before
  this module; off on the robot path (a caller may pass filled depth).
- point noise and colour augmentation (training/datasets/augment.py): training samples only, applied to
  `ObjectSample.pts` / `.rgb` between `sample_object` and `normalize_rgb`.

The fixed-shape torch form (`graphed.py`) computes `build_object_inputs_np`'s outputs on a device, drawing the
samples with the same generator calls in the same order.

Deviation from the published code, only for images smaller than the 440 cap (never the case in NOCS or
HouseCat6D): the window side is also capped at min(H, W) so the shifted window stays inside the image (the
original would produce negative slice starts there).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

IMAGE_SIZE = 224
N_POINTS = 1024
MIN_POINTS = 16
WINDOW_CAP = 440
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# The node wants "same frame -> same pose": when no generator is passed, every call draws from a fresh
# generator with this seed, so identical inputs give identical samples.
DEFAULT_SEED = 0


def object_rng(seed: int, window, num_points: int, category: int) -> np.random.Generator:
    """The sampling generator of ONE object, seeded from its own inputs only: the base `seed`, its crop
    window, its valid-pixel count in that window and its category. Another detection added, dropped or moved
    in the message changes none of these, so the object's samples (and pose) stay bit-identical; a single
    stream per frame drawn in message order would hand each object whatever the objects before it left."""
    rmin, rmax, cmin, cmax = (int(v) for v in window)
    entropy = [int(seed), int(category), rmin, rmax, cmin, cmax, int(num_points)]
    if min(entropy) < 0:
        raise ValueError(f"object seed entropy must be non-negative, got {entropy}")
    return np.random.default_rng(np.random.SeedSequence(entropy))


def get_bbox(bbox, img_width: int = 480, img_length: int = 640) -> tuple[int, int, int, int]:
    """Square crop window of the protocol. `bbox` = (y1, x1, y2, x2); img_width = number of ROWS,
    img_length = number of COLS (the original's naming). Returns (rmin, rmax, cmin, cmax), max exclusive."""
    y1, x1, y2, x2 = (int(v) for v in bbox)
    window = (max(y2 - y1, x2 - x1) // 40 + 1) * 40
    window = min(window, WINDOW_CAP, int(img_width), int(img_length))
    half = int(window / 2)
    cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
    rmin, rmax, cmin, cmax = cy - half, cy + half, cx - half, cx + half
    if rmin < 0:
        rmax -= rmin
        rmin = 0
    if cmin < 0:
        cmax -= cmin
        cmin = 0
    if rmax > img_width:
        rmin -= rmax - img_width
        rmax = img_width
    if cmax > img_length:
        cmin -= cmax - img_length
        cmax = img_length
    return rmin, rmax, cmin, cmax


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y1, x1, y2, x2) with exclusive max of a mask's non-zero pixels (NOCS `extract_bboxes` layout)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def sample_indices(n: int, n_points: int, rng) -> np.ndarray:
    """Protocol sampling: with replacement when n <= n_points (including equality), else without.
    `rng` may be a np.random.Generator or a legacy RandomState (same `choice` signature)."""
    if n <= 0:
        raise ValueError("no candidate pixels to sample from")
    if n <= n_points:
        return np.asarray(rng.choice(n, n_points), dtype=np.int64)
    return np.asarray(rng.choice(n, n_points, replace=False), dtype=np.int64)


def camera_params(K) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) from a 3x3 matrix or a 4-vector (the datasets' intrinsics tuples)."""
    k = np.asarray(K, dtype=np.float64)
    if k.shape == (3, 3):
        return float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])
    if k.shape == (4,):
        return float(k[0]), float(k[1]), float(k[2]), float(k[3])
    raise ValueError(f"K must be 3x3 or (fx, fy, cx, cy), got shape {k.shape}")


def backproject(u, v, z, K) -> np.ndarray:
    """(n, 3) float32 camera-frame points of pixels (col u, row v) at depth z metres: x = (u - cx) z / fx,
    y = (v - cy) z / fy, in float64 whatever the input dtypes (as the published float64 maps)."""
    fx, fy, cx, cy = camera_params(K)
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    out = np.empty((z.shape[0], 3), np.float32)
    out[:, 0] = (u - cx) * z / fx
    out[:, 1] = (v - cy) * z / fy
    out[:, 2] = z
    return out


def remap_choose(choose: np.ndarray, crop_side: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Pixel index in the square crop -> pixel index in the resized image_size x image_size crop (floor)."""
    ratio = image_size / crop_side
    col = choose % crop_side
    row = choose // crop_side
    return (np.floor(row * ratio) * image_size + np.floor(col * ratio)).astype(np.int64)


def resize_crop(rgb: np.ndarray, window, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The window of an (H, W, 3) uint8 image resized to (image_size, image_size, 3) uint8 with OpenCV's
    bilinear (the protocol resizes before any float conversion)."""
    rmin, rmax, cmin, cmax = window
    return cv2.resize(rgb[rmin:rmax, cmin:cmax], (image_size, image_size), interpolation=cv2.INTER_LINEAR)


def _normalize_lut() -> np.ndarray:
    """(3, 256) float32: uint8 value -> ImageNet-normalised value per channel, computed with exactly the
    float32 operations of the protocol (/255, -mean, /std), so a lookup is bit-identical to doing them per
    pixel."""
    v = np.arange(256, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    return (v[None, :] - IMAGENET_MEAN[:, None]) / IMAGENET_STD[:, None]


NORM_LUT = _normalize_lut()


def normalize_rgb(rgb_uint8: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(S, S, 3) uint8 RGB -> (3, S, S) float32 ImageNet-normalised (ToTensor + Normalize), into `out` when
    given. A table lookup per channel: broadcasting the 3-vector over the last axis costs ~1 ms per object,
    the lookup ~0.1 ms, and gives the same bits."""
    if out is None:
        out = np.empty((3, *rgb_uint8.shape[:2]), np.float32)
    for c in range(3):
        np.take(NORM_LUT[c], rgb_uint8[..., c], out=out[c])
    return out


@dataclass
class ObjectSample:
    """One object through the protocol, before the train-only augmentation and the normalisation."""

    window: tuple[int, int, int, int]  # (rmin, rmax, cmin, cmax)
    num_points: int  # valid pixels in the window before sampling
    pixels: np.ndarray  # (N,) int64 sampled pixel indices in the window, row-major
    pts: np.ndarray  # (N, 3) float32 metres, camera frame
    rgb: np.ndarray  # (S, S, 3) uint8, the resized window
    choose: np.ndarray  # (N,) int64 sampled pixels in the resized S x S crop


def sample_object(
    rgb: np.ndarray,
    depth_m: np.ndarray,
    K,
    mask: np.ndarray,
    window,
    rng,
    n_points: int = N_POINTS,
    image_size: int = IMAGE_SIZE,
    min_points: int = 0,
    object_seed: tuple[int, int] | None = None,
) -> ObjectSample | None:
    """One object: valid pixels of `mask` (H, W, non-zero = object) inside `window`, sampled, back-projected,
    RGB window resized. None (and nothing drawn from `rng`) when it has <= `min_points` valid pixels.
    `object_seed` = (seed, category): draw from `object_rng` of this object instead of `rng` (pass rng=None).
    Only the window is read: a full-frame float64 copy costs more than all windows of a frame."""
    rmin, rmax, cmin, cmax = window
    dwin = np.asarray(depth_m[rmin:rmax, cmin:cmax], dtype=np.float64)
    # NaN compares False already; +inf must not become a point.
    valid = (mask[rmin:rmax, cmin:cmax] > 0) & np.isfinite(dwin) & (dwin > 0)
    candidates = np.flatnonzero(valid)
    n = len(candidates)
    if n <= max(min_points, 0):
        return None
    if object_seed is not None:
        rng = object_rng(object_seed[0], window, n, object_seed[1])
    pixels = candidates[sample_indices(n, n_points, rng)]
    side = cmax - cmin
    row, col = np.divmod(pixels, side)
    pts = backproject(cmin + col, rmin + row, dwin.reshape(-1)[pixels], K)
    return ObjectSample(
        window=(int(rmin), int(rmax), int(cmin), int(cmax)),
        num_points=n,
        pixels=pixels,
        pts=pts,
        rgb=resize_crop(rgb, window, image_size),
        choose=remap_choose(pixels, rmax - rmin, image_size),
    )


@dataclass
class FrameInputs:
    """One frame as the preprocessing sees it (no ROS types)."""

    rgb: np.ndarray  # (H, W, 3) uint8, RGB order
    depth_m: np.ndarray  # (H, W) float metres, 0 / NaN = invalid
    K: np.ndarray  # (3, 3)


@dataclass
class ObjectInputs:
    """Per-object network inputs of one frame (numpy), plus bookkeeping the node and the tests use."""

    rgb: np.ndarray  # (n, 3, 224, 224) float32
    pts: np.ndarray  # (n, N, 3) float32 metres, camera frame
    choose: np.ndarray  # (n, N) int64 in [0, 224*224)
    category: np.ndarray  # (n,) int64, 0-based model category
    kept: np.ndarray  # (n,) int64 index of each kept object in the caller's detection list
    num_points: np.ndarray  # (n,) int64 valid pixels inside the window before sampling
    windows: np.ndarray  # (n, 4) int64 (rmin, rmax, cmin, cmax)

    def __len__(self) -> int:
        return int(self.kept.shape[0])

    def to_batch(self, device="cpu", dtype=None):
        """The model API's ObjectBatch on `device` (float tensors in `dtype`, default float32)."""
        import torch

        from cleanpose_model.types import ObjectBatch

        dtype = dtype or torch.float32
        return ObjectBatch(
            rgb=torch.from_numpy(self.rgb).to(device=device, dtype=dtype),
            pts=torch.from_numpy(self.pts).to(device=device, dtype=dtype),
            choose=torch.from_numpy(self.choose).to(device=device),
            category=torch.from_numpy(self.category).to(device=device),
        )


def check_frame(rgb, depth_m, K, masks, boxes, categories) -> None:
    """Shape checks shared by both forms: (H, W, 3) uint8 rgb, (H, W) depth, (n, H, W) masks, n boxes and
    categories, K 3x3 or (fx, fy, cx, cy)."""
    if tuple(rgb.shape[2:]) != (3,) or len(rgb.shape) != 3 or str(rgb.dtype) not in ("uint8", "torch.uint8"):
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {tuple(rgb.shape)} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if tuple(depth_m.shape) != (h, w):
        raise ValueError(f"depth {tuple(depth_m.shape)} does not match rgb {(h, w)}")
    camera_params(K)
    if len(masks.shape) != 3 or tuple(masks.shape[1:]) != (h, w):
        raise ValueError(f"masks must be (n, {h}, {w}), got {tuple(masks.shape)}")
    n = masks.shape[0]
    if len(boxes) != n or len(categories) != n:
        raise ValueError(f"{n} masks but {len(boxes)} boxes and {len(categories)} categories")


def build_object_inputs_np(
    rgb: np.ndarray,
    depth_m: np.ndarray,
    K: np.ndarray,
    masks: np.ndarray,
    boxes,
    categories,
    rng=None,
    n_points: int = N_POINTS,
    min_points: int = MIN_POINTS,
    image_size: int = IMAGE_SIZE,
    object_seed: int | None = None,
) -> ObjectInputs:
    """Every detection of a frame, in detection order. boxes: (n, 4) (y1, x1, y2, x2), exclusive max.
    Objects with <= min_points valid pixels in their window are dropped (absent from `kept`).
    Sampling: one stream `rng` over the objects in detection order (the datasets' protocol), or, with
    `object_seed`, one generator per object from `object_rng(object_seed, ...)` (order-invariant: the
    node's path)."""
    masks = np.asarray(masks)
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    categories = np.asarray(categories, dtype=np.int64).reshape(-1)
    check_frame(rgb, depth_m, K, masks, boxes, categories)
    if object_seed is not None and rng is not None:
        raise ValueError("pass either rng (one stream) or object_seed (one generator per object), not both")
    if rng is None and object_seed is None:
        rng = np.random.default_rng(DEFAULT_SEED)
    h, w = depth_m.shape
    n = masks.shape[0]
    # Filled in place (rows of kept objects first); the first m rows are returned.
    rgb_out = np.empty((n, 3, image_size, image_size), np.float32)
    pts_out = np.empty((n, n_points, 3), np.float32)
    choose_out = np.empty((n, n_points), np.int64)
    kept, nums, wins = [], [], []
    for j in range(n):
        per_object = None if object_seed is None else (object_seed, int(categories[j]))
        s = sample_object(
            rgb,
            depth_m,
            K,
            masks[j],
            get_bbox(boxes[j], h, w),
            rng,
            n_points,
            image_size,
            min_points,
            per_object,
        )
        if s is None:
            continue
        m = len(kept)
        pts_out[m] = s.pts
        choose_out[m] = s.choose
        normalize_rgb(s.rgb, out=rgb_out[m])
        kept.append(j)
        nums.append(s.num_points)
        wins.append(s.window)
    m = len(kept)
    kept = np.asarray(kept, np.int64)
    return ObjectInputs(
        rgb=rgb_out[:m],
        pts=pts_out[:m],
        choose=choose_out[:m],
        category=categories[kept],
        kept=kept,
        num_points=np.asarray(nums, np.int64),
        windows=np.asarray(wins, np.int64).reshape(-1, 4),
    )


def build_object_inputs(*args, device="cpu", dtype=None, **kwargs):
    """DESIGN.md contract: `build_object_inputs_np`'s arguments (rgb uint8, depth_m, K, masks, boxes,
    categories, rng, n_points, min_points, image_size, object_seed)
    -> (ObjectBatch on `device` in `dtype`, kept_indices)."""
    objs = build_object_inputs_np(*args, **kwargs)
    return objs.to_batch(device, dtype), objs.kept
