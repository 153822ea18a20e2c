"""The image side: a ResNet18-style encoder (own code: BasicBlocks, two per stage, strides 4/8/16/32) and a
small U-Net decoder that returns the region-level (F2, stride 16) and pixel-level (F3, stride 4) feature
maps the correspondence levels compare with point features. The encoder's last map (stride 32) is what the
shape memory patchifies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = None
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.skip is None else self.skip(x)))


class ResNetEncoder(nn.Module):
    """ResNet18 layout (stem 7x7/2 + max-pool, four stages of two BasicBlocks); ``widths`` per stage (the
    original is 64, 128, 256, 512). Returns the four stage outputs at strides 4, 8, 16, 32."""

    def __init__(self, widths: list[int]):
        super().__init__()
        w = list(widths)
        self.stem = nn.Sequential(
            nn.Conv2d(3, w[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, c_in = [], w[0]
        for i, c in enumerate(w):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, c, stride), BasicBlock(c, c)))
            c_in = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class UpFuse(nn.Module):
    """U-Net step: upsample the coarser map x2, concatenate the encoder's skip map, 3x3 conv + BN + ReLU."""

    def __init__(self, c_coarse: int, c_skip: int, c_out: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c_coarse + c_skip, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)
        )

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([up, skip], 1))


class ImageBackbone(nn.Module):
    """Encoder + U-Net: ``forward`` -> (last encoder map F (stride 32), F2 (B,C,h2,w2) at stride 16,
    F3 (B,C,h3,w3) at stride 4), F2 and F3 projected to ``feat_dim`` for the cosine similarities."""

    def __init__(self, widths: list[int], feat_dim: int):
        super().__init__()
        w = list(widths)
        self.encoder = ResNetEncoder(w)
        self.up16 = UpFuse(w[3], w[2], feat_dim)
        self.up8 = UpFuse(feat_dim, w[1], feat_dim)
        self.up4 = UpFuse(feat_dim, w[0], feat_dim)
        self.head2 = nn.Conv2d(feat_dim, feat_dim, 1)
        self.head3 = nn.Conv2d(feat_dim, feat_dim, 1)

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c4, c8, c16, c32 = self.encoder(rgb)
        d16 = self.up16(c32, c16)
        d4 = self.up4(self.up8(d16, c8), c4)
        return c32, self.head2(d16), self.head3(d4)
