"""U-Net de-occlusion generator (de-occlusion paper, sec. 3.2, Fig. 2).

Images in and out are RGB in [-1, 1] (tanh output). Width and input size are parameters, so the
paper's 320x128 generator and a CPU-trainable 128x64 one are only different configs. With
``num_attributes > 0`` it is the paper's "Entire" variant (sec. 5.2): the attribute vector goes
through a fully connected layer, is reshaped to the bottleneck's spatial size and concatenated
there.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["UNetGenerator", "DoubleConv"]

DOWN_BLOCKS = 4  # sec. 3.2: "4 down-sampling blocks and a specular number of up-sampling components"


class DoubleConv(nn.Sequential):
    """2 x (3x3 conv + batch norm + ReLU); padding keeps the size so skips concatenate without cropping."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _Up(nn.Module):
    """x2 up-sampling, concatenation with the mirrored down-block's features, then DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, mode: str):
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
        else:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNetGenerator(nn.Module):
    """``G(I_occ[, A]) -> I_gen`` (eq. 1); see the module docstring for the conventions."""

    def __init__(
        self,
        base_channels: int = 32,
        image_size: tuple[int, int] = (128, 64),
        num_attributes: int = 0,
        attribute_channels: int = 8,
        upsample: Literal["transpose", "bilinear"] = "transpose",
        in_channels: int = 3,
        out_channels: int = 3,
        residual: bool = False,
    ):
        super().__init__()
        height, width = image_size
        factor = 2**DOWN_BLOCKS
        if height % factor or width % factor or height <= 0 or width <= 0:
            raise ValueError(
                f"image_size must be positive multiples of {factor} (4 poolings), got {image_size}"
            )
        if base_channels < 1 or num_attributes < 0:
            raise ValueError(
                f"base_channels must be >= 1 and num_attributes >= 0, got {base_channels}, {num_attributes}"
            )
        if upsample not in ("transpose", "bilinear"):
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {upsample!r}")
        self.image_size = (height, width)
        self.num_attributes = num_attributes
        widths = [base_channels * 2**i for i in range(DOWN_BLOCKS)]  # 1x, 2x, 4x, 8x
        self.down = nn.ModuleList()
        previous = in_channels
        for w in widths:
            self.down.append(DoubleConv(previous, w))
            previous = w
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bottleneck_size = (height // factor, width // factor)
        bottleneck_in = widths[-1]
        if num_attributes:
            # sec. 5.2 "Entire": attribute vector -> FC -> reshaped to the bottleneck size, joined there.
            self.attribute_fc = nn.Linear(
                num_attributes, attribute_channels * self.bottleneck_size[0] * self.bottleneck_size[1]
            )
            self.attribute_channels = attribute_channels
            bottleneck_in += attribute_channels
        self.bottleneck = DoubleConv(bottleneck_in, widths[-1])
        self.up = nn.ModuleList()
        previous = widths[-1]
        for w in reversed(widths):
            self.up.append(_Up(previous, w, w, upsample))
            previous = w
        self.head = nn.Sequential(nn.Conv2d(widths[0], out_channels, 1), nn.Tanh())  # 1x1 conv to RGB + tanh
        # Not in the paper: an optional global input skip, tanh(head(x) + atanh(I_occ)), with the 1x1
        # conv zero-initialised, so the untrained generator starts as the identity and training only
        # learns the correction of the occluded region (converges in the few thousand CPU iterations
        # we can afford; the paper's recipe trains from scratch on a GPU).
        self.residual = residual
        if residual:
            if in_channels != out_channels:
                raise ValueError("residual generators need in_channels == out_channels")
            nn.init.zeros_(self.head[0].weight)
            nn.init.zeros_(self.head[0].bias)

    def forward(self, images: torch.Tensor, attributes: torch.Tensor | None = None) -> torch.Tensor:
        skips = []
        x = images
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        if self.num_attributes:
            if attributes is None:
                raise ValueError(
                    f"this generator is attribute-conditioned: pass attributes (B, {self.num_attributes})"
                )
            a = self.attribute_fc(attributes.to(x.dtype)).view(
                x.shape[0], self.attribute_channels, self.bottleneck_size[0], self.bottleneck_size[1]
            )
            x = torch.cat([x, a], dim=1)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = block(x, skip)
        if self.residual:
            z = images.clamp(-1.0, 1.0) * 0.999
            # atanh(z) written out: the TorchScript ONNX exporter has no aten::atanh
            return self.head[1](self.head[0](x) + 0.5 * torch.log((1.0 + z) / (1.0 - z)))
        return self.head(x)

    def check_input(self, images: torch.Tensor) -> None:
        """Public entry-point validation (shape/size), kept out of ``forward`` so export traces cleanly."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[2:]) != self.image_size:
            raise ValueError(
                f"expected {self.image_size[0]}x{self.image_size[1]} images, got {tuple(images.shape[2:])}"
            )
