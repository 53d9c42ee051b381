"""A small residual super-resolution network for person crops (G^S of the reconstruction paper, sec. 3.3).

The paper's G^S is a DCGAN-style encoder-decoder (3 strided convs 256-1024, 5 transposed convs);
far too heavy for a CPU. This is an EDSR-style body (Lim et al. 2017: conv head, residual blocks
without batch norm, a long skip) working entirely at the low resolution, and an ESPCN-style
up-sampler (Shi et al. 2016: one conv to ``3 * r^2`` channels, then a pixel shuffle). The output is
``interpolate(I^L, r) + residual``: the last conv starts at zero, so the untrained network *is*
plain bicubic (or bilinear) up-sampling and training only has to learn the missing detail.

Images are float RGB in [0, 1], (B, 3, h, w) in, (B, 3, r*h, r*w) out (not clamped; the predictor
clamps when it converts to uint8).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResidualBlock", "SuperResolutionNet", "interpolate"]

Interpolation = Literal["bicubic", "bilinear"]


def interpolate(images: torch.Tensor, scale: int, mode: Interpolation = "bicubic") -> torch.Tensor:
    """Plain ``scale``x up-sampling (half-pixel centres, like OpenCV's resize): the global skip."""
    return F.interpolate(images, scale_factor=scale, mode=mode, align_corners=False)


class ResidualBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3, scaled and added to the input (EDSR block, no batch norm)."""

    def __init__(self, channels: int, res_scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x), inplace=True))


class SuperResolutionNet(nn.Module):
    """``I^L`` (B, 3, h, w) in [0, 1] -> ``I^H`` estimate (B, 3, scale*h, scale*w).

    ``channels`` features, ``blocks`` residual blocks, one pixel-shuffle up-sampler by ``scale``
    and a global ``skip`` interpolation of the input (sec. 3.3's G^S, CPU-sized; see module doc).
    """

    def __init__(
        self,
        scale: int = 4,
        channels: int = 32,
        blocks: int = 6,
        res_scale: float = 1.0,
        skip: Interpolation = "bicubic",
    ):
        super().__init__()
        if scale < 2:
            raise ValueError(f"scale must be >= 2, got {scale}")
        if channels < 1 or blocks < 0:
            raise ValueError(f"channels must be >= 1 and blocks >= 0, got {channels} and {blocks}")
        self.scale = scale
        self.skip = skip
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(channels, res_scale) for _ in range(blocks)])
        self.body_tail = nn.Conv2d(channels, channels, 3, padding=1)
        # ESPCN sub-pixel layer: 3 * r^2 channels rearranged into an r-times larger image.
        self.upsample = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        nn.init.zeros_(self.upsample.weight)  # untrained net == interpolate(x, scale, skip)
        nn.init.zeros_(self.upsample.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, h, w) images, got shape {tuple(images.shape)}")
        features = self.head(images - 0.5)
        features = features + self.body_tail(self.body(features))  # EDSR long skip
        return interpolate(images, self.scale, self.skip) + self.shuffle(self.upsample(features))
