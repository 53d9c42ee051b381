"""torchvision ResNet-18/50 as backbones, keeping torchvision's state-dict layout (``conv1.weight``,
``layer1.0.conv1.weight``, ...) so a local torchvision weight file loads strictly (only ``fc.*``,
the ImageNet classifier, is ignored). Random init by default; nothing is ever downloaded."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet

from .common import Backbone

__all__ = ["ResNetBackbone"]

_BUILDERS = {"resnet18": resnet.resnet18, "resnet50": resnet.resnet50}


class ResNetBackbone(Backbone):
    """ResNet without avgpool/fc. ``forward_features`` -> (B, C, H/32, W/32) after layer4
    (``last_stride=1`` keeps layer4 at stride 1, the usual ReID choice, giving H/16)."""

    stage_names = ["stem", "layer1", "layer2", "layer3", "layer4"]
    ignored_prefixes = ("fc.",)

    def __init__(self, arch: str = "resnet50", last_stride: int = 2):
        super().__init__()
        if arch not in _BUILDERS:
            raise ValueError(f"unknown ResNet {arch!r}; expected one of {sorted(_BUILDERS)}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        net = _BUILDERS[arch](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if last_stride == 1:
            # the strided conv is conv2 in torchvision's Bottleneck, conv1 in its BasicBlock
            block = self.layer4[0]
            strided = block.conv2 if arch == "resnet50" else block.conv1
            strided.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        exp = 4 if arch == "resnet50" else 1
        self._stage_out_channels = {
            "stem": 64,
            "layer1": 64 * exp,
            "layer2": 128 * exp,
            "layer3": 256 * exp,
            "layer4": 512 * exp,
        }
        self.feature_dim = 512 * exp

    def stages(self) -> list[nn.Module]:
        return [
            nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool),
            self.layer1,
            self.layer2,
            self.layer3,
            self.layer4,
        ]

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Global average pooling: the plain pooled feature."""
        return self.global_avgpool(feature_map).flatten(1)
