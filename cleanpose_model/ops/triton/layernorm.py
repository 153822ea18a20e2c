"""The residual update and the next LayerNorm of a pre-norm transformer in one kernel.

In DINOv2's blocks every sub-layer ends with ``res = res + gamma * y`` (y the product's half-precision
output, gamma the LayerScale, the residual stream in fp32) and the next sub-layer starts with
``LayerNorm(res)`` cast to half precision for its product. Spelled out in torch that is four or five
launches (the multiply, the add, the norm, the cast); at one to six objects each costs more in launch
latency than in memory traffic. `residual_layer_norm` does it in one launch: it reads the residual and y
once, writes the updated residual in place and the normalised rows in the products' dtype.
`embed_layer_norm` starts the stream the same way: patch-embedding rows plus the class token and the
positional table, and block 0's first norm.

Arithmetic follows what autocast does with the published modules: the LayerScale product and the add in
fp32 on the upcast y, the norm in fp32 (mean, then the biased variance of the centred rows) and only its
output rounded. On the GPU the compiler may contract the multiply-add (one rounding fewer); the torch
forms (`ops/layernorm.py`) are the reference and the CPU path.

One program handles BLOCK_M whole rows (the 384 channels padded to a power of two and masked), so the
row statistics never leave registers.
"""

from __future__ import annotations

import torch

from cleanpose_model.ops.triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _norm_rows(x, col_ok, cols, w_ptr, b_ptr, n, eps):
        """LayerNorm of the rows of x (BLOCK_M, BLOCK_N), whose masked columns hold zeros."""
        mean = tl.sum(x, 1) / n
        xc = tl.where(col_ok[None, :], x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, 1) / n
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0)
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0)
        return xc * rstd[:, None] * w[None, :] + b[None, :]

    @triton.jit
    def _residual_ln_kernel(
        res_ptr,
        y_ptr,
        gamma_ptr,
        w_ptr,
        b_ptr,
        out_ptr,
        m,
        n,
        s_res,
        s_y,
        s_out,
        eps,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        NORM: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < n
        mask = (rows < m)[:, None] & col_ok[None, :]
        r_ptrs = res_ptr + rows[:, None] * s_res + cols[None, :]
        r = tl.load(r_ptrs, mask=mask, other=0.0)
        y = tl.load(y_ptr + rows[:, None] * s_y + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(gamma_ptr + cols, mask=col_ok, other=0.0)
        r = r + g[None, :] * y
        tl.store(r_ptrs, r, mask=mask)
        if NORM:
            out = _norm_rows(r, col_ok, cols, w_ptr, b_ptr, n, eps)
            tl.store(
                out_ptr + rows[:, None] * s_out + cols[None, :],
                out.to(out_ptr.dtype.element_ty),
                mask=mask,
            )

    @triton.jit
    def _embed_ln_kernel(
        patch_ptr,
        base_ptr,
        res_ptr,
        w_ptr,
        b_ptr,
        out_ptr,
        m,
        n_tok,
        n,
        eps,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < n
        row_ok = rows < m
        mask = row_ok[:, None] & col_ok[None, :]
        tok = rows % n_tok
        img = rows // n_tok
        x = tl.load(base_ptr + tok[:, None] * n + cols[None, :], mask=mask, other=0.0)
        # token 0 is the class token: its row of the table already holds class token + position
        patch_row = img * (n_tok - 1) + tok - 1
        p_mask = mask & (tok > 0)[:, None]
        p = tl.load(patch_ptr + patch_row[:, None] * n + cols[None, :], mask=p_mask, other=0.0)
        x = x + p.to(tl.float32)
        tl.store(res_ptr + rows[:, None] * n + cols[None, :], x, mask=mask)
        out = _norm_rows(x, col_ok, cols, w_ptr, b_ptr, n, eps)
        tl.store(out_ptr + rows[:, None] * n + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_shape(m: int, n: int) -> tuple[int, int, int]:
    """BLOCK_M, BLOCK_N, warps: 2 rows per program up to two objects' tokens (224 px: 257 rows each), then
    more, so one object spreads over ~130 programs (about one per SM). At most 8 rows: 16 need 128 registers
    per thread on sm_90 (ptxas) and use the stack."""
    block_m = min(8, max(2, triton.next_power_of_2(-(-m // 264))))
    block_n = triton.next_power_of_2(n)
    return block_m, block_n, 8 if block_m * block_n >= 4096 else 4


def residual_layer_norm_triton(
    res: torch.Tensor,
    y: torch.Tensor,
    gamma: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype,
) -> torch.Tensor | None:
    """`ops.layernorm.residual_layer_norm_math` in one launch.

    res (M, C) fp32 and y (M, C) with unit channel stride; gamma, weight, bias (C,) fp32."""
    if res.dtype != torch.float32 or res.dim() != 2 or y.shape != res.shape:
        raise ValueError(f"res must be (M, C) float32 and y the same shape, got {res.shape} and {y.shape}")
    if res.stride(1) != 1 or y.stride(1) != 1:
        raise ValueError("res and y need unit stride on the channel dim")
    m, n = res.shape
    norm = weight is not None
    out = torch.empty(m, n, device=res.device, dtype=out_dtype) if norm else None
    block_m, block_n, warps = _launch_shape(m, n)
    _residual_ln_kernel[(triton.cdiv(m, block_m),)](
        res,
        y,
        gamma,
        weight if norm else gamma,
        bias if norm else gamma,
        out if norm else res,
        m,
        n,
        res.stride(0),
        y.stride(0),
        out.stride(0) if norm else 0,
        float(eps),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        NORM=norm,
        num_warps=warps,
    )
    return out


def embed_layer_norm_triton(
    patches: torch.Tensor,
    base: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`ops.layernorm.embed_layer_norm_math` in one launch; patches and base contiguous."""
    b, p, c = patches.shape
    if base.shape != (p + 1, c) or base.dtype != torch.float32:
        raise ValueError(f"base must be ({p + 1}, {c}) float32, got {tuple(base.shape)} {base.dtype}")
    patches, base = patches.contiguous(), base.contiguous()
    m = b * (p + 1)
    res = torch.empty(b, p + 1, c, device=patches.device, dtype=torch.float32)
    out = torch.empty(b, p + 1, c, device=patches.device, dtype=out_dtype)
    block_m, block_n, warps = _launch_shape(m, c)
    _embed_ln_kernel[(triton.cdiv(m, block_m),)](
        patches,
        base,
        res,
        weight,
        bias,
        out,
        m,
        p + 1,
        c,
        float(eps),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=warps,
    )
    return res, out
