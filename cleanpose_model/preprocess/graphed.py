"""The one torch form of the protocol: `build_object_inputs_np`'s outputs computed on a device with fixed
shapes, so that on CUDA each of its two device phases is one CUDA graph replay (issue 8, target 2); on the
CPU (or with graphs=False) the same phase functions run eagerly, which is how the CPU tests check them
against the numpy reference.

Shapes depend only on (object-count bucket, H, W), never on the frame's content:

- the padded window side is S = min(WINDOW_CAP, H, W) for every frame (no protocol window is larger): the
  flat-index math (row = pos // S) is unchanged, and pixels past an object's own side are invalid;
- the object count is padded up to a bucket of the forward's batch buckets (`default_buckets`); padded rows
  have side 0 (no valid pixel) in phase A and repeat a kept row in phase B, and are cut off at the end. More
  objects than the largest bucket run the same phases eagerly on a multiple of that bucket.

Per call: (host) windows + resize tables -> the frame and the table copied into static buffers ->
phase A (validity, counts, ranks, RGB resize + normalisation) -> counts to the host (on CUDA through pinned
memory) -> (host) the protocol's sampling with the caller's numpy generator, the same calls in the same order
as the reference -> one upload of the sample table -> phase B (kept rows, searchsorted, back-projection,
choose remap) -> the first m rows.

Equality with the reference for the same generator: pts, choose, category, kept, num_points, windows are
identical (float64 back-projection, float64 floor remap). rgb: the resize is OpenCV's fixed-point uint8
bilinear done with integer arithmetic (`resize_tables`, `vertical_fixed_point`), followed by the reference's
float32 normalisation table, so it is bit-identical to the OpenCV path on builds that use the vectorised
kernel (x86 SSE/AVX, NEON); the documented bound is one grey level before normalisation (1 / 255 / 0.224
after it), the scalar kernel's deviation.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

import numpy as np
import torch

from cleanpose_model.preprocess.reference import (
    DEFAULT_SEED,
    IMAGE_SIZE,
    MIN_POINTS,
    N_POINTS,
    NORM_LUT,
    WINDOW_CAP,
    check_frame,
    get_bbox,
    object_rng,
    sample_indices,
)
from cleanpose_model.types import ObjectBatch


def default_buckets() -> tuple[int, ...]:
    """The forward's batch buckets (the input builder pads to the same object counts). Looked up when a
    builder is made, not at import: `cleanpose_model.inference` imports the whole network stack."""
    from cleanpose_model.inference import DEFAULT_BUCKETS

    return tuple(DEFAULT_BUCKETS)


@functools.lru_cache(maxsize=64)
def resize_tables(side: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """(8, image_size) int32 source rows/cols and 11-bit weights of OpenCV's INTER_LINEAR uint8 resize of a
    side x side image to image_size x image_size: y0, y1, b0, b1, x0, x1, a0, a1 (window coordinates).

    Reproduces OpenCV's `resizeGeneric_` set-up literally: scale = 1 / (dst / src) in double, the source
    coordinate rounded to float32, the fraction in float32, each weight rounded separately to the nearest
    short of (1 - f) * 2048 and f * 2048; columns left/right of the image get f = 0 at the clamped column,
    rows keep their fraction and have both row indices clamped (OpenCV clamps rows when fetching them)."""
    d = np.arange(image_size, dtype=np.float64)
    f = ((d + 0.5) * (1.0 / (image_size / side)) - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0.astype(np.float32)).astype(np.float32)

    def weights(fr):
        return (
            np.rint((np.float32(1.0) - fr) * np.float32(2048.0)).astype(np.int64),
            np.rint(fr * np.float32(2048.0)).astype(np.int64),
        )

    y0, y1 = np.clip(i0, 0, side - 1), np.clip(i0 + 1, 0, side - 1)
    b0, b1 = weights(frac)
    fx = frac.copy()
    x0 = i0.copy()
    outside = (x0 < 0) | (x0 >= side - 1)
    fx[outside] = 0.0
    x0 = np.clip(x0, 0, side - 1)
    x1 = np.minimum(x0 + 1, side - 1)
    a0, a1 = weights(fx)
    return np.stack([y0, y1, b0, b1, x0, x1, a0, a1]).astype(np.int32)


def resize_uint8_like_cv2(img: np.ndarray, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Numpy model of what `phase_a` computes for one square uint8 (s, s, C) crop;
    equal to cv2.resize(img, (image_size, image_size), INTER_LINEAR) (tests check it on this OpenCV)."""
    y0, y1, b0, b1, x0, x1, a0, a1 = (t.astype(np.int64) for t in resize_tables(img.shape[0], image_size))
    im = img.astype(np.int64)
    h0 = im[y0][:, x0] * a0[None, :, None] + im[y0][:, x1] * a1[None, :, None]
    h1 = im[y1][:, x0] * a0[None, :, None] + im[y1][:, x1] * a1[None, :, None]
    out = vertical_fixed_point(h0, h1, b0[:, None, None], b1[:, None, None])
    return np.clip(out, 0, 255).astype(np.uint8)


def vertical_fixed_point(h0, h1, b0, b1):
    """OpenCV's vectorised vertical pass for uint8 (VResizeLinearVec_32s8u, which handles every pixel of a
    224-wide RGB row on SSE/AVX/NEON): rows of horizontal sums (scale 2048) are shifted right by 4, multiplied
    by 16-bit weights keeping the high half, summed and rounded with (+2) >> 2. Its scalar tail,
    (h0 * b0 + h1 * b1 + 2^21) >> 22, differs in about 1 pixel of 8 by one level. Works on numpy arrays and
    torch tensors alike (int64 or int32: every intermediate stays below 2^27)."""
    return ((((h0 >> 4) * b0) >> 16) + (((h1 >> 4) * b1) >> 16) + 2) >> 2


# Columns of the int32 meta table before the resize tables (8 rows of image_size each, `resize_tables`).
META_HEAD = 3  # r0, c0, side


def _depth_dtype(dtype) -> torch.dtype:
    """The static depth buffer's dtype for depth of `dtype` (torch or numpy): float32 stays float32, anything
    else is held as float64 (exact for float16 and for integers below 2^53), so no depth is rounded."""
    f32 = dtype == torch.float32 if isinstance(dtype, torch.dtype) else np.dtype(dtype) == np.float32
    return torch.float32 if f32 else torch.float64


def window_side(h: int, w: int) -> int:
    """The fixed padded window side of an H x W frame: no protocol window is larger (`get_bbox`)."""
    return min(WINDOW_CAP, h, w)


def phase_a(depth_flat, rgb, masks, meta, lut, side_pad: int, image_size: int = IMAGE_SIZE):
    """Everything before the host needs the counts, for B (padded) objects.

    depth_flat (H*W,) float, rgb (H, W, 3) uint8, masks (B, H, W) uint8, meta (B, 3 + 8 * image_size) int32
    rows (r0, c0, side, resize tables of that side), lut (768,) float32 normalisation table. Returns counts
    (B,) int64 of valid pixels per window, ranks (B, S*S) int32 (inclusive cumulative count over the padded
    window, row-major: the k-th valid pixel is the first position whose rank is k + 1) and rgb (B, 3, D, D)
    float32, resized like OpenCV's uint8 INTER_LINEAR and ImageNet-normalised."""
    b = masks.shape[0]
    h, w = rgb.shape[0], rgb.shape[1]
    dev = depth_flat.device
    rcs = meta[:, 0:META_HEAD].long()
    r0, c0, side = rcs[:, 0:1], rcs[:, 1:2], rcs[:, 2:3]
    ar = torch.arange(side_pad, device=dev)
    # Clamped so the padding reads inside the image; it is masked out by `inside` anyway.
    rows = (r0 + ar).clamp_(max=h - 1)
    cols = (c0 + ar).clamp_(max=w - 1)
    inside = ar < side
    lin = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, -1)
    valid_depth = torch.isfinite(depth_flat) & (depth_flat > 0)  # NaN compares False; +inf must not count
    valid = (torch.gather(masks.reshape(b, -1), 1, lin) != 0) & valid_depth[lin]
    valid &= (inside[:, :, None] & inside[:, None, :]).reshape(b, -1)
    counts = valid.sum(1)
    # One scan over all windows, then each row less the valid pixels of the rows before it: the same
    # integers as a per-row cumsum, but a per-row scan of B rows of S*S runs on B thread blocks only
    # (~190 serial steps at S = 440), where a flat scan uses the whole GPU.
    flat = valid.reshape(-1).cumsum(0, dtype=torch.int32)
    counts32 = counts.to(torch.int32)
    ranks = flat.view(b, -1) - (counts32.cumsum(0, dtype=torch.int32) - counts32)[:, None]

    tab = meta[:, META_HEAD:].reshape(b, 8, image_size).long()
    ys = torch.stack([tab[:, 0], tab[:, 1]]) + r0  # (2, B, D) image rows of the two vertical taps
    xs = torch.stack([tab[:, 4], tab[:, 5]]) + c0  # (2, B, D) image cols of the two horizontal taps
    bw = torch.stack([tab[:, 2], tab[:, 3]]).to(torch.int32)[:, :, :, None, None]
    aw = torch.stack([tab[:, 6], tab[:, 7]]).to(torch.int32)[:, :, None, :, None]
    taps = rgb[ys[:, None, :, :, None], xs[None, :, :, None, :]].to(torch.int32)  # (2y, 2x, B, D, D, 3)
    hsum = (taps * aw[None]).sum(1)  # horizontal pass, scale 2048
    res = vertical_fixed_point(hsum[0], hsum[1], bw[0], bw[1]).clamp_(0, 255)  # (B, D, D, 3)
    off = torch.arange(3, device=dev).view(1, 3, 1, 1) * 256
    rgb_all = lut[res.permute(0, 3, 1, 2).long() + off]
    return counts, ranks, rgb_all


def phase_b(
    ranks,
    rgb_all,
    meta,
    post,
    params,
    depth_flat,
    width: int,
    side_pad: int,
    n_points: int = N_POINTS,
    image_size: int = IMAGE_SIZE,
):
    """Everything after the sampling, for B output rows. ranks / rgb_all / meta as from and into `phase_a`;
    post (B, N + 2) int32: per output row the sample ranks (drawn index + 1), the object's row in phase A's
    outputs, its category; params (4,) float64 (fx, fy, cx, cy); width = W. Returns rgb (B, 3, D, D),
    pts (B, N, 3) float32, choose (B, N) int64, category (B,) int64."""
    target = post[:, :n_points].contiguous()
    src = post[:, n_points].long()
    category = post[:, n_points + 1].long()
    ranks = ranks[src]
    rgb = rgb_all[src]
    rcs = meta[src, 0:META_HEAD].long()
    r0, c0, side = rcs[:, 0:1], rcs[:, 1:2], rcs[:, 2:3]
    # Never past the window for real rows (a rank target is at most the count); the clamp only keeps
    # arbitrary padding rows inside device memory.
    pos = torch.searchsorted(ranks, target).clamp_(max=side_pad * side_pad - 1)
    row = torch.div(pos, side_pad, rounding_mode="floor")
    col = pos - row * side_pad
    v = r0 + row
    u = c0 + col
    z = depth_flat[v * width + u].to(torch.float64)
    # Camera parameters as device tensors, for two reasons: a graph would bake host scalars into its kernels
    # (K may change between frames), and CUDA divides by a host scalar through its reciprocal, which is not
    # numpy's correctly rounded division.
    fx, fy, cx, cy = params[0], params[1], params[2], params[3]
    pts = torch.stack([(u.double() - cx) * z / fx, (v.double() - cy) * z / fy, z], dim=2).to(torch.float32)
    # numpy's float64 image_size / side as a tensor/tensor division: torch computes scalar / tensor as
    # reciprocal * scalar, which can be one ulp off and move a floor.
    side_d = side.double()
    ratio = torch.full_like(side_d, float(image_size)) / side_d
    choose = (torch.floor(row.double() * ratio) * image_size + torch.floor(col.double() * ratio)).long()
    return rgb, pts, choose, category


def _aligned(nbytes: int) -> int:
    return (nbytes + 15) // 16 * 16


@dataclass
class _Slot:
    """Static buffers (and, on CUDA, the two graphs) of one (bucket, H, W, depth dtype, N, D)."""

    bucket: int
    h: int
    w: int
    side_pad: int
    n_points: int
    image_size: int
    dev_buf: torch.Tensor  # params | meta | depth | rgb | masks, one block so one copy fills it
    host_buf: torch.Tensor  # same layout; pinned on CUDA, the device buffer itself on the CPU
    offsets: dict
    post_dev: torch.Tensor
    post_host: torch.Tensor
    counts_host: torch.Tensor | None = None  # pinned, CUDA only
    dev: dict | None = None  # tensor views of dev_buf
    host: dict | None = None  # numpy views of host_buf
    graph_a: object = None
    graph_b: object = None
    out_a: tuple | None = None
    out_b: tuple | None = None

    def views(self, buf: torch.Tensor, depth_dtype: torch.dtype) -> dict:
        o, b, h, w = self.offsets, self.bucket, self.h, self.w

        def at(name, dtype, shape):
            start, nbytes = o[name]
            return buf[start : start + nbytes].view(dtype).view(shape)

        return {
            "params": at("params", torch.float64, (4,)),
            "meta": at("meta", torch.int32, (b, META_HEAD + 8 * self.image_size)),
            "depth": at("depth", depth_dtype, (h * w,)),
            "rgb": at("rgb", torch.uint8, (h, w, 3)),
            "masks": at("masks", torch.uint8, (b, h, w)),
        }


class GraphedInputBuilder:
    """`build_object_inputs_np` on one device: same arguments; returns (ObjectBatch on the device, kept,
    num_points, windows), the last three host int64 arrays, with the same pixels and bits for the same
    generator.

    rgb / depth / masks may be host numpy arrays (staged with the meta table in one pinned buffer laid out
    like the device one and sent up in three copies that overlap the staging: what the node passes) or
    tensors on any device (copied into the static buffers). Depth of any real dtype (float32 kept, others held
    as float64); masks bool, uint8, or anything else compared with 0.

    CUDA: graphs are captured lazily per (bucket, H, W, ...) into one shared memory pool (or eagerly with
    `capture`); the returned tensors are copies, valid after later calls. Calls are meant for one thread at
    a time (the static buffers are shared). CPU, or graphs=False: the same phase functions run eagerly."""

    def __init__(self, device, buckets=None, graphs: bool | None = None) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.graphs = (self.device.type == "cuda") if graphs is None else bool(graphs)
        if self.graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.buckets = tuple(sorted(default_buckets() if buckets is None else buckets))
        self._cuda = self.device.type == "cuda"
        self._slots: dict[tuple, _Slot] = {}
        self._pool = None
        self._lut = torch.from_numpy(NORM_LUT.reshape(-1).copy()).to(self.device)
        if self._cuda:
            self._copied = torch.cuda.Event()
            self._done: torch.cuda.Event | None = None
        self.fallbacks = 0  # calls with more objects than the largest bucket (run eagerly)

    def bucket(self, n: int) -> int | None:
        i = bisect.bisect_left(self.buckets, n)
        return self.buckets[i] if i < len(self.buckets) else None

    # ------------------------------------------------------------------ buffers and capture
    def _slot(self, bucket, h, w, depth_dtype, n_points, image_size, graphs: bool) -> _Slot:
        key = (bucket, h, w, depth_dtype, n_points, image_size)
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        item = torch.empty(0, dtype=depth_dtype).element_size()
        sizes = {
            "params": 4 * 8,
            "meta": bucket * (META_HEAD + 8 * image_size) * 4,
            "depth": h * w * item,
            "rgb": h * w * 3,
            "masks": bucket * h * w,  # last: a call copies only the rows it fills
        }
        offsets, total = {}, 0
        for name, nbytes in sizes.items():
            offsets[name] = (total, nbytes)
            total += _aligned(nbytes)
        # Zeros are a valid frame (sides 0, no valid pixel, in-range indices): the warm-up and capture run
        # on them.
        dev_buf = torch.zeros(total, dtype=torch.uint8, device=self.device)
        host_buf = torch.zeros(total, dtype=torch.uint8, pin_memory=True) if self._cuda else dev_buf
        post_dev = torch.zeros((bucket, n_points + 2), dtype=torch.int32, device=self.device)
        if self._cuda:
            post_host = torch.zeros((bucket, n_points + 2), dtype=torch.int32, pin_memory=True)
            counts_host = torch.zeros(bucket, dtype=torch.int64, pin_memory=True)
        else:
            post_host, counts_host = post_dev, None
        slot = _Slot(
            bucket=bucket,
            h=h,
            w=w,
            side_pad=window_side(h, w),
            n_points=n_points,
            image_size=image_size,
            dev_buf=dev_buf,
            host_buf=host_buf,
            offsets=offsets,
            post_dev=post_dev,
            post_host=post_host,
            counts_host=counts_host,
        )
        slot.dev = slot.views(dev_buf, depth_dtype)
        slot.host = {k: v.numpy() for k, v in slot.views(host_buf, depth_dtype).items()}
        if graphs:
            self._capture(slot)
        self._slots[key] = slot
        return slot

    def _run_a(self, slot: _Slot):
        d = slot.dev
        return phase_a(d["depth"], d["rgb"], d["masks"], d["meta"], self._lut, slot.side_pad, slot.image_size)

    def _run_b(self, slot: _Slot, out_a):
        d = slot.dev
        ranks, rgb_all = out_a[1], out_a[2]
        return phase_b(
            ranks,
            rgb_all,
            d["meta"],
            slot.post_dev,
            d["params"],
            d["depth"],
            slot.w,
            slot.side_pad,
            slot.n_points,
            slot.image_size,
        )

    def _capture(self, slot: _Slot) -> None:
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(2):  # allocator and kernel warm-up outside the capture
                self._run_b(slot, self._run_a(slot))
        main.wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # One pool for every graph: each call replays A then B of one slot and copies B's outputs before any
        # other replay, so memory one graph uses as scratch may hold another's outputs. The static inputs are
        # allocated outside the pool. Thread-local capture: other threads of the node may use CUDA meanwhile.
        slot.graph_a, slot.graph_b = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.no_grad():
            with torch.cuda.graph(slot.graph_a, pool=self._pool, capture_error_mode="thread_local"):
                slot.out_a = self._run_a(slot)
            with torch.cuda.graph(slot.graph_b, pool=self._pool, capture_error_mode="thread_local"):
                slot.out_b = self._run_b(slot, slot.out_a)

    def capture(
        self, sizes, h: int, w: int, depth_dtype=torch.float32, n_points=N_POINTS, image_size=IMAGE_SIZE
    ):
        """Prepare (and on CUDA capture) the buckets of these object counts for H x W frames ahead of time.
        ``depth_dtype``: the frames' depth dtype, torch or numpy. Counts above the largest bucket are skipped
        (they run eagerly)."""
        for n in sizes:
            b = self.bucket(n)
            if b is not None:
                self._slot(b, h, w, _depth_dtype(depth_dtype), n_points, image_size, self.graphs)

    # ------------------------------------------------------------------ one frame
    def __call__(
        self,
        rgb: np.ndarray | torch.Tensor,
        depth_m: np.ndarray | torch.Tensor,
        K: np.ndarray,
        masks: np.ndarray | torch.Tensor,
        boxes: np.ndarray,
        categories: np.ndarray,
        rng: np.random.Generator | np.random.RandomState | None = None,
        n_points: int = N_POINTS,
        min_points: int = MIN_POINTS,
        image_size: int = IMAGE_SIZE,
        object_seed: int | None = None,
    ):
        if object_seed is not None and rng is not None:
            raise ValueError(
                "pass either rng (one stream) or object_seed (one generator per object), not both"
            )
        if rng is None and object_seed is None:
            rng = np.random.default_rng(DEFAULT_SEED)
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        categories = np.asarray(categories, dtype=np.int64).reshape(-1)
        check_frame(rgb, depth_m, K, masks, boxes, categories)
        n = masks.shape[0]
        if n == 0:
            return _empty(self.device, n_points, image_size)
        bucket = self.bucket(n)
        if bucket is None:
            # More objects than the forward's largest batch: the same phases, eagerly (no graph capture per
            # count), on a multiple of the largest bucket so that only a few shapes occur.
            self.fallbacks += 1
            big = self.buckets[-1]
            bucket = -(-n // big) * big
        args = (rgb, depth_m, K, masks, boxes, categories, rng, n_points, min_points, image_size, bucket)
        if self._cuda:
            with torch.cuda.device(self.device):
                return self._frame(*args, object_seed)
        return self._frame(*args, object_seed)

    def _frame(
        self,
        rgb,
        depth_m,
        K,
        masks,
        boxes,
        categories,
        rng,
        n_points,
        min_points,
        image_size,
        bucket,
        object_seed=None,
    ):
        h, w = depth_m.shape
        n = masks.shape[0]
        host_in = isinstance(depth_m, np.ndarray)
        graphs = self.graphs and bucket in self.buckets
        slot = self._slot(bucket, h, w, _depth_dtype(depth_m.dtype), n_points, image_size, graphs)
        hv, dv = slot.host, slot.dev
        stream = torch.cuda.current_stream(self.device) if self._cuda else None
        if self._cuda and self._done is not None:
            # The previous call may have run on another stream: its phase B still reads the static buffers.
            stream.wait_event(self._done)

        # Host: windows (integer protocol arithmetic) and per-side resize tables into the meta rows; rows
        # past n get side 0, i.e. no valid pixel.
        wins = np.asarray([get_bbox(b, h, w) for b in boxes], np.int64).reshape(n, 4)
        meta = hv["meta"]
        meta[:n, 0] = wins[:, 0]
        meta[:n, 1] = wins[:, 2]
        meta[:n, 2] = wins[:, 1] - wins[:, 0]
        for j in range(n):
            meta[j, META_HEAD:] = resize_tables(int(meta[j, 2]), image_size).reshape(-1)
        meta[n:] = 0
        Kt = np.asarray(K, dtype=np.float64)
        hv["params"][:] = (Kt[0, 0], Kt[1, 1], Kt[0, 2], Kt[1, 2])

        off = slot.offsets
        if host_in:
            # Each part goes up as soon as it is staged, so the copies overlap the host's next memcpy.
            np.copyto(hv["depth"], np.asarray(depth_m).reshape(-1))
            self._up(slot, 0, off["rgb"][0])  # params + meta + depth
            np.copyto(hv["rgb"], rgb)
            self._up(slot, off["rgb"][0], off["masks"][0])
            np.copyto(hv["masks"][:n], masks if masks.dtype in (np.bool_, np.uint8) else masks != 0)
            self._up(slot, off["masks"][0], off["masks"][0] + n * h * w)  # only the rows this frame fills
        else:
            self._up(slot, 0, off["depth"][0])  # params + meta
            dv["depth"].copy_(depth_m.reshape(-1))
            dv["rgb"].copy_(rgb)
            if masks.dtype not in (torch.bool, torch.uint8):
                masks = masks != 0
            dv["masks"][:n].copy_(masks)

        if slot.graph_a is not None:
            slot.graph_a.replay()
            out_a = slot.out_a
        else:
            out_a = self._run_a(slot)
        if self._cuda:
            counts_host = slot.counts_host
            counts_host.copy_(out_a[0], non_blocking=True)
            self._copied.record(stream)
            self._copied.synchronize()
        else:
            counts_host = out_a[0]
        counts = counts_host.numpy()[:n].astype(np.int64)

        kept = np.flatnonzero(counts > min_points)
        m = kept.size
        if m == 0:
            if self._cuda:
                self._record_done(stream)
            return _empty(self.device, n_points, image_size)
        # Same generator calls, same order as the numpy path (kept objects in detection order), or the same
        # per-object generators (`object_rng` of the same window, count and category).
        post = slot.post_host.numpy()
        for i, j in enumerate(kept):
            g = (
                rng
                if object_seed is None
                else object_rng(object_seed, wins[j], int(counts[j]), categories[j])
            )
            post[i, :n_points] = sample_indices(int(counts[j]), n_points, g) + 1
        post[:m, n_points] = kept
        post[:m, n_points + 1] = categories[kept]
        # Padding rows repeat the first kept object (valid ranks, in-window pixels); they are cut off below.
        post[m:, :n_points] = 1
        post[m:, n_points] = kept[0]
        post[m:, n_points + 1] = 0
        if self._cuda:
            slot.post_dev.copy_(slot.post_host, non_blocking=True)

        if slot.graph_a is not None:
            slot.graph_b.replay()
            rgb_o, pts, choose, cat = slot.out_b
            # Copies: the static outputs are overwritten by the next replay.
            batch = ObjectBatch(
                rgb=rgb_o[:m].clone(),
                pts=pts[:m].clone(),
                choose=choose[:m].clone(),
                category=cat[:m].clone(),
            )
        else:
            rgb_o, pts, choose, cat = self._run_b(slot, out_a)
            batch = ObjectBatch(rgb=rgb_o[:m], pts=pts[:m], choose=choose[:m], category=cat[:m])
        if self._cuda:
            self._record_done(stream)
        return batch, kept.astype(np.int64), counts[kept], wins[kept]

    def _up(self, slot: _Slot, start: int, end: int) -> None:
        if self._cuda:
            slot.dev_buf[start:end].copy_(slot.host_buf[start:end], non_blocking=True)

    def _record_done(self, stream) -> None:
        if self._done is None:
            self._done = torch.cuda.Event()
        self._done.record(stream)


def _empty(dev, n_points: int, image_size: int):
    batch = ObjectBatch(
        rgb=torch.zeros((0, 3, image_size, image_size), device=dev),
        pts=torch.zeros((0, n_points, 3), device=dev),
        choose=torch.zeros((0, n_points), dtype=torch.int64, device=dev),
        category=torch.zeros((0,), dtype=torch.int64, device=dev),
    )
    return batch, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.int64)
