"""Linear layers whose float32 products run on tensor cores at fp32 accuracy (3xTF32), bias and ReLU / GELU
in the epilogue, batched or not, any input and output strides: the exact mode's products on CUDA.

A TF32 product keeps 10 of float32's 23 mantissa bits. Splitting each operand into a TF32 "big" part and
the TF32 rounding of the remainder, a*b = a_big*b_big + a_big*b_small + a_small*b_big (the small*small
term is below float32's rounding) recovers ~21 bits per product with three tensor-core products and
float32 accumulation (Triton's ``input_precision="tf32x3"``). On an H200 that is several times the
throughput of the CUDA-core FFMA kernels cuBLAS runs for float32 with TF32 off, and its error stays at
float32 rounding level, far inside the parity bound (1e-4). ``"ieee"`` (plain FFMA) and ``"tf32"`` are
accepted for comparison.

The reference is `ops/linear.py` (``F.linear`` + the activation); the kernel computes the same function.
"""

from __future__ import annotations

import torch

from cleanpose_model.ops.triton import HAVE_TRITON

PRECISIONS = ("ieee", "tf32", "tf32x3")
ACTIVATIONS = (None, "relu", "gelu")

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _linear_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        y_ptr,
        M,
        N,
        K,
        sxb,
        sxm,
        sxk,
        swn,
        swk,
        syb,
        sym,
        syn,
        HAS_BIAS: tl.constexpr,
        ACTIVATION: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        # Programs walk the output in groups of GROUP_M row blocks, so neighbouring programs share the
        # same weight columns while they are in L2.
        pid = tl.program_id(0)
        x_ptr += tl.program_id(1) * sxb  # one matrix of a batch per grid row
        y_ptr += tl.program_id(1) * syb
        n_m = tl.cdiv(M, BLOCK_M)
        n_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * n_n
        first_m = (pid // per_group) * GROUP_M
        group_m = tl.minimum(n_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_m
        pid_n = (pid % per_group) // group_m
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, BLOCK_K)
        row_ok = rows < M
        col_ok = cols < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = (k0 + ks) < K
            a = tl.load(
                x_ptr + rows[:, None] * sxm + (k0 + ks)[None, :] * sxk,
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            b = tl.load(
                w_ptr + cols[None, :] * swn + (k0 + ks)[:, None] * swk,
                mask=col_ok[None, :] & k_ok[:, None],
                other=0.0,
            )
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if ACTIVATION == "relu":
            acc = tl.maximum(acc, 0.0)
        elif ACTIVATION == "gelu":  # the erf form, as nn.GELU()
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        tl.store(
            y_ptr + rows[:, None] * sym + cols[None, :] * syn, acc, mask=row_ok[:, None] & col_ok[None, :]
        )


# Tile shapes, largest first: the largest that still gives every SM a program (at robot batch sizes the
# products are small and a grid of fewer programs than SMs leaves the GPU idle). (BLOCK_M, BLOCK_N, warps)
_TILES = ((128, 128, 8), (128, 64, 4), (64, 64, 4), (32, 64, 4))


def _tile(m: int, n: int, device: torch.device) -> tuple[int, int, int]:
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    for bm, bn, warps in _TILES:
        if triton.cdiv(m, bm) * triton.cdiv(n, bn) >= sms:
            return bm, bn, warps
    return _TILES[-1]


def linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    activation: str | None = None,
    precision: str = "tf32x3",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`ops.linear.linear_math` in one launch: x (M, K) or (B, M, K) float32 with any strides, weight
    (N, K), bias (N,) or None -> (M, N) / (B, M, N) float32. ``activation``: None, "relu" or "gelu" (erf).
    ``precision``: "tf32x3" (fp32 accuracy on tensor cores), "tf32" or "ieee". ``out``: where to write, any
    strides (e.g. the transposed view of a channels-first tensor)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() not in (2, 3) or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x (M, K) or (B, M, K) and weight (N, K) expected, got {tuple(x.shape)}, {tuple(weight.shape)}"
        )
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        raise ValueError(f"float32 operands expected, got {x.dtype} and {weight.dtype}")
    x3 = x if x.dim() == 3 else x.unsqueeze(0)
    bsz, m, k = x3.shape
    n = weight.shape[0]
    if out is None:
        out = torch.empty(*x.shape[:-1], n, device=x.device, dtype=torch.float32)
    if out.shape != (*x.shape[:-1], n) or out.dtype != torch.float32:
        raise ValueError(f"out must be float32 of shape {(*x.shape[:-1], n)}, got {tuple(out.shape)}")
    y3 = out if out.dim() == 3 else out.unsqueeze(0)
    bm, bn, warps = _tile(bsz * m, n, x.device)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn), bsz)
    _linear_kernel[grid](
        x3,
        weight,
        bias if bias is not None else y3,  # never read without HAS_BIAS
        y3,
        m,
        n,
        k,
        x3.stride(0),
        x3.stride(1),
        x3.stride(2),
        weight.stride(0),
        weight.stride(1),
        y3.stride(0),
        y3.stride(1),
        y3.stride(2),
        HAS_BIAS=bias is not None,
        ACTIVATION=activation or "none",
        PRECISION=precision,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=32,
        GROUP_M=8,
        num_warps=warps,
        num_stages=3,
    )
    return out
