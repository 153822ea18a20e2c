"""Inference form of PointNet++ (nn/pointnet2_msg.py): the index work (furthest point sampling, the
two-radius ball query, three-NN) as one Triton kernel each (``geometry_kernels``: `ops/triton/pointnet2.py`,
the same picks as the torch references, bit for bit), and, when built with a ``precision`` (the fast mode:
"tf32"), each set-abstraction level's feature work in one kernel and each feature-propagation level in
one or two (`ops/triton/sa.py`).

`FusedPointNet2`, `FusedSetAbstraction` and `FusedFeaturePropagation` subclass the published modules
and keep their methods and signatures (``centres``, ``neighbours``, ``aggregate``, ``geometry``, the FP
``forward`` with precomputed interpolation; the forms replace its feature work, ``propagate``), so the
graphed runner (inference/graphs.py) drives them piecewise on its streams. Without a precision they run
the published feature code on the shared modules; without geometry kernels, the torch index references
(`ops/pointnet2.py`).

The feature kernels take the folded layers (forms/pointwise.fold_for_inference: 1x1 conv + BN + ReLU as
one ``PointwiseLinear``); the builder folds before it builds the forms. A module that is not folded (or
whose shape the kernels do not cover) keeps the torch path. The weights are packed
once (transposed, zero-padded, stacked over radii) into non-persistent buffers, a few MB in all; the
state_dict is the published one.

With the kernels, SA levels and the inner FP levels return (B, C, M) views of point-major buffers,
which is what the next level's gathers read best; the last FP level writes the usual contiguous
(B, C, N) tensor for the head.
"""

from __future__ import annotations

import torch
from torch import nn

from cleanpose_model.inference.forms.pointwise import PointwiseLinear
from cleanpose_model.nn.pointnet2_msg import (
    FeaturePropagation,
    PointNet2MSG,
    SetAbstractionMSG,
    _ConvBnRelu2d,
)
from cleanpose_model.ops import pointnet2 as ops
from cleanpose_model.ops.triton import pointnet2 as index_kernels
from cleanpose_model.ops.triton import sa as sa_triton

_SA_FIELDS = ("w1x", "w1f", "b1", "w2t", "b2", "w3t", "b3")
_FP_FIELDS = ("w1t", "b1", "w2t", "b2")


def _folded_layers(mlp: nn.Module) -> list[PointwiseLinear] | None:
    """The PointwiseLinear layers of a folded SharedMLP in order, if every one is followed by a ReLU
    and nothing else computes; None otherwise (not folded, or another structure)."""
    layers = []
    for m in mlp.modules():
        if isinstance(m, PointwiseLinear):
            layers.append(m)
        elif not isinstance(m, nn.Identity | nn.Sequential | _ConvBnRelu2d):
            return None
    if not layers or not all(lay.relu and lay.weight.dim() == 2 for lay in layers):
        return None
    return layers


def _pow2(counts: list[int]) -> bool:
    return all(n > 0 and not n & (n - 1) for n in counts)


def _out_width(mlp: nn.Module) -> int:
    """Output channels of a SharedMLP, folded or not."""
    return [p for p in mlp.parameters() if p.dim() >= 2][-1].shape[0]


class FusedSetAbstraction(SetAbstractionMSG):
    """`SetAbstractionMSG` whose ``centres`` and ``neighbours`` are one kernel each (``geometry_kernels``)
    and whose ``aggregate`` is one kernel launch for all radii (with a ``precision``; see module doc).
    ``launch``: a launch shape override (None: ops/triton/sa.py's default)."""

    def __init__(self, sa: SetAbstractionMSG, geometry_kernels: bool, precision: str | None) -> None:
        nn.Module.__init__(self)
        self.npoint, self.radii, self.nsamples = sa.npoint, list(sa.radii), list(sa.nsamples)
        self.mlps = sa.mlps  # shared
        self.geometry_kernels = geometry_kernels
        # The ball-query kernel serves a pair of radii with power-of-two neighbour counts (every MSG level).
        self.ball_kernel = geometry_kernels and len(self.radii) == 2 and _pow2(self.nsamples)
        self.precision = precision
        self.launch: sa_triton.Launch | None = None
        self._meta: tuple[int, int] | None = None
        if precision is None:
            return
        per_radius = [_folded_layers(m) for m in sa.mlps]
        if any(ls is None or len(ls) != 3 for ls in per_radius) or len(per_radius) not in (1, 2):
            return
        if not _pow2(self.nsamples):
            return
        widths = {tuple(lay.weight.shape for lay in ls) for ls in per_radius}
        hidden = max(per_radius[0][0].weight.shape[0], per_radius[0][1].weight.shape[0])
        if len(widths) != 1 or hidden > sa_triton.SA_MAX_HIDDEN:
            return
        c_in = per_radius[0][0].weight.shape[1] - 3
        packed = sa_triton.pack_sa_weights(
            [[(lay.weight, lay.bias) for lay in ls] for ls in per_radius], c_in
        )
        for name in _SA_FIELDS:
            self.register_buffer(f"k_{name}", getattr(packed, name), persistent=False)
        self._meta = (packed.c_in, packed.c_out)

    @property
    def uses_kernel(self) -> bool:
        """Whether the feature kernel runs this level."""
        return self._meta is not None

    def _weights(self) -> sa_triton.SAWeights:
        return sa_triton.SAWeights(*(getattr(self, f"k_{n}") for n in _SA_FIELDS), *self._meta)

    def centres(self, xyz: torch.Tensor) -> torch.Tensor:
        if not (self.geometry_kernels and xyz.shape[1] <= index_kernels.FPS_MAX_POINTS):
            return super().centres(xyz)
        # The torch FPS's selection rule in one launch instead of ~5 launches per iteration.
        rank = index_kernels.fps_tie_rank(xyz.shape[1], xyz.device)
        return index_kernels.fps_triton(xyz.float(), rank, self.npoint)[1]

    def neighbours(self, xyz: torch.Tensor, new_xyz: torch.Tensor) -> list[torch.Tensor]:
        if not self.ball_kernel:
            return super().neighbours(xyz, new_xyz)
        # Both radii in one pass with 8-centre tiles: faster than the tensor ops at every level on an H100
        # (fast forward 4.73 -> 4.21 ms at 6 objects), and none of their (B, M, N) temporaries (the 6-object
        # graph pool is ~80 MB smaller).
        r, ns = self.radii, self.nsamples
        return list(index_kernels.ball_query2_triton(new_xyz, xyz, (r[0], r[1]), (ns[0], ns[1])))

    def aggregate(
        self,
        xyz: torch.Tensor,
        new_xyz: torch.Tensor,
        groups: list[torch.Tensor],
        features: torch.Tensor | None,
    ) -> torch.Tensor:
        if self._meta is None:
            return super().aggregate(xyz, new_xyz, groups, features)
        w = self._weights()
        return sa_triton.set_abstraction(xyz, new_xyz, groups, features, w, self.precision, self.launch)


class FusedFeaturePropagation(FeaturePropagation):
    """`FeaturePropagation` with its three-NN as one kernel (``geometry_kernels``) and, with a
    ``precision``, its feature work as one kernel ("fused") or one kernel + cuBLAS products ("split").

    ``c_skip``: channels of the skip features (``unknown_feats``) the level was built for (the first
    layer's input is [interpolated known features, skip features]); ``channels_last``: return a view of
    a point-major buffer (for the next level) instead of a contiguous (B, C, N) tensor. ``mode``
    ("fused" / "split"), ``launch``: overrides (None: ops/triton/sa.py's choice)."""

    def __init__(
        self,
        fp: FeaturePropagation,
        c_skip: int,
        geometry_kernels: bool,
        precision: str | None,
        channels_last: bool = True,
    ) -> None:
        nn.Module.__init__(self)
        self.mlp = fp.mlp  # shared
        self.geometry_kernels = geometry_kernels
        self.precision = precision
        self.channels_last = channels_last
        self.mode: str | None = None
        self.launch: sa_triton.Launch | None = None
        self._meta: tuple[int, int, int, int] | None = None
        layers = _folded_layers(fp.mlp) if precision is not None else None
        if layers is None:
            return
        pairs = [(lay.weight, lay.bias) for lay in layers]
        c_known = layers[0].weight.shape[1] - c_skip
        # The second layer is packed only where fused mode can run (a 512-wide level would carry a
        # 1 MB copy that split mode never reads).
        fusable = len(pairs) == 2 and layers[0].weight.shape[0] <= sa_triton.FP_MAX_FUSED_HIDDEN
        packed = sa_triton.pack_fp_weights(pairs[:2] if fusable else pairs[:1], c_known, c_skip)
        for name in _FP_FIELDS:
            self.register_buffer(f"k_{name}", getattr(packed, name), persistent=False)
        self._meta = (packed.c_known, packed.c_skip, packed.c1, packed.c2)
        self._default_mode = sa_triton.fp_default_mode(pairs)
        # The layers after the first, for split mode: the folded modules' own parameters (not registered
        # here a second time; they live under self.mlp).
        self._later = tuple(layers[1:])

    @property
    def uses_kernel(self) -> bool:
        return self._meta is not None

    def _weights(self) -> sa_triton.FPWeights:
        return sa_triton.FPWeights(*(getattr(self, f"k_{n}") for n in _FP_FIELDS), *self._meta)

    def interpolation(self, unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not (self.geometry_kernels and 3 <= known.shape[1] <= index_kernels.THREE_NN_MAX_KNOWN):
            return super().interpolation(unknown, known)
        sq_dist, idx = index_kernels.three_nn_triton(unknown, known)
        return idx, ops.inverse_distance_weights(sq_dist)

    def propagate(
        self,
        known_feats: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor,
        unknown_feats: torch.Tensor | None,
    ) -> torch.Tensor:
        meta = self._meta
        if meta is None or (unknown_feats is None) != (meta[1] == 0) or known_feats.shape[1] != meta[0]:
            return super().propagate(known_feats, idx, weight, unknown_feats)
        mode = self.mode or self._default_mode
        return sa_triton.feature_propagation(
            known_feats,
            idx,
            weight,
            unknown_feats,
            self._weights(),
            self.precision,
            later_layers=[(lay.weight, lay.bias) for lay in self._later],
            mode=mode,
            channels_last=self.channels_last,
            launch=self.launch,
        )


class FusedPointNet2(PointNet2MSG):
    """`PointNet2MSG` with its levels in their inference forms (geometry and forward as published)."""

    def __init__(self, pn: PointNet2MSG, geometry_kernels: bool, precision: str | None = None) -> None:
        nn.Module.__init__(self)
        self.SA_modules = nn.ModuleList(
            FusedSetAbstraction(sa, geometry_kernels, precision) for sa in pn.SA_modules
        )
        # Skip features of FP level i are the level-i features: the input's (the first SA layer's input
        # less the 3 coordinates) for i = 0, else SA level i-1's output (its radii concatenated).
        first = next(p for p in pn.SA_modules[0].mlps[0].parameters() if p.dim() >= 2)
        widths = [first.shape[1] - 3] + [sum(_out_width(m) for m in sa.mlps) for sa in pn.SA_modules]
        self.FP_modules = nn.ModuleList(
            FusedFeaturePropagation(fp, widths[i], geometry_kernels, precision, channels_last=i > 0)
            for i, fp in enumerate(pn.FP_modules)
        )
