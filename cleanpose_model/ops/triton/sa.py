"""PointNet++ feature work as Triton kernels (CUDA, TF32 products): one launch per set-abstraction
level, one or two per feature-propagation level; their torch references are in `ops/sa.py`.

Set abstraction (`set_abstraction`). Per radius the published module gathers each centre's neighbours
(relative coordinates and features) into a (B, 3 + C, M, S) tensor, runs three 1x1 layers over it and
max-pools over the S neighbours: ~8 launches per radius on temporaries up to (B, 259, 64, 32) floats,
then a concatenation. Here one program takes a tile of ROWS = centres x S neighbour rows of one cloud,
gathers them itself (the 3 coordinate columns of the first layer are 3 FMAs, the feature columns a
K-chunked product), keeps the layers' activations in registers (the two hidden layers are at most 128
wide), and max-pools the last layer's column blocks straight into its slice of the level output. Both
radii run in the same launch: programs [0, tiles0) take the first radius, the rest the second
(a scalar branch, so each radius has its own constexpr neighbour count).

Feature propagation (`feature_propagation`). Three-NN interpolation of the coarse level's features,
concatenation with the skip features and two layers. In "fused" mode one program takes ROWS points
through everything (the interpolated rows are formed per K chunk while the first product accumulates
and never stored). That reads the level's whole weight set per program; for the wide levels (512-wide,
655 K weights at the deepest one) one SM's share of L2 bandwidth makes that slower than two launches,
so "split" mode forms the first layer in column blocks over a 2-D grid (each program reads a column
slice of the weights) and hands the remaining layers to cuBLAS (bias + ReLU in its epilogue).

Layout: the kernels read features through strides and write point-major (B, M, C) buffers, returned
as (B, C, M) views, so the next level's neighbour gathers read contiguous rows. Products run in the
caller's ``precision``: "tf32" (the fast mode), "tf32x3" (the exact mode: float32 accuracy on tensor
cores, see ops/triton/linear.py) or full fp32 "ieee" on the CUDA cores (the tests' tight checks).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cleanpose_model.ops.triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from cleanpose_model.ops.triton.pointnet2 import _load_xyz

# Largest hidden width whose (ROWS, width) activations the SA kernel keeps in registers (whole-K
# products); wider levels take the torch path.
SA_MAX_HIDDEN = 128
# Largest first-layer width the fused FP kernel keeps in registers; wider levels run split.
FP_MAX_FUSED_HIDDEN = 256
# Fused FP mode when the level's weights (floats) are at most this many: each fused program reads all
# of them (~75-110 GB/s of L2 per SM on an H100, i.e. ~1.5 us per 40 K floats), split programs a slice.
FP_FUSED_MAX_WEIGHTS = 160 * 1024

if HAVE_TRITON:

    @triton.jit
    def _sa_tile(
        xyz_ptr,
        new_ptr,
        idx_ptr,
        feat_ptr,
        f_sb,
        f_sc,
        f_sn,
        w1x_ptr,
        w1f_ptr,
        b1_ptr,
        w2t_ptr,
        b2_ptr,
        w3t_ptr,
        b3_ptr,
        out_ptr,
        o_sb,
        o_sc,
        o_sn,
        b,
        tile,
        radius,
        n,
        m,
        c_in,
        c_out,
        NS: tl.constexpr,
        CENTRES: tl.constexpr,
        HAS_FEAT: tl.constexpr,
        KP: tl.constexpr,
        BLOCK_K: tl.constexpr,
        C1: tl.constexpr,
        C2: tl.constexpr,
        C3: tl.constexpr,
        BLOCK_C3: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """CENTRES centres x NS neighbours of cloud b through one radius' MLP, max-pooled per centre."""
        r = tl.arange(0, CENTRES * NS)  # row = local centre * NS + neighbour slot
        cen = tile * CENTRES + r // NS
        ok = cen < m
        nb = tl.load(idx_ptr + (b * m + cen) * NS + r % NS, mask=ok, other=0)
        px, py, pz = _load_xyz(xyz_ptr + b * n * 3, nb, ok)
        cx, cy, cz = _load_xyz(new_ptr + b * m * 3, cen, ok)
        c1 = tl.arange(0, C1)
        w1x = w1x_ptr + radius * 3 * C1
        acc = (
            (px - cx)[:, None] * tl.load(w1x + c1)[None, :]
            + (py - cy)[:, None] * tl.load(w1x + C1 + c1)[None, :]
            + (pz - cz)[:, None] * tl.load(w1x + 2 * C1 + c1)[None, :]
            + tl.load(b1_ptr + radius * C1 + c1)[None, :]
        )
        if HAS_FEAT:
            w1f = w1f_ptr + radius * KP * C1
            rows = feat_ptr + b * f_sb + nb[:, None] * f_sn
            for k0 in range(0, KP, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                f = tl.load(rows + kk[None, :] * f_sc, mask=ok[:, None] & (kk[None, :] < c_in), other=0.0)
                w = tl.load(w1f + kk[:, None] * C1 + c1[None, :])
                acc = tl.dot(f, w, acc, input_precision=PRECISION)
        h1 = tl.maximum(acc, 0.0)
        c2 = tl.arange(0, C2)
        w2 = tl.load(w2t_ptr + radius * C1 * C2 + c1[:, None] * C2 + c2[None, :])
        h2 = tl.dot(h1, w2, input_precision=PRECISION) + tl.load(b2_ptr + radius * C2 + c2)[None, :]
        h2 = tl.maximum(h2, 0.0)
        ci = tile * CENTRES + tl.arange(0, CENTRES)
        obase = out_ptr + b * o_sb + ci[:, None] * o_sn
        for c0 in range(0, C3, BLOCK_C3):
            cc = c0 + tl.arange(0, BLOCK_C3)
            w3 = tl.load(w3t_ptr + radius * C2 * C3 + c2[:, None] * C3 + cc[None, :])
            h3 = tl.dot(h2, w3, input_precision=PRECISION) + tl.load(b3_ptr + radius * C3 + cc)[None, :]
            # max then ReLU: the same value as ReLU then max (monotone), on CENTRES rows instead of all
            pooled = tl.maximum(tl.max(tl.reshape(h3, (CENTRES, NS, BLOCK_C3)), axis=1), 0.0)
            tl.store(
                obase + (radius * c_out + cc)[None, :] * o_sc,
                pooled,
                mask=(ci < m)[:, None] & (cc < c_out)[None, :],
            )

    @triton.jit
    def _sa_kernel(
        xyz_ptr,
        new_ptr,
        idx0_ptr,
        idx1_ptr,
        feat_ptr,
        f_sb,
        f_sc,
        f_sn,
        w1x_ptr,
        w1f_ptr,
        b1_ptr,
        w2t_ptr,
        b2_ptr,
        w3t_ptr,
        b3_ptr,
        out_ptr,
        o_sb,
        o_sc,
        o_sn,
        n,
        m,
        c_in,
        c_out,
        tiles0,
        tiles1,
        NS0: tl.constexpr,
        NS1: tl.constexpr,
        ROWS: tl.constexpr,
        HAS_FEAT: tl.constexpr,
        KP: tl.constexpr,
        BLOCK_K: tl.constexpr,
        C1: tl.constexpr,
        C2: tl.constexpr,
        C3: tl.constexpr,
        BLOCK_C3: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)
        per_cloud = tiles0 + tiles1
        b = pid // per_cloud
        t = pid % per_cloud
        if t < tiles0:
            _sa_tile(
                xyz_ptr, new_ptr, idx0_ptr, feat_ptr, f_sb, f_sc, f_sn,
                w1x_ptr, w1f_ptr, b1_ptr, w2t_ptr, b2_ptr, w3t_ptr, b3_ptr,
                out_ptr, o_sb, o_sc, o_sn, b, t, 0, n, m, c_in, c_out,
                NS0, ROWS // NS0, HAS_FEAT, KP, BLOCK_K, C1, C2, C3, BLOCK_C3, PRECISION,
            )  # fmt: skip
        else:
            _sa_tile(
                xyz_ptr, new_ptr, idx1_ptr, feat_ptr, f_sb, f_sc, f_sn,
                w1x_ptr, w1f_ptr, b1_ptr, w2t_ptr, b2_ptr, w3t_ptr, b3_ptr,
                out_ptr, o_sb, o_sc, o_sn, b, t - tiles0, 1, n, m, c_in, c_out,
                NS1, ROWS // NS1, HAS_FEAT, KP, BLOCK_K, C1, C2, C3, BLOCK_C3, PRECISION,
            )  # fmt: skip

    @triton.jit
    def _fp_kernel(
        known_ptr,
        k_sb,
        k_sc,
        k_sn,
        idx_ptr,
        wgt_ptr,
        skip_ptr,
        s_sb,
        s_sc,
        s_sn,
        w1t_ptr,
        b1_ptr,
        w2t_ptr,
        b2_ptr,
        out_ptr,
        o_sb,
        o_sc,
        o_sn,
        n,
        c_k,
        c_u,
        c_out,
        tiles,
        ROWS: tl.constexpr,
        BLOCK_K: tl.constexpr,
        KP_K: tl.constexpr,
        KP_U: tl.constexpr,
        C1: tl.constexpr,
        C1_STRIDE: tl.constexpr,
        C2: tl.constexpr,
        BLOCK_C2: tl.constexpr,
        TWO_LAYERS: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """ROWS points of cloud b: relu(W1 [interpolated known | skip] + b1), in column block
        program_id(1) of width C1; with TWO_LAYERS (one column block) also the second layer."""
        pid = tl.program_id(0)
        b = pid // tiles
        p = (pid % tiles) * ROWS + tl.arange(0, ROWS)
        ok = p < n
        nn_base = (b * n + p) * 3
        i0 = tl.load(idx_ptr + nn_base, mask=ok, other=0)
        i1 = tl.load(idx_ptr + nn_base + 1, mask=ok, other=0)
        i2 = tl.load(idx_ptr + nn_base + 2, mask=ok, other=0)
        g0 = tl.load(wgt_ptr + nn_base, mask=ok, other=0.0)[:, None]
        g1 = tl.load(wgt_ptr + nn_base + 1, mask=ok, other=0.0)[:, None]
        g2 = tl.load(wgt_ptr + nn_base + 2, mask=ok, other=0.0)[:, None]
        c1 = tl.program_id(1) * C1 + tl.arange(0, C1)
        acc = tl.zeros([ROWS, C1], dtype=tl.float32) + tl.load(b1_ptr + c1)[None, :]
        kb = known_ptr + b * k_sb
        r0 = kb + i0[:, None] * k_sn
        r1 = kb + i1[:, None] * k_sn
        r2 = kb + i2[:, None] * k_sn
        for k0 in range(0, KP_K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            km = ok[:, None] & (kk[None, :] < c_k)
            ko = kk[None, :] * k_sc
            # the published three_interpolate's order: f0 * w0 + f1 * w1 + f2 * w2
            f = tl.load(r0 + ko, mask=km, other=0.0) * g0
            f += tl.load(r1 + ko, mask=km, other=0.0) * g1
            f += tl.load(r2 + ko, mask=km, other=0.0) * g2
            w = tl.load(w1t_ptr + kk[:, None] * C1_STRIDE + c1[None, :])
            acc = tl.dot(f, w, acc, input_precision=PRECISION)
        srow = skip_ptr + b * s_sb + p[:, None] * s_sn
        for k0 in range(0, KP_U, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            f = tl.load(srow + kk[None, :] * s_sc, mask=ok[:, None] & (kk[None, :] < c_u), other=0.0)
            w = tl.load(w1t_ptr + (KP_K + kk)[:, None] * C1_STRIDE + c1[None, :])
            acc = tl.dot(f, w, acc, input_precision=PRECISION)
        h1 = tl.maximum(acc, 0.0)
        orow = out_ptr + b * o_sb + p[:, None] * o_sn
        if TWO_LAYERS:
            for c0 in range(0, C2, BLOCK_C2):
                cc = c0 + tl.arange(0, BLOCK_C2)
                w2 = tl.load(w2t_ptr + c1[:, None] * C2 + cc[None, :])
                h2 = tl.dot(h1, w2, input_precision=PRECISION) + tl.load(b2_ptr + cc)[None, :]
                tl.store(
                    orow + cc[None, :] * o_sc, tl.maximum(h2, 0.0), mask=ok[:, None] & (cc < c_out)[None, :]
                )
        else:
            tl.store(orow + c1[None, :] * o_sc, h1, mask=ok[:, None] & (c1 < c_out)[None, :])


def _pow2(n: int) -> int:
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def _pad_to(n: int, block: int) -> int:
    return -(-n // block) * block


# ----------------------------------------------------------------------------------------- weights
class SAWeights(NamedTuple):
    """One SA level's layers, stacked over radii, transposed to (in, out) and zero-padded to
    power-of-two widths (>= 16): padded channels are relu(0) = 0 and meet zero weight rows."""

    w1x: torch.Tensor  # (R, 3, C1): first layer, coordinate columns
    w1f: torch.Tensor  # (R, KP, C1): first layer, feature columns (KP = C_in padded to BLOCK_K)
    b1: torch.Tensor  # (R, C1)
    w2t: torch.Tensor  # (R, C1, C2)
    b2: torch.Tensor  # (R, C2)
    w3t: torch.Tensor  # (R, C2, C3)
    b3: torch.Tensor  # (R, C3)
    c_in: int  # feature channels (besides the 3 coordinates)
    c_out: int  # the unpadded output width per radius


def sa_block_k(c_in: int) -> int:
    return min(64, _pow2(c_in))


def pack_sa_weights(layers: list[list[tuple[torch.Tensor, torch.Tensor]]], c_in: int) -> SAWeights:
    """``layers[radius]`` = three (weight (out, in), bias) pairs, each followed by a ReLU; the first
    layer's input is [relative xyz (3), features (c_in)]. Every radius has the same widths."""
    if any(len(ls) != 3 for ls in layers) or len(layers) not in (1, 2):
        raise ValueError("the SA kernel takes one or two radii of three layers each")
    widths = [tuple(w.shape[0] for w, _ in ls) for ls in layers]
    if len(set(widths)) != 1:
        raise ValueError(f"every radius needs the same layer widths, got {widths}")
    c1, c2, c3 = (_pow2(c) for c in widths[0])
    kp = _pad_to(c_in, sa_block_k(c_in)) if c_in else 0

    def padded(t: torch.Tensor, *shape: int) -> torch.Tensor:
        out = torch.zeros(*shape, dtype=torch.float32, device=t.device)
        out[tuple(slice(0, s) for s in t.shape)] = t.detach().float()
        return out

    def stack(fn) -> torch.Tensor:
        return torch.stack([fn(ls) for ls in layers]).contiguous()

    return SAWeights(
        w1x=stack(lambda ls: padded(ls[0][0][:, :3].t(), 3, c1)),
        w1f=stack(lambda ls: padded(ls[0][0][:, 3:].t(), max(kp, 1), c1)),
        b1=stack(lambda ls: padded(ls[0][1], c1)),
        w2t=stack(lambda ls: padded(ls[1][0].t(), c1, c2)),
        b2=stack(lambda ls: padded(ls[1][1], c2)),
        w3t=stack(lambda ls: padded(ls[2][0].t(), c2, c3)),
        b3=stack(lambda ls: padded(ls[2][1], c3)),
        c_in=c_in,
        c_out=widths[0][2],
    )


class FPWeights(NamedTuple):
    """One FP level: first layer transposed to (in, out) with its known and skip rows each padded to a
    multiple of BLOCK_K (zero rows) and its width to a power of two; later layers as published."""

    w1t: torch.Tensor  # (KP_K + KP_U, C1)
    b1: torch.Tensor  # (C1,)
    w2t: torch.Tensor  # (C1, C2) padded second layer (fused mode), or an empty tensor
    b2: torch.Tensor  # (C2,)
    c_known: int
    c_skip: int
    c1: int  # unpadded first-layer width
    c2: int  # unpadded second-layer width (0 when there is one layer)


FP_BLOCK_K = 64


def pack_fp_weights(layers: list[tuple[torch.Tensor, torch.Tensor]], c_known: int, c_skip: int) -> FPWeights:
    """``layers`` = (weight (out, in), bias) pairs each followed by a ReLU; the first layer's input is
    [interpolated known features (c_known), skip features (c_skip)]."""
    w1, b1 = (t.detach().float() for t in layers[0])
    if w1.shape[1] != c_known + c_skip:
        raise ValueError(f"first layer takes {w1.shape[1]} channels, not {c_known} + {c_skip}")
    c1 = _pow2(w1.shape[0])
    kk, ku = _pad_to(c_known, FP_BLOCK_K), _pad_to(c_skip, FP_BLOCK_K)
    w1t = torch.zeros(kk + ku, c1, dtype=torch.float32, device=w1.device)
    w1t[:c_known, : w1.shape[0]] = w1[:, :c_known].t()
    w1t[kk : kk + c_skip, : w1.shape[0]] = w1[:, c_known:].t()
    b1p = torch.zeros(c1, dtype=torch.float32, device=w1.device)
    b1p[: w1.shape[0]] = b1
    if len(layers) > 1:
        w2, b2 = (t.detach().float() for t in layers[1])
        c2 = _pow2(w2.shape[0])
        w2t = torch.zeros(c1, c2, dtype=torch.float32, device=w1.device)
        w2t[: w2.shape[1], : w2.shape[0]] = w2.t()
        b2p = torch.zeros(c2, dtype=torch.float32, device=w1.device)
        b2p[: w2.shape[0]] = b2
        c2_real = w2.shape[0]
    else:
        w2t = b2p = torch.zeros(0, dtype=torch.float32, device=w1.device)
        c2_real = 0
    return FPWeights(w1t.contiguous(), b1p, w2t.contiguous(), b2p, c_known, c_skip, w1.shape[0], c2_real)


def fp_default_mode(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> str:
    """ "fused" for two layers of modest width and weight count, "split" otherwise (see module doc)."""
    if len(layers) != 2 or layers[0][0].shape[0] > FP_MAX_FUSED_HIDDEN:
        return "split"
    n_weights = sum(w.numel() for w, _ in layers)
    return "fused" if n_weights <= FP_FUSED_MAX_WEIGHTS else "split"


# ----------------------------------------------------------------------------------------- launchers
class Launch(NamedTuple):
    rows: int  # rows (neighbour rows for SA, points for FP) per program, a power of two >= 16
    num_warps: int
    num_stages: int  # software pipelining depth of the K loops (1: none)


# Default launch shapes. Chosen from ptxas' resource counts for sm_90 at the published widths (no spills,
# <= ~100 KB shared memory, <= ~210 registers), not from timings: the former bench/sa_kernels.py timed the
# alternatives. Spilling matters beyond speed: the driver sizes a context's local memory for the largest
# stack frame any launched kernel needs, for good (see ball_query2_triton). Pipelining the K loops
# (num_stages > 1) multiplies their shared-memory buffers: SA3 at 64 rows needs 245 KB with 3 stages.
def sa_default_launch(w: SAWeights) -> Launch:
    hidden = max(w.w1x.shape[2], w.w2t.shape[2])
    if hidden <= 32:
        return Launch(128, 8 if hidden > 16 else 4, 1)  # SA0 74 regs, SA1 74 regs / 41 KB
    if hidden <= 64:
        return Launch(64, 4, 1)  # SA2: 188 regs, 33 KB
    # SA3: 164 regs, 82 KB (64 rows: 206 regs with 8 warps); 2 stages measured 10% faster on an H100
    return Launch(32, 4, 2)


def set_abstraction(
    xyz: torch.Tensor,
    new_xyz: torch.Tensor,
    groups: list[torch.Tensor],
    features: torch.Tensor | None,
    w: SAWeights,
    precision: str,
    launch: Launch | None = None,
) -> torch.Tensor:
    """`ops.sa.set_abstraction_torch` in one launch: float32 xyz (B, N, 3) and new_xyz (B, M, 3) contiguous,
    groups[r] int64 (B, M, S_r) contiguous with S_r a power of two dividing ``rows``, features
    (B, C, N) any strides or None -> (B, R * c_out, M) as a view of a point-major (B, M, R * c_out)
    buffer. ``launch``: the launch shape (default `sa_default_launch`; rows a multiple of every S_r)."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed; use ops.sa.set_abstraction_torch")
    bsz, n, _ = xyz.shape
    m = new_xyz.shape[1]
    n_radii = w.w1x.shape[0]
    if len(groups) != n_radii:
        raise ValueError(f"{len(groups)} neighbour sets for {n_radii} radii")
    launch = launch or sa_default_launch(w)
    rows = max(launch.rows, *(g.shape[2] for g in groups))
    ns = [g.shape[2] for g in groups]
    for s in ns:
        if s & (s - 1) or rows % s:
            raise ValueError(f"nsample {s} must be a power of two dividing rows={rows}")
    c1, c2, c3 = w.w1x.shape[2], w.w2t.shape[2], w.w3t.shape[2]
    if max(c1, c2) > SA_MAX_HIDDEN:
        raise ValueError(f"hidden widths above {SA_MAX_HIDDEN} are not supported, got {c1}, {c2}")
    has_feat = features is not None
    c_in = features.shape[1] if has_feat else 0
    if c_in != w.c_in:
        raise ValueError(f"weights packed for {w.c_in} feature channels, got {c_in}")
    kp = w.w1f.shape[1] if has_feat else 0
    xyz, new_xyz = xyz.contiguous(), new_xyz.contiguous()
    groups = [g.contiguous() for g in groups]
    out = torch.empty(bsz, m, n_radii * w.c_out, device=xyz.device, dtype=torch.float32)
    tiles = [-(-m // (rows // s)) for s in ns]
    feat = features if has_feat else xyz
    fs = features.stride() if has_feat else (0, 0, 0)
    block_c3 = min(c3, 64)
    _sa_kernel[(bsz * sum(tiles),)](
        xyz,
        new_xyz,
        groups[0],
        groups[-1],
        feat,
        fs[0],
        fs[1],
        fs[2],
        w.w1x,
        w.w1f,
        w.b1,
        w.w2t,
        w.b2,
        w.w3t,
        w.b3,
        out,
        out.stride(0),
        out.stride(2),
        out.stride(1),
        n,
        m,
        c_in,
        w.c_out,
        tiles[0],
        tiles[1] if n_radii == 2 else 0,
        NS0=ns[0],
        NS1=ns[-1],
        ROWS=rows,
        HAS_FEAT=has_feat,
        KP=kp,
        BLOCK_K=sa_block_k(c_in) if has_feat else 16,
        C1=c1,
        C2=c2,
        C3=c3,
        BLOCK_C3=block_c3,
        PRECISION=precision,
        num_warps=launch.num_warps,
        num_stages=launch.num_stages,
    )
    return out.transpose(1, 2)


def fp_default_launch(w: FPWeights, mode: str) -> Launch:
    # Launch shapes from the former bench/sa_kernels.py's sweep on an H100 (1 and 6 objects).
    if mode == "split":
        return Launch(16, 4, 2)  # FP2/FP3: 0.018-0.028 ms vs 0.022-0.030 at 32 rows / 8 warps
    if w.w1t.shape[1] <= 128:
        return Launch(16, 4, 2)  # FP0: 0.012-0.018 ms vs 0.027-0.028 at 64 rows / 8 warps
    return Launch(16, 8, 1)  # FP1: 173 regs, 82 KB (32 rows: 255 regs)


def feature_propagation(
    known_feats: torch.Tensor,
    idx: torch.Tensor,
    weight: torch.Tensor,
    skip: torch.Tensor | None,
    w: FPWeights,
    precision: str,
    later_layers: list[tuple[torch.Tensor, torch.Tensor]] = (),
    mode: str = "fused",
    channels_last: bool = True,
    launch: Launch | None = None,
    block_n: int = 64,
) -> torch.Tensor:
    """`ops.sa.feature_propagation_torch`: known_feats (B, C_k, M) and skip (B, C_u, N) any strides, idx int64
    / weight float32 (B, N, 3) contiguous -> (B, C_out, N).

    mode "fused": both layers in one launch (``w`` packed with two layers). "split": the first layer in
    one launch over (row tiles, ``block_n``-column blocks), then each of ``later_layers`` (published
    (out, in) weights) as one cuBLAS product with bias and ReLU. ``channels_last``: the result is a view
    of a point-major (B, N, C_out) buffer (else a contiguous (B, C_out, N) one, in fused mode).
    ``launch``: the launch shape (default `fp_default_launch`)."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed; use ops.sa.feature_propagation_torch")
    bsz, n, _ = idx.shape
    c1p = w.w1t.shape[1]
    two = mode == "fused"
    if two and (w.c2 == 0 or c1p > FP_MAX_FUSED_HIDDEN):
        raise ValueError("fused mode needs two layers and a first layer of at most 256 channels")
    launch = launch or fp_default_launch(w, mode)
    rows = launch.rows
    c_out = w.c2 if two else w.c1
    if two and not channels_last:
        out = torch.empty(bsz, c_out, n, device=idx.device, dtype=torch.float32)
        o_sb, o_sc, o_sn = out.stride()
    else:
        out = torch.empty(bsz, n, c_out, device=idx.device, dtype=torch.float32)
        o_sb, o_sn, o_sc = out.stride()
    has_skip = skip is not None
    if has_skip != (w.c_skip > 0) or (has_skip and skip.shape[1] != w.c_skip):
        raise ValueError(f"weights packed for {w.c_skip} skip channels")
    if known_feats.shape[1] != w.c_known:
        raise ValueError(f"weights packed for {w.c_known} known channels, got {known_feats.shape[1]}")
    idx, weight = idx.contiguous(), weight.contiguous()
    ss = skip.stride() if has_skip else (0, 0, 0)
    tiles = -(-n // rows)
    block_c1 = c1p if two else min(block_n, c1p)
    block_c2 = min(64, w.w2t.shape[1]) if two else 16
    _fp_kernel[(bsz * tiles, 1 if two else c1p // block_c1)](
        known_feats,
        *known_feats.stride(),
        idx,
        weight,
        skip if has_skip else known_feats,
        *ss,
        w.w1t,
        w.b1,
        w.w2t if two else w.b1,
        w.b2 if two else w.b1,
        out,
        o_sb,
        o_sc,
        o_sn,
        n,
        w.c_known,
        w.c_skip if has_skip else 0,
        c_out,
        tiles,
        ROWS=rows,
        BLOCK_K=FP_BLOCK_K,
        KP_K=_pad_to(w.c_known, FP_BLOCK_K),
        KP_U=_pad_to(w.c_skip, FP_BLOCK_K),
        C1=block_c1,
        C1_STRIDE=c1p,
        C2=w.w2t.shape[1] if two else 16,
        BLOCK_C2=block_c2,
        TWO_LAYERS=two,
        PRECISION=precision,
        num_warps=launch.num_warps,
        num_stages=launch.num_stages,
    )
    if two:
        return out if not channels_last else out.transpose(1, 2)
    flat = out.view(bsz * n, c_out)
    for lw, lb in later_layers:
        flat = torch._addmm_activation(lb, flat, lw.t())
    return flat.view(bsz, n, -1).transpose(1, 2)
