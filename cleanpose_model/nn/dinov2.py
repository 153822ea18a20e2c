"""DINOv2 ViT feature extractor (ViT-S/14 by default), returning pre-norm tokens.

Own implementation of the hub model's structure so that the published `rgb_extractor.*`
weights load by name and nothing is fetched at run time. CleanPose uses the tokens after
the last block *before* the final LayerNorm (`x_prenorm`), so `forward` returns those;
`norm` exists only so checkpoints load strictly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cleanpose_model.config import DinoConfig


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, H*W, D), row-major patches


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, cfg: DinoConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(dim, cfg.num_heads)
        self.ls1 = LayerScale(dim, cfg.init_values)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.ls2 = LayerScale(dim, cfg.init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    def __init__(self, cfg: DinoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        grid = cfg.img_size // cfg.patch_size
        self.patch_size = cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # unused; kept for strict loading
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Positional embedding for an h x w input, resized like the hub model.

        The hub code passes a *scale factor* (grid + offset) / stored grid to a bicubic
        `F.interpolate`; PyTorch then maps output pixels with that scale, not with
        out/in sizes, so a `size=` call would give different numbers.
        """
        n_patch = x.shape[1] - 1
        n_stored = self.pos_embed.shape[1] - 1
        if n_patch == n_stored and w == h:
            return self.pos_embed
        # The resized table depends only on the weights and the input size, and the bicubic kernel
        # is slow (~0.9 ms on an H200, as much as a third of a fast forward), so it is cached until
        # the table changes (version counter, storage) -- but never while gradients flow into it.
        key = (h, w, x.dtype, self.pos_embed.device, self.pos_embed._version, self.pos_embed.data_ptr())
        cacheable = not (torch.is_grad_enabled() and self.pos_embed.requires_grad)
        cached = self.__dict__.get("_pos_cache")
        if cacheable and cached is not None and cached[0] == key:
            return cached[1]
        out = self._resize_pos_embed(x, h, w, n_stored)
        if cacheable:
            self.__dict__["_pos_cache"] = (key, out)
        return out

    def _resize_pos_embed(self, x: torch.Tensor, h: int, w: int, n_stored: int) -> torch.Tensor:
        pos = self.pos_embed.float()
        cls_pos = pos[:, 0]
        patch_pos = pos[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size, h // self.patch_size
        m = int(math.sqrt(n_stored))
        if m * m != n_stored:
            raise ValueError(f"stored positional embedding has {n_stored} patches, not a square grid")
        kwargs: dict = {}
        if self.cfg.interpolate_offset:
            sx = float(w0 + self.cfg.interpolate_offset) / m
            sy = float(h0 + self.cfg.interpolate_offset) / m
            kwargs["scale_factor"] = (sx, sy)
        else:
            kwargs["size"] = (w0, h0)
        patch_pos = F.interpolate(
            patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.cfg.interpolate_antialias,
            **kwargs,
        )
        if patch_pos.shape[-2:] != (w0, h0):
            got = tuple(patch_pos.shape[-2:])
            raise RuntimeError(f"pos-embed interpolation gave {got}, expected {(w0, h0)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((cls_pos.unsqueeze(0), patch_pos), dim=1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> pre-norm tokens (B, 1 + H/p * W/p, D), class token first."""
        _, _, h, w = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(tokens, h, w)
        for blk in self.blocks:
            tokens = blk(tokens)
        return tokens
