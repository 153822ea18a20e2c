"""Inference form of the front-door encoder (nn/front_door.py): one product for both input projections, the
self- and cross-attention branches on two CUDA streams (which a CUDA graph replays concurrently), the
transformer stacks in their inference forms (forms/attention.py) and, when built with ``gate_kernel``
(the fast mode), the gated blend at the end (sum of the branches, LayerNorm, gate, blend) as one Triton
kernel (`ops/triton/head_tails.py`)."""

from __future__ import annotations

import torch
from torch import nn

from cleanpose_model.inference.forms.attention import FusedAttnLayer, FusedSelfAttnLayer, linear_product
from cleanpose_model.nn.front_door import FrontDoorEncoder
from cleanpose_model.ops.head_tails import front_door_gate_torch
from cleanpose_model.ops.triton.head_tails import front_door_gate_triton, gate_supported


class FusedFrontDoor(nn.Module):
    def __init__(self, fd: FrontDoorEncoder, precision: str | None, gate_kernel: bool = False) -> None:
        super().__init__()
        self.fd = fd
        self.self_attn_layer = FusedSelfAttnLayer(fd.self_attn_layer, precision)
        self.cross_attn_layer = FusedAttnLayer(fd.cross_attn_layer, precision)
        self.gate_kernel = gate_kernel
        self._linear = linear_product(precision)
        w = torch.cat([fd.mlp_local.weight, fd.mlp_global.weight])
        b = torch.cat([fd.mlp_local.bias, fd.mlp_global.bias])
        self.register_buffer("in_weight", w.detach().clone(), persistent=False)
        self.register_buffer("in_bias", b.detach().clone(), persistent=False)
        self._side: torch.cuda.Stream | None = None

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        if self._side is None or self._side.device != device:
            self._side = torch.cuda.Stream(device)
        return self._side

    def forward(self, local_feat: torch.Tensor, global_feat: torch.Tensor) -> torch.Tensor:
        fd = self.fd
        c = local_feat.shape[-1]
        both = self._linear(local_feat, self.in_weight, self.in_bias)
        loc, glob = both[..., :c], both[..., c:]
        if local_feat.is_cuda:
            main = torch.cuda.current_stream(local_feat.device)
            side = self._side_stream(local_feat.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                s = self.self_attn_layer(loc)
            x = self.cross_attn_layer(glob, global_feat)
            main.wait_stream(side)
            if not torch.cuda.is_current_stream_capturing():
                # s was allocated on the side stream and is read here: keep its block from being reused early.
                s.record_stream(main)
                both.record_stream(side)
        else:
            s = self.self_attn_layer(loc)
            x = self.cross_attn_layer(glob, global_feat)
        if self.gate_kernel and gate_supported(s, x, local_feat):
            return front_door_gate_triton(s, x, local_feat, fd.ln, fd.aug_linear, fd.ori_linear)
        return front_door_gate_torch(s, x, local_feat, fd.ln, fd.aug_linear, fd.ori_linear)
