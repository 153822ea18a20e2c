"""ULIP-2 PointBERT point encoder (``PointTransformer``, ULIP ``models/pointbert/point_encoder.py``),
rebuilt in
plain torch with the ULIP parameter names so a ``point_encoder.*`` state_dict loads strictly (training.md
§4.2).

Config ``PointTransformer_8192point.yaml``: trans_dim 384, depth 12, drop_path_rate 0.1, 6 heads, group_size
32,
num_group 512, encoder_dims 256. Output: concat[CLS token, max over group tokens] after the final LayerNorm
(768).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from cleanpose_model.ops.pointnet2 import furthest_point_sample, gather_points, pairwise_sq_dist


@dataclass
class PointBertConfig:
    trans_dim: int = 384
    depth: int = 12
    drop_path_rate: float = 0.1
    num_heads: int = 6
    group_size: int = 32
    num_group: int = 512
    encoder_dims: int = 256

    @property
    def out_dim(self) -> int:
        return 2 * self.trans_dim


class DropPath(nn.Module):
    """Stochastic depth per sample (timm semantics). Active in train mode, which the published teacher is."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Group(nn.Module):
    """FPS centers (CUDA-kernel semantics, incl. the near-origin skip) + kNN neighbourhoods relative to
    them."""

    def __init__(self, num_group: int, group_size: int):
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size

    def forward(self, xyz):
        center = gather_points(xyz, furthest_point_sample(xyz.float(), self.num_group))  # (B, G, 3)
        d2 = pairwise_sq_dist(center, xyz)  # (B, G, N)
        # ULIP uses topk(largest=False, sorted=False); the subsequent max-pooling makes the order irrelevant.
        idx = d2.topk(self.group_size, dim=-1, largest=False, sorted=False).indices  # (B, G, S)
        bsz, g, s = idx.shape
        nb = torch.gather(xyz, 1, idx.reshape(bsz, g * s, 1).expand(-1, -1, 3)).view(bsz, g, s, 3)
        return nb - center[:, :, None, :], center


class Encoder(nn.Module):
    """Mini-PointNet per group (names ``first_conv`` / ``second_conv`` as in ULIP)."""

    def __init__(self, encoder_channel: int):
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Conv1d(512, encoder_channel, 1),
        )

    def forward(self, groups):
        bsz, g, n, _ = groups.shape
        x = groups.reshape(bsz * g, n, 3).transpose(2, 1)
        f = self.first_conv(x)  # (BG, 256, n)
        fg = f.max(dim=2, keepdim=True).values
        f = torch.cat([fg.expand(-1, -1, n), f], dim=1)
        f = self.second_conv(f)
        return f.max(dim=2).values.reshape(bsz, g, self.encoder_channel)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, drop_path_rate: float):
        super().__init__()
        rates = [float(r) for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([Block(dim, num_heads, rates[i]) for i in range(depth)])

    def forward(self, x, pos):
        for block in self.blocks:
            x = block(x + pos)  # position re-added before every block (ULIP PointBERT)
        return x


class PointTransformer(nn.Module):
    def __init__(self, cfg: PointBertConfig | None = None):
        super().__init__()
        cfg = cfg or PointBertConfig()
        self.cfg = cfg
        self.group_divider = Group(cfg.num_group, cfg.group_size)
        self.encoder = Encoder(cfg.encoder_dims)
        self.reduce_dim = nn.Linear(cfg.encoder_dims, cfg.trans_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, cfg.trans_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, cfg.trans_dim))
        self.blocks = TransformerEncoder(cfg.trans_dim, cfg.depth, cfg.num_heads, cfg.drop_path_rate)
        self.norm = nn.LayerNorm(cfg.trans_dim)

    def forward(self, pts):
        """pts (B, N, 3), xyz only, metres, as the student sees them (centered + augmented) → (B, 768)."""
        neighborhood, center = self.group_divider(pts)
        tokens = self.reduce_dim(self.encoder(neighborhood))
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center)], dim=1)
        x = self.norm(self.blocks(x, pos))
        return torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)
