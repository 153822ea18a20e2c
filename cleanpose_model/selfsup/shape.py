"""Part-level Shape Reconstruction: the discrete shape memory (a VQ-VAE codebook with EMA updates and a
straight-through estimator), the MLP decoder from the N retrieved codes to a canonical point cloud, and the
PointNet that gives every reconstructed point a feature."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Quantized:
    """What the memory returns: ``z_q`` the codes with straight-through gradients (B,N,C), ``index`` (B,N)
    the code ids, ``codebook_loss`` ||sg[z_e] - e||^2 and ``commit_loss`` ||z_e - sg[e]||^2 (means)."""

    z_q: torch.Tensor
    index: torch.Tensor
    codebook_loss: torch.Tensor
    commit_loss: torch.Tensor


class ShapeMemory(nn.Module):
    """K codes of dimension C, kept as buffers: they move by exponential moving averages of the descriptors
    assigned to them (VQ-VAE's EMA variant), never by the optimizer, so the codebook term is reported but
    carries no gradient. ``update`` is explicit (``forward(..., update=True)``) so that evaluation, a frozen
    memory and the training loop's choice are all visible at the call site."""

    def __init__(self, size: int, dim: int, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.decay, self.eps = float(decay), float(eps)
        codes = torch.randn(size, dim)
        self.register_buffer("codes", codes)
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("code_sum", codes.clone())

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (L2) of every descriptor in ``z_e`` (..., C)."""
        flat = z_e.reshape(-1, z_e.shape[-1])
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codes.t() + self.codes.pow(2).sum(1)[None]
        return d.argmin(1).reshape(z_e.shape[:-1])

    @torch.no_grad()
    def ema_update(self, z_e: torch.Tensor, index: torch.Tensor) -> None:
        """Move each code toward the mean of the descriptors assigned to it (Laplace-smoothed counts keep
        unused codes finite; they stay where they are)."""
        flat = z_e.detach().reshape(-1, z_e.shape[-1]).to(self.codes.dtype)
        onehot = F.one_hot(index.reshape(-1), self.codes.shape[0]).to(flat.dtype)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.code_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codes.shape[0] * self.eps) * n
        self.codes.copy_(self.code_sum / smoothed[:, None])

    def forward(self, z_e: torch.Tensor, update: bool = False) -> Quantized:
        index = self.nearest(z_e.detach())
        e = self.codes[index]
        codebook_loss = F.mse_loss(e, z_e.detach())
        commit_loss = F.mse_loss(z_e, e.detach())
        if update:
            self.ema_update(z_e, index)
        # Straight-through: the forward value is the code, the gradient reaches z_e unchanged.
        z_q = z_e + (e - z_e).detach()
        return Quantized(z_q, index, codebook_loss, commit_loss)


def mlp(widths: list[int], last_act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2 or last_act:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ShapeDecoder(nn.Module):
    """Three-layer MLP: the N concatenated codes (and, when category-conditioned, a one-hot category) ->
    ``n_points`` canonical points (NOCS frame: box-centred, diagonal 1)."""

    def __init__(self, n_patches: int, code_dim: int, n_cat: int, hidden: list[int], n_points: int):
        super().__init__()
        self.n_cat, self.n_points = n_cat, n_points
        self.net = mlp([n_patches * code_dim + n_cat, *hidden, n_points * 3])

    def forward(self, z_q: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        g = z_q.flatten(1)
        if self.n_cat:
            g = torch.cat([g, F.one_hot(category, self.n_cat).to(g.dtype)], 1)
        return self.net(g).reshape(-1, self.n_points, 3)


class PointNetFeatures(nn.Module):
    """PointNet: a shared per-point MLP, a max-pooled global feature concatenated back to every point, and a
    per-point head to ``out_dim``: each point becomes a descriptor of its neighbourhood and of the shape."""

    def __init__(self, widths: list[int], out_dim: int):
        super().__init__()
        self.local = mlp([3, *widths], last_act=True)
        self.head = mlp([2 * widths[-1], widths[-1], out_dim])

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        f = self.local(pts)
        g = f.max(1, keepdim=True).values.expand_as(f)
        return self.head(torch.cat([f, g], -1))
