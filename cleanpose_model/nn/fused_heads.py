"""Inference form of the pose/size estimator (nn/heads.py `PoseSizeEstimator`): the same algebra in
14 launches instead of ~40.

The estimator runs at most a few hundred rows (96 keypoints per object) through narrow layers, so each
of its launches costs more in latency than in arithmetic, and it ends the forward's critical path. As
published it applies two point MLPs (keypoints and their NOCS, 3 -> 32 -> 64), a concatenation, two
per-keypoint MLPs around a "append the keypoint mean" step, an average pool, and three independent
linear heads (512 -> 512 -> 256 -> 6 / 3 / 3), each layer a product plus a separate ReLU. Here:

- the two point MLPs run as one: their inputs side by side (B*K, 6) and block-diagonal weights, so
  each depth is one product (the zero blocks add exact zeros);
- the concatenation the first pose layer reads is [p1 | p2 | keypoint feature] (the point MLPs'
  output is already one tensor), with that layer's weight columns permuted to match;
- the three heads' first layers are one product of concatenated weights, their deeper layers one
  product each with block-diagonal weights, so the outputs come as slices of one (B, 12) tensor;
- every ReLU is the product's epilogue (`torch._addmm_activation`) and every product is on
  channels-last rows, so no layout copies.

The concatenated and block-diagonal weights are new buffers (8.7 MB for the published widths, most
of it the heads' block-diagonal second layer); the other layers' parameters are shared with the
published module, whose children this one keeps under the same names: where the fast form does not
apply (full-fp32 products, autocast, CPU, gradients) the published forward runs on them unchanged, so
the exact mode stays bit-identical.

`fuse_heads` is the hook `fuse_for_inference` calls: it swaps this module in, and marks the
network's inference copy to use the one-kernel RGB gather (ops/gather_triton.py).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cleanpose_model.net import CleanPoseNet
from cleanpose_model.nn.heads import PoseSizeEstimator

_SHARED = (
    "pts_mlp1",
    "pts_mlp2",
    "pose_mlp1",
    "pose_mlp2",
    "rotation_estimator",
    "translation_estimator",
    "size_estimator",
)
_HEADS = _SHARED[4:]


def _affine(seq: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight (out, in), bias) of each product layer in ``seq`` (Conv1d, Linear or a folded PointwiseLinear;
    ReLUs, Identity slots and the pool carry no weight). Views of the live parameters."""
    return [(m.weight.flatten(1), m.bias) for m in seq.children() if getattr(m, "weight", None) is not None]


def _block_diag(*ws: torch.Tensor) -> torch.Tensor:
    return torch.block_diag(*(w.detach() for w in ws)).contiguous()


def _product(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """relu?(x W^T + b) for rows x (R, in), bias and ReLU in the product's epilogue."""
    if relu:
        return torch._addmm_activation(b, x, w.t())
    return torch.addmm(b, x, w.t())


class FusedPoseSizeEstimator(nn.Module):
    def __init__(self, est: PoseSizeEstimator) -> None:
        super().__init__()
        for name in _SHARED:
            setattr(self, name, getattr(est, name))  # shared: the published forward runs on them
        pts1, pts2 = _affine(est.pts_mlp1), _affine(est.pts_mlp2)
        if len(pts1) != len(pts2) or not pts1:
            raise ValueError("the two point MLPs must have the same depth")
        for i, ((w1, b1), (w2, b2)) in enumerate(zip(pts1, pts2, strict=True)):
            self._buffer(f"pts_w{i}", _block_diag(w1, w2))
            self._buffer(f"pts_b{i}", torch.cat([b1, b2]))
        self.pts_depth = len(pts1)
        n_p = pts1[-1][0].shape[0]
        # The published input order is [p1 | kpt_feat | p2]; here [p1 | p2 | kpt_feat].
        w_in, b_in = _affine(est.pose_mlp1)[0]
        w_in = w_in.detach()
        self._buffer("in_w", torch.cat([w_in[:, :n_p], w_in[:, -n_p:], w_in[:, n_p:-n_p]], dim=1))
        self._buffer("in_b", b_in)
        heads = [_affine(getattr(est, name)) for name in _HEADS]
        depth = len(heads[0])
        if any(len(h) != depth for h in heads):
            raise ValueError("the rotation, translation and size heads must have the same depth")
        self._buffer("head_w0", torch.cat([h[0][0].detach() for h in heads]))
        self._buffer("head_b0", torch.cat([h[0][1] for h in heads]))
        for i in range(1, depth):
            self._buffer(f"head_w{i}", _block_diag(*(h[i][0] for h in heads)))
            self._buffer(f"head_b{i}", torch.cat([h[i][1] for h in heads]))
        self.head_depth = depth
        self.out_widths = [h[-1][0].shape[0] for h in heads]

    def _buffer(self, name: str, t: torch.Tensor) -> None:
        # Derived from the published parameters: not part of the state_dict.
        self.register_buffer(name, t.detach().contiguous(), persistent=False)

    def _fast(self, *inputs: torch.Tensor) -> bool:
        return (
            inputs[0].is_cuda
            and torch.backends.cuda.matmul.allow_tf32
            and all(t.dtype == torch.float32 for t in inputs)
            and not torch.is_autocast_enabled(inputs[0].device.type)
            and not (
                torch.is_grad_enabled()
                and (any(t.requires_grad for t in inputs) or any(p.requires_grad for p in self.parameters()))
            )
        )

    def forward(
        self, kpt_3d: torch.Tensor, kpt_nocs: torch.Tensor, kpt_feat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As `PoseSizeEstimator.forward`: -> (6D rotation (B,6), translation (B,3), size (B,3))."""
        if self._fast(kpt_3d, kpt_nocs, kpt_feat):
            return self.forward_fused(kpt_3d, kpt_nocs, kpt_feat)
        return PoseSizeEstimator.forward(self, kpt_3d, kpt_nocs, kpt_feat)

    def forward_fused(
        self, kpt_3d: torch.Tensor, kpt_nocs: torch.Tensor, kpt_feat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused algebra on any device (the CUDA fast mode's path; tests run it on the CPU)."""
        bsz, n_kpt, _ = kpt_3d.shape
        rows = bsz * n_kpt
        p = torch.cat([kpt_3d, kpt_nocs], dim=-1).view(rows, -1)
        for i in range(self.pts_depth):
            p = _product(p, getattr(self, f"pts_w{i}"), getattr(self, f"pts_b{i}"))
        x = torch.cat([p.view(bsz, n_kpt, -1), kpt_feat], dim=-1).view(rows, -1)
        x = _product(x, self.in_w, self.in_b)
        for w, b in _affine(self.pose_mlp1)[1:]:
            x = _product(x, w, b)
        f = x.view(bsz, n_kpt, -1)
        x = torch.cat([f, f.mean(dim=1, keepdim=True).expand_as(f)], dim=-1).view(rows, -1)
        for w, b in _affine(self.pose_mlp2):
            x = _product(x, w, b)
        h = x.view(bsz, n_kpt, -1).mean(dim=1)  # the published AdaptiveAvgPool1d(1)
        for i in range(self.head_depth):
            last = i == self.head_depth - 1
            h = _product(h, getattr(self, f"head_w{i}"), getattr(self, f"head_b{i}"), relu=not last)
        r6, t, s = torch.split(h, self.out_widths, dim=1)
        return r6, t, s


# The module types `fuse_heads` changes.
FUSES_HEADS = (CleanPoseNet, PoseSizeEstimator)


def fuse_heads(module: nn.Module) -> nn.Module:
    """`fuse_for_inference`'s hook for this file: a `PoseSizeEstimator` -> its inference form; a
    `CleanPoseNet` -> a shallow copy marked to use the one-kernel RGB gather (its children are then
    fused by the caller); anything else unchanged."""
    if isinstance(module, PoseSizeEstimator):
        return FusedPoseSizeEstimator(module)
    if isinstance(module, CleanPoseNet) and not module.fused_rgb_gather:
        clone = copy.copy(module)
        clone._modules = dict(module._modules)  # the copy's children can be swapped without touching module's
        clone.fused_rgb_gather = True
        return clone
    return module
