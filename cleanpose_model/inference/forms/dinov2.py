"""DINOv2's half-precision inference form: the autocast forward's arithmetic in a third of its launches.

The fast mode ran the published ViT under fp16 autocast: ~23 kernels per block (casts of every weight and
bias on every call, casts of the normalised activations, LayerNorm, the LayerScale multiply and the residual
add as separate kernels, GELU as its own kernel), ~284 in all, which at 1-6 objects cost far more in launch
latency than the products themselves. `FastDinoV2` runs the same function with seven launches per block:

- the linear weights (patch embedding, qkv, proj, fc1, fc2) and biases cast once, at construction, to the
  half dtype (buffers of this module; the published module is untouched);
- each product with its bias in the GEMM epilogue (``addmm``), fc1 with GELU there too
  (``_addmm_activation``);
- attention by ``scaled_dot_product_attention`` on strided q/k/v views of the qkv output (the flash kernel
  reads them in place and writes (B, N, heads, dim), so the proj input is a view);
- the residual update ``res += gamma * y`` and the next LayerNorm as one kernel
  (`ops/triton/layernorm.py`; ``use_triton=False``: their torch references, `ops/layernorm.py`), and
  likewise class token + patch embedding + positions and block 0's norm.
  The patch embedding is a product on the image's patches (one copy gathers and casts them).

Numerics match autocast's: products in the half dtype with fp32 accumulation, the residual stream, the
LayerScale product and the norms in fp32, tokens returned in fp32. One difference: on CUDA the GELU epilogue
of cuBLASLt is the tanh approximation (|gelu_erf - gelu_tanh| <= 4.7e-4, at x ~ 2.7 where an fp16 step is
2e-3), not the erf form of ``nn.GELU``.

Weights are a snapshot: build the module after loading the checkpoint (the inference builder does). The
module keeps the ViT only for its positional-table interpolation, cached here per input size.

`ExactDinoV2` is the same module in fp32 for the exact mode on CUDA: every product to float32 accuracy on
tensor cores (3xTF32, ``ops/triton/linear.py``).

`AutocastBackbone` is the published ViT under autocast: the fast mode's backbone under ``torch.compile``,
which does its own fusion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cleanpose_model.nn.dinov2 import DinoVisionTransformer
from cleanpose_model.ops import layernorm
from cleanpose_model.ops.triton import layernorm as layernorm_triton
from cleanpose_model.ops.triton.attention import attention_triton
from cleanpose_model.ops.triton.linear import linear_triton


class FastDinoV2(nn.Module):
    """``vit``'s forward (pre-norm tokens, (B, 1 + patches, C) float32) with half-precision products.

    dtype: fp16 or bf16. use_triton: the fused norm kernels (CUDA, or Triton's interpreter on the CPU), else
    their torch forms."""

    DTYPES = (torch.float16, torch.bfloat16)

    def __init__(self, vit: DinoVisionTransformer, dtype: torch.dtype, *, use_triton: bool) -> None:
        super().__init__()
        if dtype not in self.DTYPES:
            raise ValueError(f"dtype must be one of {self.DTYPES}, got {dtype}")
        self.vit = vit  # shared: positional-table interpolation only
        self.dtype = dtype
        self.use_triton = use_triton
        lib = layernorm_triton if use_triton else None
        self._embed_ln = lib.embed_layer_norm_triton if lib else layernorm.embed_layer_norm_math
        self._residual_ln = lib.residual_layer_norm_triton if lib else layernorm.residual_layer_norm_math
        self.patch_size = vit.patch_size
        self.num_heads = vit.blocks[0].attn.num_heads
        self.eps = vit.blocks[0].norm1.eps
        blocks = vit.blocks

        def half(ts):
            return torch.stack([t.detach() for t in ts]).to(dtype).contiguous()

        def full(ts):
            return torch.stack([t.detach() for t in ts]).float().contiguous()

        def buf(name: str, t: torch.Tensor) -> None:
            self.register_buffer(name, t, persistent=False)

        # a Conv2d, or the PatchLinear that fold_for_inference puts in its place (same weight, flattened)
        conv = vit.patch_embed.proj
        w = conv.weight.detach()
        buf("patch_weight", w.reshape(w.shape[0], -1).to(dtype).contiguous())
        buf("patch_bias", conv.bias.detach().to(dtype).contiguous())
        buf("cls_token", vit.cls_token.detach().float().reshape(-1).clone())
        # one (depth, ...) buffer per parameter: indexing a block's weights is a view, no launch
        buf("qkv_weight", half(b.attn.qkv.weight for b in blocks))
        buf("qkv_bias", half(b.attn.qkv.bias for b in blocks))
        buf("proj_weight", half(b.attn.proj.weight for b in blocks))
        buf("proj_bias", half(b.attn.proj.bias for b in blocks))
        buf("fc1_weight", half(b.mlp.fc1.weight for b in blocks))
        buf("fc1_bias", half(b.mlp.fc1.bias for b in blocks))
        buf("fc2_weight", half(b.mlp.fc2.weight for b in blocks))
        buf("fc2_bias", half(b.mlp.fc2.bias for b in blocks))
        buf("norm1_weight", full(b.norm1.weight for b in blocks))
        buf("norm1_bias", full(b.norm1.bias for b in blocks))
        buf("norm2_weight", full(b.norm2.weight for b in blocks))
        buf("norm2_bias", full(b.norm2.bias for b in blocks))
        buf("ls1", full(b.ls1.gamma for b in blocks))
        buf("ls2", full(b.ls2.gamma for b in blocks))
        self._base_cache: dict = {}

    def _base(self, h: int, w: int, n_tok: int, device: torch.device) -> torch.Tensor:
        """(n_tok, C) fp32: class token + its position in row 0, the patches' positions below. Computed once
        per input size (the bicubic resize is slow), in the warm-up passes that precede graph capture."""
        key = (h, w, device)
        base = self._base_cache.get(key)
        if base is None:
            c = self.cls_token.shape[0]
            probe = torch.empty(1, n_tok, c, device="meta")  # the resize reads only its shape and dtype
            with torch.no_grad():
                pos = self.vit.interpolate_pos_encoding(probe, h, w)[0].float().to(device)
            base = pos.clone()
            base[0] = self.cls_token.to(device) + pos[0]
            self._base_cache[key] = base
        return base

    def _product(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.addmm(bias, x, weight.t())

    def _mlp_hidden(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return torch._addmm_activation(self.fc1_bias[i], x, self.fc1_weight[i].t(), use_gelu=True)

    def _attend(self, qkv: torch.Tensor, b: int, n_tok: int) -> torch.Tensor:
        """qkv (B * N, 3C) -> attention output (B * N, C), heads side by side as proj expects."""
        c = qkv.shape[1] // 3
        h = self.num_heads
        q, k, v = qkv.view(b, n_tok, 3, h, c // h).permute(2, 0, 3, 1, 4)
        # (B, heads, N, dim) whose memory is (B, N, heads, dim) for the flash kernel: the reshape is a view
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * n_tok, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> pre-norm tokens (B, 1 + H/p * W/p, C) float32, class token first."""
        b, ch, h, w = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        n_tok = gh * gw + 1
        c = self.cls_token.shape[0]
        dt, eps = self.dtype, self.eps
        # patch gather + cast in one copy; the stride-p convolution is then a plain product
        patches = torch.empty(b, gh, gw, ch, p, p, device=x.device, dtype=dt)
        patches.copy_(
            x[:, :, : gh * p, : gw * p].unflatten(2, (gh, p)).unflatten(4, (gw, p)).permute(0, 2, 4, 1, 3, 5)
        )
        emb = self._product(patches.view(b * gh * gw, -1), self.patch_weight, self.patch_bias)
        base = self._base(h, w, n_tok, x.device)
        res, xn = self._embed_ln(
            emb.view(b, gh * gw, c), base, self.norm1_weight[0], self.norm1_bias[0], eps, dt
        )
        res, xn = res.view(b * n_tok, c), xn.view(b * n_tok, c)
        depth = self.qkv_weight.shape[0]
        for i in range(depth):
            qkv = self._product(xn, self.qkv_weight[i], self.qkv_bias[i])
            y = self._product(self._attend(qkv, b, n_tok), self.proj_weight[i], self.proj_bias[i])
            xn = self._residual_ln(res, y, self.ls1[i], self.norm2_weight[i], self.norm2_bias[i], eps, dt)
            y = self._product(self._mlp_hidden(i, xn), self.fc2_weight[i], self.fc2_bias[i])
            last = i == depth - 1
            nw = None if last else self.norm1_weight[i + 1]
            nb = None if last else self.norm1_bias[i + 1]
            xn = self._residual_ln(res, y, self.ls2[i], nw, nb, eps, dt)
        return res.view(b, n_tok, c)


class ExactDinoV2(FastDinoV2):
    """``vit``'s forward in fp32 for the exact mode on CUDA: `FastDinoV2`'s seven launches per block with
    every product (patch embedding, qkv, proj, fc1 + erf GELU, fc2, and attention's two) computed to
    float32 accuracy on tensor cores by three TF32 products (``ops/triton/linear.py``,
    ``ops/triton/attention.py`` in "tf32x3"), the norms and the residual stream in fp32 as in the
    reference. Needs Triton (CUDA, or the interpreter on the CPU)."""

    DTYPES = (torch.float32,)

    def __init__(self, vit: DinoVisionTransformer) -> None:
        super().__init__(vit, torch.float32, use_triton=True)

    def _product(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return linear_triton(x, weight, bias, precision="tf32x3")

    def _mlp_hidden(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return linear_triton(x, self.fc1_weight[i], self.fc1_bias[i], activation="gelu", precision="tf32x3")

    def _attend(self, qkv: torch.Tensor, b: int, n_tok: int) -> torch.Tensor:
        c = qkv.shape[1] // 3
        q, k, v = qkv.view(b, n_tok, 3 * c).split(c, dim=2)  # read in place by the kernel
        out = attention_triton(q, k, v, heads=self.num_heads, precision="tf32x3")
        return out.view(b * n_tok, c)


class AutocastBackbone(nn.Module):
    """Runs the wrapped backbone under autocast and hands float32 tokens to the rest."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=self.dtype):
            out = self.inner(x)
        return out.float()
