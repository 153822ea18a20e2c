"""Inference forms of the prediction heads (nn/heads.py), built in the fast mode (CUDA, TF32 products).

`FusedPoseSizeEstimator`: the pose/size estimator in 14 launches instead of ~40. It runs at most a few
hundred rows (96 keypoints per object) through narrow layers, so each of its launches costs more in latency
than in arithmetic, and it ends the forward's critical path. As published it applies two point MLPs
(keypoints and their NOCS, 3 -> 32 -> 64), a concatenation, two per-keypoint MLPs around a "append the
keypoint mean" step, an average pool, and three independent linear heads (512 -> 512 -> 256 -> 6 / 3 / 3),
each layer a product plus a separate ReLU. Here:

- the two point MLPs run as one: their inputs side by side (B*K, 6) and block-diagonal weights, so
  each depth is one product (the zero blocks add exact zeros);
- the concatenation the first pose layer reads is [p1 | p2 | keypoint feature] (the point MLPs'
  output is already one tensor), with that layer's weight columns permuted to match;
- the three heads' first layers are one product of concatenated weights, their deeper layers one
  product each with block-diagonal weights, so the outputs come as slices of one (B, 12) tensor;
- every ReLU is the product's epilogue (`torch._addmm_activation`) and every product is on
  channels-last rows, so no layout copies.

The concatenated and block-diagonal weights are new buffers (8.7 MB for the published widths, most of it
the heads' block-diagonal second layer); the other layers' parameters are shared with the published module.

`FusedNOCSPredictor`: the NOCS head on channels-last rows: the folded MLPs (forms/pointwise.py) with their
ReLUs in the products' epilogues, the self-attention stack in its inference form, and the last layer
restricted to the object's category with the softmax over the bins and their expectation as one Triton
kernel (`ops/triton/head_tails.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from cleanpose_model.inference.forms.attention import FusedSelfAttnLayer
from cleanpose_model.inference.forms.pointwise import PointwiseLinear
from cleanpose_model.nn.heads import NOCSPredictor, PoseSizeEstimator
from cleanpose_model.ops.triton.head_tails import nocs_expectation_triton, nocs_supported

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
            setattr(self, name, getattr(est, name))  # shared: the published layout; pose_mlp* are read
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

    def forward(
        self, kpt_3d: torch.Tensor, kpt_nocs: torch.Tensor, kpt_feat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As `PoseSizeEstimator.forward`: -> (6D rotation (B,6), translation (B,3), size (B,3)); float32
        inputs, nothing to differentiate (any device: tests run it on the CPU)."""
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


def folded_layers(seq: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, bool]] | None:
    """(weight, bias, relu) per layer of a 1x1 MLP folded by forms/pointwise.py, or None if it is not."""
    layers = []
    for m in seq.children():
        if isinstance(m, PointwiseLinear):
            layers.append((m.weight, m.bias, m.relu))
        elif not isinstance(m, nn.Identity):
            return None
    return layers or None


class FusedNOCSPredictor(nn.Module):
    """`NOCSPredictor` (folded by forms/pointwise.py) for inference; ``precision`` of its attention core and
    its tail kernel ("tf32" in the fast mode). Build it where `supports` holds."""

    def __init__(self, pred: NOCSPredictor, precision: str) -> None:
        super().__init__()
        if not self.supports(pred):
            raise ValueError("FusedNOCSPredictor needs a folded NOCS head whose tail the kernel covers")
        self.mlp, self.att = folded_layers(pred.nocs_mlp), folded_layers(pred.atten_mlp)
        self.nocs_mlp, self.atten_mlp = pred.nocs_mlp, pred.atten_mlp  # shared: hold the weights above
        self.self_attn_layer = FusedSelfAttnLayer(pred.self_attn_layer, precision)
        self.bins_num, self.precision = pred.bins_num, precision

    @staticmethod
    def supports(pred: NOCSPredictor) -> bool:
        mlp, att = folded_layers(pred.nocs_mlp), folded_layers(pred.atten_mlp)
        return (
            mlp is not None
            and att is not None
            and not mlp[-1][2]
            and not att[-1][2]
            and nocs_supported(att[-1][0], pred.cat_num, pred.bins_num)
        )

    def forward(self, kpt_feat: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        bsz, n_kpt, c = kpt_feat.shape
        x = kpt_feat.reshape(-1, c)
        for w, b, relu in self.mlp:
            x = _product(x, w, b, relu)
        x = self.self_attn_layer(x.view(bsz, n_kpt, -1)).view(bsz * n_kpt, -1)
        for w, b, relu in self.att[:-1]:
            x = _product(x, w, b, relu)
        w, b, _ = self.att[-1]
        out = nocs_expectation_triton(x, w, b, category, self.bins_num, self.precision)
        return out.view(bsz, n_kpt, 3)
