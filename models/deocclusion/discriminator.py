"""Image-level discriminator (de-occlusion paper, sec. 3.2; DCGAN-like, Radford et al.).

4 convolutions with 5x5 kernels (stride 2), batch norm before every LeakyReLU except the first,
then one output unit. ``forward`` returns the logit; ``probability`` applies the paper's sigmoid.
Losses use the logit (BCE-with-logits is the same objective, numerically stable).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Discriminator"]


class Discriminator(nn.Module):
    """``D(I) -> logit`` of I being a real (not generated) pedestrian image; no input concatenation."""

    def __init__(
        self, base_channels: int = 32, image_size: tuple[int, int] = (128, 64), in_channels: int = 3
    ):
        super().__init__()
        if base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {base_channels}")
        layers: list[nn.Module] = []
        previous = in_channels
        for i in range(4):
            width = base_channels * 2**i
            layers.append(nn.Conv2d(previous, width, 5, stride=2, padding=2, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            previous = width
        self.features = nn.Sequential(*layers)
        h, w = image_size
        for _ in range(4):
            h, w = (h + 1) // 2, (w + 1) // 2
        self.classifier = nn.Linear(previous * h * w, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).flatten(1)).squeeze(1)

    def probability(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(images))
