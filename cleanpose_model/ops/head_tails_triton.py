"""The keypoint detector's heatmap tail and the NOCS head's bin expectation as one Triton kernel each
(CUDA, TF32), with their torch references.

- IAKD (nn/keypoints.py): after its transformer the 96 keypoint queries are matched against every point
  feature: cosine similarity over 256 channels, a temperature softmax over the 1024 points (the heatmap),
  and the heatmap-weighted means of the points and of their features. In torch that is ~10 launches
  (product, two norms, their product, two divisions, softmax, two products). `keypoint_heatmap` runs one
  program per block of keypoints over its object's points in blocks, attention-style: the scores and the
  online softmax stay on chip, the weighted feature and point sums accumulate in registers, and the raw
  scores are parked in the heatmap output and normalised by a second sweep over the program's own rows.
- front-door encoder (nn/front_door.py): its end (the two branches' sum, LayerNorm, a sigmoid gate from
  two 1-wide products, the blend with the input features) is ~10 elementwise launches on (B, 96, 256);
  `front_door_gate` does it per row block in one.
- NOCS head (nn/heads.py): the last 1x1 layer produces logits for every category, axis and bin
  (6 x 3 x 64 per keypoint), then the object's category is selected, each axis softmaxed over its 64
  bins and the expectation of the bin centres taken: ~10 launches after the product. `nocs_expectation`
  computes only the selected category's logits (one program per keypoint block and axis, the category
  read from the device tensor), softmax and expectation in registers, and writes the (B, K, 3) result.

Used where the products may run in TF32 (the fast mode; the torch forms there use TF32 products too), on
CUDA float32 tensors; the exact mode keeps the published torch code.
"""

from __future__ import annotations

import torch

from cleanpose_model.ops.pointnet2_triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

if HAVE_TRITON:

    @triton.jit
    def _keypoint_heatmap_kernel(
        q_ptr,
        f_ptr,
        p_ptr,
        heat_ptr,
        kpt_ptr,
        kfeat_ptr,
        n_kpt,
        n_pts,
        sq_b,
        sq_k,
        sf_b,
        sf_c,
        sf_n,
        sp_b,
        sp_n,
        temperature,
        C: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)
        blocks = tl.cdiv(n_kpt, BLOCK_M)
        b = pid // blocks
        rows = (pid % blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_kpt
        ch = tl.arange(0, C)
        q = tl.load(q_ptr + b * sq_b + rows[:, None] * sq_k + ch[None, :], mask=row_ok[:, None], other=0.0)
        q_norm = tl.sqrt(tl.sum(q * q, 1))
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, C], tl.float32)
        ax = tl.zeros([BLOCK_M], tl.float32)
        ay = tl.zeros([BLOCK_M], tl.float32)
        az = tl.zeros([BLOCK_M], tl.float32)
        heat_rows = heat_ptr + (b * n_kpt + rows[:, None]) * n_pts
        for n0 in range(0, n_pts, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < n_pts
            f = tl.load(
                f_ptr + b * sf_b + ch[:, None] * sf_c + cols[None, :] * sf_n, mask=col_ok[None, :], other=0.0
            )  # (C, BLOCK_N)
            sim = tl.dot(q, f, input_precision=PRECISION)
            f_norm = tl.sqrt(tl.sum(f * f, 0))
            # the published order: sim / (|q| |f| + 1e-7) / temperature
            s = sim / (q_norm[:, None] * f_norm[None, :] + 1e-7) / temperature
            s = tl.where(col_ok[None, :], s, float("-inf"))
            tl.store(heat_rows + cols[None, :], s, mask=row_ok[:, None] & col_ok[None, :])
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p, tl.trans(f), input_precision=PRECISION)
            pts = p_ptr + b * sp_b + cols * sp_n
            px = tl.load(pts, mask=col_ok, other=0.0)
            py = tl.load(pts + 1, mask=col_ok, other=0.0)
            pz = tl.load(pts + 2, mask=col_ok, other=0.0)
            ax = ax * alpha + tl.sum(p * px[None, :], 1)
            ay = ay * alpha + tl.sum(p * py[None, :], 1)
            az = az * alpha + tl.sum(p * pz[None, :], 1)
            m_i = m_new
        inv_l = 1.0 / l_i
        out = (b * n_kpt + rows) * C
        tl.store(kfeat_ptr + out[:, None] + ch[None, :], acc * inv_l[:, None], mask=row_ok[:, None])
        kp = kpt_ptr + (b * n_kpt + rows) * 3
        tl.store(kp, ax * inv_l, mask=row_ok)
        tl.store(kp + 1, ay * inv_l, mask=row_ok)
        tl.store(kp + 2, az * inv_l, mask=row_ok)
        # The heatmap rows hold this program's raw scores: normalise them with the final max and sum.
        tl.debug_barrier()
        for n0 in range(0, n_pts, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            ok = row_ok[:, None] & (cols < n_pts)[None, :]
            s = tl.load(heat_rows + cols[None, :], mask=ok, other=float("-inf"))
            tl.store(heat_rows + cols[None, :], tl.exp(s - m_i[:, None]) * inv_l[:, None], mask=ok)

    @triton.jit
    def _nocs_expectation_kernel(
        h_ptr,
        w_ptr,
        b_ptr,
        cat_ptr,
        out_ptr,
        n_kpt,
        k_in,
        sh,
        BINS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)
        axis = tl.program_id(1)
        blocks = tl.cdiv(n_kpt, BLOCK_M)
        b = pid // blocks
        rows = (pid % blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_kpt
        # logit channel = category * 3 * BINS + axis * BINS + bin (the published view order)
        first = tl.load(cat_ptr + b).to(tl.int32) * (3 * BINS) + axis * BINS
        bins = tl.arange(0, BINS)
        kk = tl.arange(0, BLOCK_K)
        h_rows = h_ptr + (b * n_kpt + rows[:, None]) * sh
        acc = tl.zeros([BLOCK_M, BINS], tl.float32)
        for k0 in range(0, k_in, BLOCK_K):
            a = tl.load(h_rows + (k0 + kk)[None, :], mask=row_ok[:, None], other=0.0)
            w = tl.load(w_ptr + (first + bins)[None, :] * k_in + (k0 + kk)[:, None])  # (BLOCK_K, BINS)
            acc += tl.dot(a, w, input_precision=PRECISION)
        logits = acc + tl.load(b_ptr + first + bins)[None, :]
        p = tl.exp(logits - tl.max(logits, 1)[:, None])
        centre = -0.5 + (bins.to(tl.float32) + 0.5) / BINS
        nocs = tl.sum(p * centre[None, :], 1) / tl.sum(p, 1)
        tl.store(out_ptr + (b * n_kpt + rows) * 3 + axis, nocs, mask=row_ok)

    @triton.jit
    def _front_door_gate_kernel(
        s_ptr,
        x_ptr,
        l_ptr,
        g_ptr,
        beta_ptr,
        wa_ptr,
        ba_ptr,
        wo_ptr,
        bo_ptr,
        out_ptr,
        n_rows,
        ss,
        sx,
        sl,
        eps,
        C: tl.constexpr,
        BLOCK_M: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        ok = (rows < n_rows)[:, None]
        ch = tl.arange(0, C)[None, :]
        y = tl.load(s_ptr + rows[:, None] * ss + ch, mask=ok, other=0.0)
        y += tl.load(x_ptr + rows[:, None] * sx + ch, mask=ok, other=0.0)
        local = tl.load(l_ptr + rows[:, None] * sl + ch, mask=ok, other=0.0)
        mean = tl.sum(y, 1) / C
        d = y - mean[:, None]
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, 1) / C + eps)
        fused = d * rstd[:, None] * tl.load(g_ptr + ch) + tl.load(beta_ptr + ch)
        gate = tl.sum(fused * tl.load(wa_ptr + ch), 1) + tl.load(ba_ptr)
        gate += tl.sum(local * tl.load(wo_ptr + ch), 1) + tl.load(bo_ptr)
        w = (1.0 / (1.0 + tl.exp(-gate)))[:, None]
        tl.store(out_ptr + rows[:, None] * C + ch, w * fused + (1.0 - w) * local, mask=ok)


def _precision() -> str:
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def use_kernel(*tensors: torch.Tensor) -> bool:
    """The fast mode on CUDA: Triton, float32 tensors, TF32 products allowed, no autocast."""
    return (
        HAVE_TRITON
        and torch.backends.cuda.matmul.allow_tf32
        and not torch.is_autocast_enabled("cuda")
        and all(t.is_cuda and t.dtype == torch.float32 for t in tensors)
    )


def heatmap_supported(feats: torch.Tensor, pts: torch.Tensor) -> bool:
    """Shapes `keypoint_heatmap_triton` takes: a power-of-two channel count >= 16 (256: the whole query row
    block and one block of points stay in registers) and points with unit coordinate stride."""
    c = feats.shape[1]
    return 16 <= c <= 512 and not c & (c - 1) and pts.stride(-1) == 1


def nocs_supported(weight: torch.Tensor, cat_num: int, bins: int, block_k: int = 32) -> bool:
    """Shapes `nocs_expectation_triton` takes: power-of-two bins >= 16, input width in whole blocks."""
    return (
        bins >= 16
        and not bins & (bins - 1)
        and weight.shape[1] % block_k == 0
        and weight.shape[0] == cat_num * 3 * bins
    )


def keypoint_heatmap_torch(query, feats, pts, temperature: float):
    """The published IAKD tail (nn/keypoints.py): query (B, K, C), feats (B, C, N), pts (B, N, 3) ->
    heatmap (B, K, N), keypoints (B, K, 3), keypoint features (B, K, C)."""
    sim = torch.bmm(query, feats)
    denom = query.norm(dim=2, keepdim=True) * feats.norm(dim=1, keepdim=True) + 1e-7
    heatmap = torch.softmax(sim / denom / temperature, dim=2)
    return heatmap, torch.bmm(heatmap, pts), torch.bmm(heatmap, feats.transpose(1, 2))


def keypoint_heatmap_triton(
    query, feats, pts, temperature: float, block_m: int = 16, block_n: int = 32, num_warps: int = 4
):
    """`keypoint_heatmap_torch` in one launch. feats and pts with any strides; query with unit channel
    stride."""
    bsz, n_kpt, c = query.shape
    n_pts = feats.shape[2]
    if not heatmap_supported(feats, pts) or feats.shape[:2] != (bsz, c) or pts.shape != (bsz, n_pts, 3):
        raise ValueError(f"unsupported shapes: query {tuple(query.shape)}, feats {tuple(feats.shape)}")
    if query.stride(2) != 1 or pts.stride(2) != 1:
        raise ValueError("query and pts need unit stride on their last dim")
    dev = query.device
    heat = torch.empty(bsz, n_kpt, n_pts, device=dev, dtype=torch.float32)
    kpt = torch.empty(bsz, n_kpt, 3, device=dev, dtype=torch.float32)
    kfeat = torch.empty(bsz, n_kpt, c, device=dev, dtype=torch.float32)
    _keypoint_heatmap_kernel[(bsz * triton.cdiv(n_kpt, block_m),)](
        query,
        feats,
        pts,
        heat,
        kpt,
        kfeat,
        n_kpt,
        n_pts,
        query.stride(0),
        query.stride(1),
        feats.stride(0),
        feats.stride(1),
        feats.stride(2),
        pts.stride(0),
        pts.stride(1),
        float(temperature),
        C=c,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PRECISION=_precision(),
        num_warps=num_warps,
    )
    return heat, kpt, kfeat


def nocs_expectation_torch(h, weight, bias, category, cat_num: int, bins: int):
    """The published NOCS tail (nn/heads.py) on channels-last rows: h (B, K, C_in) the last hidden layer,
    weight (cat_num * 3 * bins, C_in) the last 1x1 layer -> (B, K, 3)."""
    bsz, n_kpt, _ = h.shape
    logits = torch.nn.functional.linear(h, weight, bias).transpose(1, 2)
    logits = logits.reshape(bsz, cat_num, 3, bins, n_kpt)
    logits = logits[torch.arange(bsz, device=h.device), category]
    prob = torch.softmax(logits, dim=2).permute(0, 3, 1, 2)
    i = torch.arange(bins, device=h.device, dtype=h.dtype)
    return torch.matmul(prob, (-0.5 + (i + 0.5) / bins).unsqueeze(1)).squeeze(-1)


def nocs_expectation_triton(
    h, weight, bias, category, bins: int, block_m: int = 16, block_k: int = 32, num_warps: int = 4
):
    """`nocs_expectation_torch` in one launch: only the selected category's logits are computed. h may be
    (B, K, C_in) or rows (B * K, C_in) with unit channel stride; weight and bias contiguous."""
    bsz = category.shape[0]
    k_in = weight.shape[1]
    rows = h.reshape(-1, k_in)
    n_kpt = rows.shape[0] // bsz
    if not nocs_supported(weight, weight.shape[0] // (3 * bins), bins, block_k):
        raise ValueError(f"unsupported shapes: weight {tuple(weight.shape)} with {bins} bins")
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    out = torch.empty(bsz, n_kpt, 3, device=h.device, dtype=torch.float32)
    _nocs_expectation_kernel[(bsz * triton.cdiv(n_kpt, block_m), 3)](
        rows,
        weight,
        bias,
        category,
        out,
        n_kpt,
        k_in,
        rows.stride(0),
        BINS=bins,
        BLOCK_M=block_m,
        BLOCK_K=block_k,
        PRECISION=_precision(),
        num_warps=num_warps,
    )
    return out


def front_door_gate_torch(s, x, local_feat, ln, aug_linear, ori_linear):
    """The published end of the front-door encoder (nn/front_door.py): the two branches' sum normalised,
    and a learned per-keypoint gate between it and the input features."""
    fused = ln(s + x)
    w = torch.sigmoid(aug_linear(fused) + ori_linear(local_feat))
    return w * fused + (1.0 - w) * local_feat


def gate_supported(*rows: torch.Tensor) -> bool:
    """(B, K, C) tensors with unit channel stride, uniform row strides and a power-of-two C >= 16."""
    c = rows[0].shape[-1]
    return (
        16 <= c <= 1024
        and not c & (c - 1)
        and all(
            t.shape == rows[0].shape and t.stride(-1) == 1 and t.stride(0) == t.shape[1] * t.stride(1)
            for t in rows
        )
    )


def front_door_gate_triton(s, x, local_feat, ln, aug_linear, ori_linear, block_m: int = 16):
    """`front_door_gate_torch` in one launch (the sum, LayerNorm, both 1-wide products, sigmoid and the
    blend per row): ~10 launches of the torch form."""
    if not gate_supported(s, x, local_feat):
        raise ValueError(f"unsupported shapes or layouts: {tuple(s.shape)}, {tuple(x.shape)}")
    bsz, n_kpt, c = s.shape
    m = bsz * n_kpt
    out = torch.empty(bsz, n_kpt, c, device=s.device, dtype=torch.float32)
    _front_door_gate_kernel[(triton.cdiv(m, block_m),)](
        s,
        x,
        local_feat,
        ln.weight,
        ln.bias,
        aug_linear.weight,
        aug_linear.bias,
        ori_linear.weight,
        ori_linear.bias,
        out,
        m,
        s.stride(1),
        x.stride(1),
        local_feat.stride(1),
        float(ln.eps),
        C=c,
        BLOCK_M=block_m,
        num_warps=4,
    )
    return out
