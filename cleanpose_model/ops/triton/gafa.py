"""GAFA's per-keypoint MLP chains as Triton kernels (CUDA); their torch references are in `ops/gafa.py`.

Each GAFA block runs two small MLPs over sets that only exist to be reduced:
- the keypoint-to-keypoint offsets (B, K, K, 3) through Linear(3, h) -> ReLU -> Linear(h, C) -> ReLU,
  averaged over the second keypoint (`pairwise_mlp_mean`): at 6 objects a (6, 96, 96, 256) float
  tensor (57 MB) written, rectified and read back, for a (6, 96, 256) result;
- each keypoint's k nearest points through the neighbour MLP, the feature projection, a cosine-
  similarity softmax against the keypoint's query and the weighted sum (`neighbour_aggregate`): ~20
  launches on (B, K, k, 256) temporaries.
One program per keypoint keeps these sets on chip (the neighbour kernel stages its 256-wide layers
in a per-program scratch row block, which stays in L2) and writes only the reduced rows.

The inference builder binds them in "tf32" (the fast mode) and "tf32x3" (the exact mode: float32 accuracy
from three TF32 tensor-core products, ops/triton/linear.py). In "ieee" the products run on the CUDA cores,
one program per keypoint, measured far slower than cuBLAS (H100, GAFA at 6 objects: 10.3 ms vs 1.4 ms);
it serves the tests' tight checks.
"""

from __future__ import annotations

import torch

from cleanpose_model.ops.triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from cleanpose_model.ops.triton.pointnet2 import _load_xyz

    @triton.jit
    def _hidden_from_offsets(dx, dy, dz, w1_ptr, b1_ptr, HID: tl.constexpr):
        """relu(d @ W1^T + b1) for offsets d (R,) x 3 -> (R, HID); a 3-wide contraction as FMAs."""
        hc = tl.arange(0, HID)
        w0 = tl.load(w1_ptr + hc * 3)
        w1 = tl.load(w1_ptr + hc * 3 + 1)
        w2 = tl.load(w1_ptr + hc * 3 + 2)
        b = tl.load(b1_ptr + hc)
        h = dx[:, None] * w0[None, :] + dy[:, None] * w1[None, :] + dz[:, None] * w2[None, :] + b[None, :]
        return tl.maximum(h, 0.0)

    @triton.jit
    def _second_layer(h1, w2t_ptr, b2_ptr, cc, HID: tl.constexpr, C: tl.constexpr, PRECISION: tl.constexpr):
        """relu(h1 @ W2t[:, cc] + b2[cc]): one BLOCK_C-wide column block of the 256-wide layer."""
        hc = tl.arange(0, HID)
        w2t = tl.load(w2t_ptr + hc[:, None] * C + cc[None, :])  # (HID, BLOCK_C)
        return tl.maximum(tl.dot(h1, w2t, input_precision=PRECISION) + tl.load(b2_ptr + cc)[None, :], 0.0)

    @triton.jit
    def _pairwise_mlp_mean_kernel(
        x_ptr,
        w1_ptr,
        b1_ptr,
        w2t_ptr,
        b2_ptr,
        out_ptr,
        n_kpt,
        HID: tl.constexpr,
        C: tl.constexpr,
        BLOCK_J: tl.constexpr,
        BLOCK_C: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)  # b * n_kpt + i
        b = pid // n_kpt
        j = tl.arange(0, BLOCK_J)
        ok = j < n_kpt
        base = x_ptr + b * n_kpt * 3
        xi = tl.load(x_ptr + pid * 3)
        yi = tl.load(x_ptr + pid * 3 + 1)
        zi = tl.load(x_ptr + pid * 3 + 2)
        xj, yj, zj = _load_xyz(base, j, ok)
        h1 = _hidden_from_offsets(xi - xj, yi - yj, zi - zj, w1_ptr, b1_ptr, HID)
        for c0 in tl.static_range(0, C, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            h2 = tl.where(ok[:, None], _second_layer(h1, w2t_ptr, b2_ptr, cc, HID, C, PRECISION), 0.0)
            tl.store(out_ptr + pid * C + cc, tl.sum(h2, 0) / n_kpt)

    @triton.jit
    def _neighbour_aggregate_kernel(
        kpt_ptr,
        knn_xyz_ptr,
        knn_idx_ptr,
        proj_ptr,
        q_ptr,
        pre_ptr,
        w1_ptr,
        b1_ptr,
        w2t_ptr,
        b2_ptr,
        wft_ptr,
        bf_ptr,
        w3t_ptr,
        b3_ptr,
        scratch_ptr,
        out_ptr,
        n_kpt,
        n_pts,
        inv_tau,
        K_NN: tl.constexpr,
        HID: tl.constexpr,
        C: tl.constexpr,
        BLOCK_C: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)  # b * n_kpt + i
        b = pid // n_kpt
        r = tl.arange(0, K_NN)
        # offsets keypoint - neighbour, as the published fc_delta input
        kx = tl.load(kpt_ptr + pid * 3)
        ky = tl.load(kpt_ptr + pid * 3 + 1)
        kz = tl.load(kpt_ptr + pid * 3 + 2)
        nb = knn_xyz_ptr + (pid * K_NN + r) * 3
        h1 = _hidden_from_offsets(
            kx - tl.load(nb), ky - tl.load(nb + 1), kz - tl.load(nb + 2), w1_ptr, b1_ptr, HID
        )
        idx = tl.load(knn_idx_ptr + pid * K_NN + r)
        rows = proj_ptr + (b * n_pts + idx) * C  # gathered feature projections of the neighbours
        s_a = scratch_ptr + pid * (2 * K_NN * C)  # two (K_NN, C) row blocks of this program
        s_b = s_a + K_NN * C
        # layer 2: relu(h1 W2^T + b2) -> scratch A
        for c0 in tl.static_range(0, C, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            h2 = _second_layer(h1, w2t_ptr, b2_ptr, cc, HID, C, PRECISION)
            tl.store(s_a + r[:, None] * C + cc[None, :], h2)
        tl.debug_barrier()
        # layer 3: relu(gathered projection + h2 W_fold^T + b_fold) -> scratch B
        for c0 in tl.static_range(0, C, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            acc = tl.load(rows[:, None] + cc[None, :]) + tl.load(bf_ptr + cc)[None, :]
            for k0 in tl.static_range(0, C, BLOCK_C):
                kk = k0 + tl.arange(0, BLOCK_C)
                a = tl.load(s_a + r[:, None] * C + kk[None, :])
                acc += tl.dot(a, tl.load(wft_ptr + kk[:, None] * C + cc[None, :]), input_precision=PRECISION)
            tl.store(s_b + r[:, None] * C + cc[None, :], tl.maximum(acc, 0.0))
        tl.debug_barrier()
        # layer 4: kf = h3 W3^T + b3 -> scratch A; with each row's dot product with q and squared norm
        qdot = tl.zeros([K_NN], tl.float32)
        kf_sq = tl.zeros([K_NN], tl.float32)
        q_sq = 0.0
        for c0 in tl.static_range(0, C, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            acc = tl.zeros([K_NN, BLOCK_C], tl.float32) + tl.load(b3_ptr + cc)[None, :]
            for k0 in tl.static_range(0, C, BLOCK_C):
                kk = k0 + tl.arange(0, BLOCK_C)
                a = tl.load(s_b + r[:, None] * C + kk[None, :])
                acc += tl.dot(a, tl.load(w3t_ptr + kk[:, None] * C + cc[None, :]), input_precision=PRECISION)
            q = tl.load(q_ptr + pid * C + cc)
            qdot += tl.sum(acc * q[None, :], 1)
            kf_sq += tl.sum(acc * acc, 1)
            q_sq += tl.sum(q * q, 0)
            tl.store(s_a + r[:, None] * C + cc[None, :], acc)
        tl.debug_barrier()
        # cosine similarity (norms clamped at 1e-8 as torch's), softmax over the neighbours, weighted sum
        sim = qdot / (tl.maximum(tl.sqrt(kf_sq), 1e-8) * tl.maximum(tl.sqrt(q_sq), 1e-8)) * inv_tau
        p = tl.exp(sim - tl.max(sim, 0))
        attn = p / tl.sum(p, 0)
        for c0 in tl.static_range(0, C, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            kf = tl.load(s_a + r[:, None] * C + cc[None, :])
            o = tl.sum(attn[:, None] * kf, 0) + tl.load(pre_ptr + pid * C + cc)
            tl.store(out_ptr + pid * C + cc, tl.maximum(o, 0.0))


def neighbours_supported(k: int) -> bool:
    return k >= 16 and not k & (k - 1)


def pairwise_mlp_mean_triton(x, w1, b1, w2t, b2, precision: str) -> torch.Tensor:
    """`ops.gafa.pairwise_mlp_mean_torch` in one launch: x (B, K, 3) float32 CUDA -> (B, K, C)."""
    bsz, n_kpt, _ = x.shape
    hid, c = w2t.shape
    out = torch.empty(bsz, n_kpt, c, device=x.device, dtype=torch.float32)
    _pairwise_mlp_mean_kernel[(bsz * n_kpt,)](
        x.contiguous(),
        w1,
        b1,
        w2t,
        b2,
        out,
        n_kpt,
        HID=hid,
        C=c,
        BLOCK_J=max(16, triton.next_power_of_2(n_kpt)),
        BLOCK_C=64,
        PRECISION=precision,
        num_warps=4,
    )
    return out


def neighbour_aggregate_triton(
    kpt_3d, knn_xyz, knn_idx, proj, q, pre, weights, tau: float, precision: str
) -> torch.Tensor:
    """`ops.gafa.neighbour_aggregate_torch` in one launch (float32 CUDA tensors); the neighbour count k
    a power of two >= 16 (`neighbours_supported`)."""
    bsz, n_kpt, k = knn_idx.shape
    hid, c = weights[2].shape
    if not neighbours_supported(k):
        raise ValueError(f"the neighbour kernel takes a power-of-two k >= 16, got {k}")
    out = torch.empty(bsz, n_kpt, c, device=q.device, dtype=torch.float32)
    scratch = torch.empty(bsz * n_kpt, 2 * k * c, device=q.device, dtype=torch.float32)
    _neighbour_aggregate_kernel[(bsz * n_kpt,)](
        kpt_3d.contiguous(),
        knn_xyz.contiguous(),
        knn_idx.contiguous(),
        proj.contiguous(),
        q.contiguous(),
        pre.contiguous(),
        *weights,
        scratch,
        out,
        n_kpt,
        proj.shape[1],
        1.0 / tau,
        K_NN=k,
        HID=hid,
        C=c,
        BLOCK_C=64,
        PRECISION=precision,
        num_warps=4,
    )
    return out
