"""The front-door encoder's gated end and the NOCS head's bin expectation as one Triton kernel each (CUDA,
TF32); their torch references are in `ops/head_tails.py`.

- front-door encoder (nn/front_door.py): its end (the two branches' sum, LayerNorm, a sigmoid gate from
  two 1-wide products, the blend with the input features) is ~10 elementwise launches on (B, 96, 256);
  `front_door_gate_triton` does it per row block in one.
- NOCS head (nn/heads.py): the last 1x1 layer produces logits for every category, axis and bin
  (6 x 3 x 64 per keypoint), then the object's category is selected, each axis softmaxed over its 64
  bins and the expectation of the bin centres taken: ~10 launches after the product.
  `nocs_expectation_triton` computes only the selected category's logits (one program per keypoint block
  and axis, the category read from the device tensor), softmax and expectation in registers, and writes
  the (B, K, 3) result.

The inference builder uses them in the fast mode (TF32 products) on CUDA float32 tensors; the exact mode
keeps the published torch code.
"""

from __future__ import annotations

import torch

from cleanpose_model.ops.triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

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


def nocs_supported(weight: torch.Tensor, cat_num: int, bins: int, block_k: int = 32) -> bool:
    """Shapes `nocs_expectation_triton` takes: power-of-two bins >= 16, input width in whole blocks."""
    return (
        bins >= 16
        and not bins & (bins - 1)
        and weight.shape[1] % block_k == 0
        and weight.shape[0] == cat_num * 3 * bins
    )


def nocs_expectation_triton(
    h,
    weight,
    bias,
    category,
    bins: int,
    precision: str,
    block_m: int = 16,
    block_k: int = 32,
    num_warps: int = 4,
):
    """`ops.head_tails.nocs_expectation_torch` in one launch: only the selected category's logits are
    computed. h may be (B, K, C_in) or rows (B * K, C_in) with unit channel stride; weight and bias
    contiguous."""
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
        PRECISION=precision,
        num_warps=num_warps,
    )
    return out


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
    """`ops.head_tails.front_door_gate_torch` in one launch (the sum, LayerNorm, both 1-wide products,
    sigmoid and the blend per row): ~10 launches of the torch form."""
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
