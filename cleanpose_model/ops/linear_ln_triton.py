"""A transformer block's residual step as one Triton kernel: product, bias, residual add and the next
LayerNorm (CUDA, TF32), with its torch reference.

Every sub-layer of the pre-norm blocks in nn/attention.py ends the same way: the residual stream gets
``x @ W^T + b`` added, and the very next thing read from the stream is its LayerNorm (the next
sub-layer's, or the next block's first). In torch that is three launches (product, add, norm) per
sub-layer, each on 96-576 rows of 256 channels: launch latency, not arithmetic. Here one program owns
BLOCK_M full rows of the 256-wide output, so it can finish the rows: bias, residual, store, then mean,
variance and the affine LayerNorm of the same registers, stored as the next sub-layer's input.

The FFN variant keeps the hidden layer on chip too: for each BLOCK_F slice of the hidden width, the
slice relu(x @ W1[f]^T + b1[f]) is computed from x and immediately multiplied into the output by the
matching columns of W2, so a whole FFN sub-layer (two products, ReLU, residual, next LayerNorm) is
one launch.

Weights are read in nn.Linear's own (out, in) layout: that is the K-major operand the TF32 tensor-core
instructions want, and no transposed copies are kept. Each program reads every weight once (256 KB
per 256 x 256 layer, from L2); more row blocks only spread that over more SMs, so the row block is
small (16 rows: 6 programs at one object, 36 at six).

Used only where the products may run in TF32 (the fast mode) on CUDA with float32 tensors; the exact
mode keeps the torch form so its products stay full fp32. The LayerNorm uses the same formula as torch
(biased variance, eps inside the root); results differ by float rounding and TF32 only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cleanpose_model.ops.pointnet2_triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

if HAVE_TRITON:

    @triton.jit
    def _residual_linear_ln_kernel(
        x_ptr,
        w1_ptr,
        b1_ptr,
        w_ptr,
        b_ptr,
        res_ptr,
        g_ptr,
        beta_ptr,
        y_ptr,
        h_ptr,
        n_rows,
        seq_len,
        k_in,
        k_mid,
        sx,
        sr_b,
        sr_l,
        sr_c,
        eps,
        N: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_F: tl.constexpr,
        HAS_FIRST: tl.constexpr,
        HAS_RES: tl.constexpr,
        HAS_LN: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """y = res + a @ W^T + b and h = LN(y) for BLOCK_M full rows, where a = x (k_mid = k_in) or,
        with HAS_FIRST, a = relu(x @ W1^T + b1) built BLOCK_F columns at a time (k_mid = hidden width).
        x (n_rows, k_in) with row stride sx; W (N, k_mid), W1 (k_mid, k_in) contiguous; res addressed as
        (batch, seq_len, N) with strides (sr_b, sr_l, sr_c); y and h contiguous (n_rows, N)."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        cols = tl.arange(0, N)
        acc = tl.zeros([BLOCK_M, N], tl.float32)
        if HAS_FIRST:
            kk = tl.arange(0, BLOCK_K)
            for f0 in range(0, k_mid, BLOCK_F):
                ff = f0 + tl.arange(0, BLOCK_F)
                # issued before the hidden slice's loop so its latency overlaps that loop
                w = tl.load(w_ptr + cols[None, :] * k_mid + ff[:, None])  # (BLOCK_F, N)
                hid = tl.zeros([BLOCK_M, BLOCK_F], tl.float32)
                for k0 in range(0, k_in, BLOCK_K):
                    a = tl.load(
                        x_ptr + rows[:, None] * sx + (k0 + kk)[None, :], mask=row_ok[:, None], other=0.0
                    )
                    w1 = tl.load(w1_ptr + ff[None, :] * k_in + (k0 + kk)[:, None])  # (BLOCK_K, BLOCK_F)
                    hid += tl.dot(a, w1, input_precision=PRECISION)
                hid = tl.maximum(hid + tl.load(b1_ptr + ff)[None, :], 0.0)
                acc += tl.dot(hid, w, input_precision=PRECISION)
        else:
            kk = tl.arange(0, BLOCK_F)
            for k0 in range(0, k_mid, BLOCK_F):
                a = tl.load(x_ptr + rows[:, None] * sx + (k0 + kk)[None, :], mask=row_ok[:, None], other=0.0)
                w = tl.load(w_ptr + cols[None, :] * k_mid + (k0 + kk)[:, None])  # (BLOCK_F, N)
                acc += tl.dot(a, w, input_precision=PRECISION)
        y = acc + tl.load(b_ptr + cols)[None, :]
        if HAS_RES:
            res_rows = (rows // seq_len) * sr_b + (rows % seq_len) * sr_l
            y += tl.load(res_ptr + res_rows[:, None] + cols[None, :] * sr_c, mask=row_ok[:, None], other=0.0)
        out = rows[:, None] * N + cols[None, :]
        tl.store(y_ptr + out, y, mask=row_ok[:, None])
        if HAS_LN:
            mean = tl.sum(y, 1) / N
            d = y - mean[:, None]
            rstd = 1.0 / tl.sqrt(tl.sum(d * d, 1) / N + eps)
            h = d * rstd[:, None] * tl.load(g_ptr + cols)[None, :] + tl.load(beta_ptr + cols)[None, :]
            tl.store(h_ptr + out, h, mask=row_ok[:, None])


# Launch configuration (module-level so bench/head_kernels.py can compare others on the GPU). Its sweep on an
# H100 found 64-wide K/F blocks with 3 stages fastest (out-projection step 7.0 us vs 9.5 for cuBLAS + add +
# LayerNorm) but that shape failed the partial hidden-chunk test (hidden 96) on the GPU, so the verified one
# stays; the kernels are off by default anyway (nn/fused_attention.py ROW_KERNELS).
BLOCK_M = 16
BLOCK_K = 32
BLOCK_F = 32
NUM_WARPS = 4
NUM_STAGES = 2


def use_kernel(*tensors: torch.Tensor) -> bool:
    """Whether the fast mode's kernel applies: Triton, CUDA float32 tensors, TF32 products allowed and no
    autocast (which would hand the products half-precision inputs the torch form is written for)."""
    return (
        HAVE_TRITON
        and torch.backends.cuda.matmul.allow_tf32
        and not torch.is_autocast_enabled("cuda")
        and all(t.is_cuda and t.dtype == torch.float32 for t in tensors)
    )


def _precision() -> str:
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def residual_linear_ln_torch(x, weight, bias, residual, norm=None, first=None):
    """The reference: y = residual + F.linear(a, weight, bias) (no add when ``residual`` is None) with a = x,
    or a = relu(F.linear(x, *first)) when ``first`` = (W1, b1) is given; h = LayerNorm(y) with ``norm`` =
    (gamma, beta, eps), else None."""
    if first is not None:
        x = torch.relu(F.linear(x, *first))
    y = F.linear(x, weight, bias)
    y = y if residual is None else residual + y
    h = F.layer_norm(y, (y.shape[-1],), norm[0], norm[1], norm[2]) if norm is not None else None
    return y, h


def supported(k_in: int, weight: torch.Tensor, first=None) -> bool:
    """Shapes the kernel takes (input width ``k_in``): a power-of-two output width >= 16 and inner widths
    in whole blocks."""
    n, k_mid = weight.shape
    if n < 16 or n & (n - 1) or n > 512:
        return False
    if first is not None:
        return first[0].shape == (k_mid, k_in) and k_in % BLOCK_K == 0 and k_mid % BLOCK_F == 0
    return k_in == k_mid and k_mid % BLOCK_F == 0


def residual_linear_ln_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None,
    norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    first: tuple[torch.Tensor, torch.Tensor] | None = None,
    block_m: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`residual_linear_ln_torch` in one launch. x (B, L, K) (or (M, K)), residual of the output's shape
    (B, L, N) with any strides (an expanded or sliced stream is read in place) or None; weights contiguous.
    Returns y (B, L, N) and h (B, L, N) (None without ``norm``), both new contiguous tensors."""
    if not supported(x.shape[-1], weight, first):
        raise ValueError(f"unsupported shapes: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    n, k_mid = weight.shape
    lead = tuple(x.shape[:-1])
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be (B, L, K) or (M, K), got {tuple(x.shape)}")
    if residual is None:
        res = bias.view(1, 1, n)  # a placeholder: not read with HAS_RES off
    elif tuple(residual.shape) != (*lead, n):
        raise ValueError(f"residual {tuple(residual.shape)} does not match the output {(*lead, n)}")
    else:
        res = residual if residual.dim() == 3 else residual.unsqueeze(0)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    weights = [weight, bias] + (list(first) if first is not None else [])
    weight, bias, *rest = [t if t.is_contiguous() else t.contiguous() for t in weights]
    w1, b1 = rest if first is not None else (weight, bias)  # unused without HAS_FIRST
    m = x2.shape[0]
    y = torch.empty(*lead, n, device=x.device, dtype=torch.float32)
    h = torch.empty_like(y) if norm is not None else y
    g, beta, eps = norm if norm is not None else (bias, bias, 0.0)
    bm = block_m or BLOCK_M
    _residual_linear_ln_kernel[(triton.cdiv(m, bm),)](
        x2,
        w1,
        b1,
        weight,
        bias,
        res,
        g,
        beta,
        y,
        h,
        m,
        res.shape[1],
        x2.shape[1],
        k_mid,
        x2.stride(0),
        res.stride(0),
        res.stride(1),
        res.stride(2),
        float(eps),
        N=n,
        BLOCK_M=bm,
        BLOCK_K=BLOCK_K,
        BLOCK_F=BLOCK_F,
        HAS_FIRST=first is not None,
        HAS_RES=residual is not None,
        HAS_LN=norm is not None,
        PRECISION=_precision(),
        num_warps=NUM_WARPS,
        num_stages=NUM_STAGES,
    )
    return y, (h if norm is not None else None)


def residual_linear_ln(x, weight, bias, residual, norm=None, first=None):
    """One launch in the fast mode on CUDA (`use_kernel`), the torch reference otherwise."""
    tensors = [x, weight, bias] + [t for t in (residual, *(first or ())) if t is not None]
    if use_kernel(*tensors) and supported(x.shape[-1], weight, first):
        return residual_linear_ln_triton(x, weight, bias, residual, norm, first)
    return residual_linear_ln_torch(x, weight, bias, residual, norm, first)
