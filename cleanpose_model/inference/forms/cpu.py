"""The CPU inference form: products through oneDNN with weights packed once at build (the builder binds it
when the network is on the CPU, in the exact mode, the only CPU mode).

On the CPU the forward is bound by its products (DINOv2's 48 linear layers are about half of it), and
ATen's ``addmm`` re-lays the weight out for the BLAS on every call. oneDNN's ``_linear_pointwise`` with a
weight reordered once into its blocked layout skips that and takes the bias and, for DINOv2's fc1, the erf
GELU in the same call. fp32 weights and activations: only the summation order differs from the reference
(the parity check holds: test/cleanpose_model/inference/forms/test_cpu_forms.py).

Why no CPU fast mode: bf16 products (AVX-512 BF16, fp32 accumulation) in DINOv2 alone already leave the
fast mode's pose budget (0.5 deg, 1 mm, 1 mm vs fp32): fc1 alone in bf16 moved the parity inputs' poses by
up to 0.44 deg and 1.57 mm, all four DINOv2 products by 0.31 deg / 1.65 mm on six synthetic objects, for
1.1-1.3x (docs/results/cpu/forward.md).

`PackedLinear` replaces an ``nn.Linear``; `CpuDinoV2` replaces the ViT (the function of
`forms/dinov2.FastDinoV2` in fp32, with packed products). Weights are a snapshot taken at construction.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cleanpose_model.nn.dinov2 import DinoVisionTransformer
from cleanpose_model.ops import layernorm


def have_onednn() -> bool:
    """oneDNN's packed linear is in this torch build (x86 CPU builds have it)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def pack(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` (out, in) in ``dtype`` reordered once into oneDNN's layout for `linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype).contiguous())


def linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False
) -> torch.Tensor:
    """``x @ W.T + bias`` (then erf GELU) with a weight from `pack`; x: (..., in) in the packed dtype."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu" if gelu else "none", [], "none")


class PackedLinear(nn.Module):
    """``lin``'s forward through `linear` with its weight packed in fp32 (the bias stays the shared
    parameter)."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.register_buffer("packed", pack(lin.weight, torch.float32), persistent=False)
        # Shared with the reference: forms that read a layer's weight directly (forms/attention.py's FFN)
        # keep working on the ATen path.
        self.weight, self.bias = lin.weight, lin.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x.contiguous(), self.packed, self.bias)


def pack_linears(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.Linear`` below it replaced by a `PackedLinear`: shallow copies along the
    paths to them (parameters shared), so ``module`` itself, which may be the reference's, is untouched."""
    children = {}
    for name, child in module.named_children():
        if isinstance(child, CpuDinoV2):  # packs its own products; its ViT is kept for the positions only
            continue
        new = PackedLinear(child) if type(child) is nn.Linear else pack_linears(child)
        if new is not child:
            children[name] = new
    if not children:
        return module
    clone = copy.copy(module)
    clone._modules = {**module._modules, **children}
    return clone


class CpuDinoV2(nn.Module):
    """``vit``'s forward (pre-norm tokens, (B, 1 + patches, C) float32) with fp32 packed products."""

    def __init__(self, vit: DinoVisionTransformer) -> None:
        super().__init__()
        self.vit = vit  # shared: positional-table interpolation only
        dt = torch.float32
        self.patch_size = vit.patch_size
        self.num_heads = vit.blocks[0].attn.num_heads
        self.eps = vit.blocks[0].norm1.eps
        conv = vit.patch_embed.proj  # a Conv2d, or fold_for_inference's PatchLinear (same weight)
        w = conv.weight.detach()
        self.patch_weight = pack(w.reshape(w.shape[0], -1), dt)
        self.patch_bias = conv.bias.detach().to(dt)
        self.cls_token = vit.cls_token.detach().float().reshape(-1).clone()
        self.blocks = []
        for b in vit.blocks:
            self.blocks.append(
                {
                    "qkv": (pack(b.attn.qkv.weight, dt), b.attn.qkv.bias.detach()),
                    "proj": (pack(b.attn.proj.weight, dt), b.attn.proj.bias.detach()),
                    "fc1": (pack(b.mlp.fc1.weight, dt), b.mlp.fc1.bias.detach()),
                    "fc2": (pack(b.mlp.fc2.weight, dt), b.mlp.fc2.bias.detach()),
                    "norm1": (b.norm1.weight.detach(), b.norm1.bias.detach()),
                    "norm2": (b.norm2.weight.detach(), b.norm2.bias.detach()),
                    "ls1": b.ls1.gamma.detach(),
                    "ls2": b.ls2.gamma.detach(),
                }
            )
        self._base_cache: dict = {}

    def _base(self, h: int, w: int, n_tok: int) -> torch.Tensor:
        """(n_tok, C) fp32: class token + its position in row 0, the patches' positions below; per size."""
        key = (h, w)
        base = self._base_cache.get(key)
        if base is None:
            probe = torch.empty(1, n_tok, self.cls_token.shape[0], device="meta")
            with torch.no_grad():
                pos = self.vit.interpolate_pos_encoding(probe, h, w)[0].float()
            base = pos.clone()
            base[0] = self.cls_token + pos[0]
            self._base_cache[key] = base
        return base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> pre-norm tokens (B, 1 + H/p * W/p, C) float32, class token first."""
        b, ch, h, w = x.shape
        p, dt, eps = self.patch_size, torch.float32, self.eps
        gh, gw = h // p, w // p
        n_tok = gh * gw + 1
        c = self.cls_token.shape[0]
        patches = torch.empty(b, gh, gw, ch, p, p, dtype=dt)
        patches.copy_(
            x[:, :, : gh * p, : gw * p].unflatten(2, (gh, p)).unflatten(4, (gw, p)).permute(0, 2, 4, 1, 3, 5)
        )
        emb = linear(patches.view(b * gh * gw, -1), self.patch_weight, self.patch_bias)
        blk = self.blocks
        res, xn = layernorm.embed_layer_norm_math(
            emb.view(b, gh * gw, c), self._base(h, w, n_tok), *blk[0]["norm1"], eps, dt
        )
        res, xn = res.view(b * n_tok, c), xn.view(b * n_tok, c)
        heads = self.num_heads
        for i, k in enumerate(blk):
            qkv = linear(xn, *k["qkv"])
            q, kk, v = qkv.view(b, n_tok, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(q, kk, v).transpose(1, 2).reshape(b * n_tok, c)
            y = linear(att, *k["proj"])
            xn = layernorm.residual_layer_norm_math(res, y, k["ls1"], *k["norm2"], eps, dt)
            y = linear(linear(xn, *k["fc1"], gelu=True), *k["fc2"])
            nxt = blk[i + 1]["norm1"] if i + 1 < len(blk) else (None, None)
            xn = layernorm.residual_layer_norm_math(res, y, k["ls2"], *nxt, eps, dt)
        return res.view(b, n_tok, c)
