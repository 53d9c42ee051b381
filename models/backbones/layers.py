"""Reusable convolution blocks of OSNet (Zhou et al., "Omni-Scale Feature Learning for Person
Re-Identification", ICCV 2019, sec. 3).

Attribute names follow torchreid's ``osnet.py`` so its published state dicts load unchanged
(``conv1.conv.weight``, ``conv2.0.conv2a.conv1.weight``, ``...gate.fc1.weight``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvLayer", "Conv1x1", "Conv1x1Linear", "LightConv3x3", "ChannelGate", "OSBlock"]


class ConvLayer(nn.Module):
    """Convolution + BatchNorm (or affine InstanceNorm) + ReLU; the OSNet stem uses a 7x7 one."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        instance_norm: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False, groups=groups
        )
        self.bn = (
            nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else nn.BatchNorm2d(out_channels)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1(nn.Module):
    """Pointwise convolution + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, 1, stride=stride, padding=0, bias=False, groups=groups
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1Linear(nn.Module):
    """Pointwise convolution + BN without a non-linearity (OSNet's block output / shortcut)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class LightConv3x3(nn.Module):
    """Lite 3x3 convolution: pointwise 1x1 then depthwise 3x3, BN, ReLU (OSNet paper, sec. 3.1, Fig. 3)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, stride=1, padding=0, bias=False)
        self.conv2 = nn.Conv2d(
            out_channels, out_channels, 3, stride=1, padding=1, bias=False, groups=out_channels
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Unified aggregation gate (OSNet paper, sec. 3.2, eq. 3): a shared mini-network producing
    channel-wise sigmoid weights from the globally pooled stream, applied to each scale stream."""

    def __init__(self, in_channels: int, reduction: int = 16):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(in_channels, in_channels // reduction, 1, bias=True, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(in_channels // reduction, in_channels, 1, bias=True, padding=0)
        self.gate_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.gate_activation(self.fc2(self.relu(self.fc1(self.global_avgpool(x)))))
        return x * w


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck (OSNet paper, sec. 3.2, Fig. 4): four streams of 1-4 stacked
    lite 3x3 convolutions (receptive fields 3, 5, 7, 9), fused by the shared channel gate."""

    def __init__(
        self, in_channels: int, out_channels: int, bottleneck_reduction: int = 4, instance_norm: bool = False
    ):
        super().__init__()
        mid = out_channels // bottleneck_reduction
        self.conv1 = Conv1x1(in_channels, mid)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(4)))
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, out_channels)
        self.downsample = Conv1x1Linear(in_channels, out_channels) if in_channels != out_channels else None
        self.IN = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        x1 = self.conv1(x)
        x2 = (
            self.gate(self.conv2a(x1))
            + self.gate(self.conv2b(x1))
            + self.gate(self.conv2c(x1))
            + self.gate(self.conv2d(x1))
        )
        out = self.conv3(x2) + identity
        if self.IN is not None:
            out = self.IN(out)
        return torch.relu(out)
