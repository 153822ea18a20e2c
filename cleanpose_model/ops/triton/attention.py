"""Multi-head attention core (softmax(scale * Q K^T) V per head) as one Triton kernel.

The transformer blocks of the keypoint detector, front-door encoder and NOCS head attend with 96
queries over 80-1024 keys in 4 heads of 64 channels. Spelled out in torch the core is ~8 launches
(scale, layout copies for the per-head batched products, two products, softmax, a copy back); at
these sizes each costs more in launch latency than in arithmetic. The kernel reads Q, K and V in
place from the projections' (B, L, heads * head_dim) outputs (any row stride, so slices of one
fused QKV product are fine), keeps the scores on chip (online softmax over key blocks) and writes
(B, L, heads * head_dim) ready for the output projection.

The product precision is the caller's: ``"tf32"`` runs float32 products on tensor cores in TF32 (the
fast mode), ``"ieee"`` in full fp32 (the exact mode keeps fp32 products); half-precision inputs always
run on tensor cores. The online softmax normalises once at the end instead of before the second
product; the result differs from the torch form (`ops/attention.py`) by float rounding only.
"""

from __future__ import annotations

import torch

from cleanpose_model.ops.triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _attention_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        o_ptr,
        n_q,
        n_kv,
        heads,
        sq_b,
        sq_l,
        sk_b,
        sk_l,
        sv_b,
        sv_l,
        so_b,
        so_l,
        scale,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        bh = tl.program_id(0)
        b = bh // heads
        h = bh % heads
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        row_ok = rows < n_q
        q = tl.load(
            q_ptr + b * sq_b + rows[:, None] * sq_l + h * HEAD_DIM + dims[None, :],
            mask=row_ok[:, None],
            other=0.0,
        )
        if PRECISION == "ieee":
            q = q.to(tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        k_base = k_ptr + b * sk_b + h * HEAD_DIM
        v_base = v_ptr + b * sv_b + h * HEAD_DIM
        for start in range(0, n_kv, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < n_kv
            k = tl.load(k_base + cols[None, :] * sk_l + dims[:, None], mask=col_ok[None, :], other=0.0)
            if PRECISION == "ieee":
                k = k.to(tl.float32)
            s = tl.dot(q, k, input_precision=PRECISION) * scale
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + cols[:, None] * sv_l + dims[None, :], mask=col_ok[:, None], other=0.0)
            if PRECISION == "ieee":
                v = v.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(
            o_ptr + b * so_b + rows[:, None] * so_l + h * HEAD_DIM + dims[None, :],
            acc.to(o_ptr.dtype.element_ty),
            mask=row_ok[:, None],
        )


def attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, precision: str, block_m: int | None = None
) -> torch.Tensor:
    """`ops.attention.attention_math` in one launch (CUDA). q (B, L, C), k / v (B, S, C), each with unit
    stride on C; ``precision`` "ieee", "tf32" or "tf32x3" (float32 inputs; ops/triton/linear.py says what
    3xTF32 is: fp32 accuracy on tensor cores)."""
    bsz, lq, c = q.shape
    n_kv = k.shape[1]
    d = c // heads
    if c % heads or d & (d - 1) or d < 16:
        raise ValueError(f"head dim must be a power of two >= 16, got {c} channels in {heads} heads")
    if any(t.stride(2) != 1 for t in (q, k, v)):
        raise ValueError("q, k and v need unit stride on the channel dim")
    out = torch.empty(bsz, lq, c, device=q.device, dtype=q.dtype)
    if precision not in ("ieee", "tf32", "tf32x3"):
        raise ValueError(f"precision must be 'ieee', 'tf32' or 'tf32x3', got {precision!r}")
    if q.dtype != torch.float32:
        precision = "tf32"  # half inputs: the products are half-precision tensor-core products anyway
    # Full-fp32 products run on the CUDA cores: smaller row blocks give more programs at one object.
    bm = block_m or (16 if precision == "ieee" else 32)
    grid = (bsz * heads, triton.cdiv(lq, bm))
    _attention_kernel[grid](
        q,
        k,
        v,
        out,
        lq,
        n_kv,
        heads,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        float(d**-0.5),
        HEAD_DIM=d,
        BLOCK_M=bm,
        BLOCK_N=64,
        PRECISION=precision,
        num_warps=4,
    )
    return out
