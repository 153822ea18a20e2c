"""The CPU (exact) form of GAFA (nn/gafa.py): the published block's algebra on channels-last rows, every
product through oneDNN with its weight packed once (forms/cpu.py), and the per-pair and per-neighbour first
layers taken apart so that no product runs on a 3-wide input:

- the keypoint-pair MLP's first layer on ``x_i - x_j`` is ``(W x_i + b) - W x_j`` (per keypoint, then a
  broadcast subtraction); its second layer runs on all K x K pairs with bias and ReLU in the product, in
  chunks whose output stays in the core's L2 cache, each chunk reduced to its mean at once;
- the neighbour branch's first layer on ``kpt - knn_xyz`` likewise (``W kpt + b`` minus ``W p`` per point,
  gathered), the neighbour-feature projection on every point once (as the published form) and added in the
  folded position layer's product (oneDNN's binary post-op), the cosine similarity as one batched product
  with the normalised query;
- the keypoint-to-point distance table and its neighbour choice (``topk``, as the reference) computed once
  for both blocks (they see the same keypoints and points).

Only the summation order differs from the reference (the cancellation in ``W x_i - W x_j`` is ~1e-7 of
``|W x|``; test/cleanpose_model/inference/forms/test_cpu_head.py holds the block to the reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cleanpose_model.inference.forms.cpu import pack
from cleanpose_model.inference.forms.heads import folded_layers
from cleanpose_model.nn.gafa import GAFA, GAFABlock
from cleanpose_model.ops.knn import knn_indices

# Rows of a pair-MLP chunk: its (rows, 256) fp32 output (1.5 MB) stays in a Zen 4 core's 2 MB L2.
PAIR_CHUNK_ROWS = 1536
# Neighbour rows (keypoint, neighbour) per chunk of the neighbour branch, for the same reason.
NEIGHBOUR_CHUNK_ROWS = 1536


def _linear_layers(seq: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m.weight.detach(), m.bias.detach()) for m in seq if isinstance(m, nn.Linear)]


class Dense:
    """A packed fp32 layer: ``relu?(x W^T + b)`` on rows x (R, in)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool = False) -> None:
        self.packed = pack(weight.detach().float(), torch.float32)
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.attr = "relu" if relu else "none"
        self.out_features = weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, self.attr, [], "none")

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``x W^T + b + other`` (other (R, out), contiguous) in one product."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "add")


def chain(layers: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> list[Dense]:
    return [Dense(w, b, relu) for w, b, relu in layers]


def run_chain(dense: list[Dense], x: torch.Tensor) -> torch.Tensor:
    for d in dense:
        x = d(x)
    return x


class CpuGAFABlock(nn.Module):
    """One `GAFABlock` (folded by forms/pointwise.py) for the CPU. Weights are a snapshot."""

    def __init__(self, blk: GAFABlock) -> None:
        super().__init__()
        self.k, self.tau = blk.k, blk.tau
        fc_in, fuse = folded_layers(blk.fc_in), folded_layers(blk.fuse_mlp)
        if fc_in is None or fuse is None:
            raise ValueError("CpuGAFABlock needs a block folded by forms/pointwise.fold_for_inference")
        self.fc_in = chain(fc_in)
        self.fuse = chain(fuse)
        (w1, b1), (w2, b2), (w_last, b_last) = _linear_layers(blk.fc_delta)
        (lin_w, lin_b), (w3, b3) = _linear_layers(blk.fc_delta_1)
        c = w_last.shape[0]
        w_pos = lin_w[:, c:].double()
        # fc_delta's last layer is linear: folded into the position half of fc_delta_1's first layer (in
        # float64 once), as the published block and forms/gafa.py do.
        self.n_w1, self.n_b1 = w1.float(), b1.float()
        self.n_l2 = Dense(w2, b2, relu=True)
        b_fold = w_pos @ b_last.double() + lin_b.double()
        self.n_fold = Dense((w_pos @ w_last.double()).float(), b_fold.float())
        self.n_feat = Dense(lin_w[:, :c], None)
        self.n_out = Dense(w3, b3)
        (lw1, lb1), (lw2, lb2), (lw3, lb3) = _linear_layers(blk.fc_delta_l)
        self.l_w1, self.l_b1 = lw1.float(), lb1.float()
        self.l_l2 = Dense(lw2, lb2, relu=True)
        self.l_l3 = Dense(lw3, lb3)
        (aw1, ab1), (aw2, ab2), (aw3, ab3) = _linear_layers(blk.fc_delta_abs)
        self.abs = [Dense(aw1, ab1, True), Dense(aw2, ab2, True), Dense(aw3, ab3)]
        (ow1, ob1), (ow2, ob2) = _linear_layers(blk.out_mlp)
        self.out = [Dense(ow1, ob1, True), Dense(ow2, ob2)]

    def neighbours(
        self,
        kpt_feat: torch.Tensor,
        kpt_3d: torch.Tensor,
        pts_rows: torch.Tensor,
        pts: torch.Tensor,
        knn_idx: torch.Tensor,
    ) -> torch.Tensor:
        """The neighbour branch: -> relu(sum_j a_j kf_j + kpt_feat) (B, K, C)."""
        bsz, n_kpt, c = kpt_feat.shape
        n, k = pts.shape[1], self.k
        # Row indices of the neighbours in the flattened (B * N) point tables, one row of k per keypoint.
        rows = (knn_idx + torch.arange(bsz).view(bsz, 1, 1) * n).view(bsz * n_kpt, k)
        proj = self.n_feat(pts_rows)  # (B*N, C): the feature half of fc_delta_1's first layer, per point
        # fc_delta's first layer on (kpt - knn_xyz): per keypoint minus per point.
        p1 = pts.reshape(-1, 3) @ self.n_w1.t()
        kq = torch.addmm(self.n_b1, kpt_3d.reshape(-1, 3), self.n_w1.t()).unsqueeze(1)  # (B*K, 1, H)
        q = run_chain(self.fc_in, kpt_feat.reshape(-1, c))  # (B*K, C)
        # cosine similarity as torch computes it: each side divided by its norm (clamped at 1e-8)
        qn = (q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min_(1e-8)).unsqueeze(-1)
        out = torch.empty(bsz * n_kpt, c)
        per = max(1, NEIGHBOUR_CHUNK_ROWS // k)  # keypoints per chunk: its rows stay in L2 through the chain
        for r0 in range(0, bsz * n_kpt, per):
            r1 = min(r0 + per, bsz * n_kpt)
            idx = rows[r0:r1].reshape(-1)
            h = torch.sub(kq[r0:r1], F.embedding(idx, p1).view(r1 - r0, k, -1)).relu_()
            h = self.n_l2(h.view(idx.shape[0], -1))
            kf = self.n_out(self.n_fold.add(h, F.embedding(idx, proj)).relu_()).view(r1 - r0, k, c)
            kn = torch.linalg.vector_norm(kf, dim=-1).clamp_min_(1e-8)
            sim = torch.bmm(kf, qn[r0:r1]).squeeze(-1).div_(kn)  # (chunk, k)
            attn = torch.softmax(sim.div_(self.tau), dim=-1)
            out[r0:r1] = torch.bmm(attn.unsqueeze(1), kf).squeeze(1)
        return out.view(bsz, n_kpt, c).add_(kpt_feat).relu_()

    def pair_mean(self, kpt_3d: torch.Tensor) -> torch.Tensor:
        """mean_j relu(relu((x_i - x_j) W1^T + b1) W2^T + b2) -> (B, K, C) (the published rel_hidden)."""
        bsz, n_kpt, _ = kpt_3d.shape
        flat = kpt_3d.reshape(-1, 3)
        v = (flat @ self.l_w1.t()).view(bsz, 1, n_kpt, -1)  # W1 x_j
        u = torch.addmm(self.l_b1, flat, self.l_w1.t()).view(bsz, n_kpt, 1, -1)  # W1 x_i + b1
        per = max(1, PAIR_CHUNK_ROWS // n_kpt)  # keypoints i per chunk
        out = torch.empty(bsz, n_kpt, self.l_l2.out_features)
        for b in range(bsz):
            for i0 in range(0, n_kpt, per):
                i1 = min(i0 + per, n_kpt)
                h = torch.sub(u[b, i0:i1], v[b]).relu_()  # (i, K, H)
                y = self.l_l2(h.view(-1, h.shape[-1])).view(i1 - i0, n_kpt, -1)
                torch.mean(y, dim=1, out=out[b, i0:i1])
        return out

    def forward(
        self,
        kpt_feat: torch.Tensor,
        kpt_3d: torch.Tensor,
        pts_rows: torch.Tensor,
        pts: torch.Tensor,
        dist: torch.Tensor,
    ) -> torch.Tensor:
        """kpt_feat (B, K, C), kpt_3d (B, K, 3), pts_rows (B * N, C) the point features' rows, pts (B, N, 3),
        dist (B, K, N) the keypoint-to-point distances."""
        bsz, n_kpt, c = kpt_feat.shape
        knn_idx = knn_indices(dist, self.k)
        kpt_feat = self.neighbours(kpt_feat, kpt_3d, pts_rows, pts, knn_idx)
        rows = kpt_3d.reshape(-1, 3)
        pos = run_chain(self.abs, rows) + self.l_l3(self.pair_mean(kpt_3d).view(-1, c))
        # fuse_position: [kpt_feat, mean over keypoints, pos] through fuse_mlp (residual), then out_mlp.
        glob = kpt_feat.mean(dim=1, keepdim=True).expand(-1, n_kpt, -1)
        x = torch.cat([kpt_feat, glob, pos.view(bsz, n_kpt, c)], dim=-1).view(-1, 3 * c)
        pre = kpt_feat.reshape(-1, c)
        kf = run_chain(self.fuse, x).add_(pre).relu_()
        return run_chain(self.out, kf).add_(kf).relu_().view(bsz, n_kpt, c)


class CpuGAFA(nn.Module):
    """`GAFA` for the CPU: ``forward(kpt_feat, kpt_3d, pts_rows, pts)`` with the point features as contiguous
    rows (B * N, C) (the CPU head's layout). ``gafa``: a folded `GAFA` or its blocks."""

    def __init__(self, gafa: GAFA | list[GAFABlock]) -> None:
        super().__init__()
        blocks = gafa.GAFA_blocks if isinstance(gafa, GAFA) else gafa
        self.GAFA_blocks = nn.ModuleList(CpuGAFABlock(b) for b in blocks)

    def forward(
        self, kpt_feat: torch.Tensor, kpt_3d: torch.Tensor, pts_rows: torch.Tensor, pts: torch.Tensor
    ) -> torch.Tensor:
        # As the reference computes it (every block, the same table): the same neighbour choice.
        dist = torch.linalg.vector_norm(kpt_3d.unsqueeze(2) - pts.unsqueeze(1), dim=-1)
        for blk in self.GAFA_blocks:
            kpt_feat = blk(kpt_feat, kpt_3d, pts_rows, pts, dist)
        return kpt_feat
