"""OSNet (Zhou et al., ICCV 2019), written from the paper with torchreid's module names so the
torchreid model-zoo state dicts (e.g. ``osnet_x0_25_msmt17.pth``) load strictly; only the
dataset-specific ``classifier.*`` is left out.

Layout (paper Table 1): conv1 7x7/2 + maxpool (stage ``stem``), conv2/conv3 = 2 OS blocks + a
1x1 conv and 2x2 average-pool transition each, conv4 = 2 OS blocks, conv5 = 1x1 conv; then global
average pooling and a 512-d fc (Linear + BN + ReLU), the ReID feature (``forward_head``).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import Backbone
from .layers import Conv1x1, ConvLayer, OSBlock

__all__ = ["OSNet", "OSNET_WIDTHS"]

# channels of stem, conv2, conv3, conv4 per width multiplier (paper Table 1 and sec. 4.1, "x beta")
OSNET_WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "x1_0": (64, 256, 384, 512),
    "x0_75": (48, 192, 288, 384),
    "x0_5": (32, 128, 192, 256),
    "x0_25": (16, 64, 96, 128),
}


class OSNet(Backbone):
    """OSNet feature extractor. ``forward_features`` -> (B, C, H/16, W/16) map after conv5."""

    stage_names = ["stem", "conv2", "conv3", "conv4", "conv5"]
    ignored_prefixes = ("classifier.",)

    def __init__(
        self,
        channels: tuple[int, int, int, int],
        layers: tuple[int, int, int] = (2, 2, 2),
        feature_dim: int = 512,
    ):
        super().__init__()
        c0, c1, c2, c3 = channels
        self.conv1 = ConvLayer(3, c0, 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = self._make_layer(layers[0], c0, c1, reduce_spatial_size=True)
        self.conv3 = self._make_layer(layers[1], c1, c2, reduce_spatial_size=True)
        self.conv4 = self._make_layer(layers[2], c2, c3, reduce_spatial_size=False)
        self.conv5 = Conv1x1(c3, c3)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        # torchreid's fc: Linear -> BatchNorm1d -> ReLU, keys fc.0.* / fc.1.*
        self.fc = nn.Sequential(
            nn.Linear(c3, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True)
        )
        self.feature_dim = feature_dim
        self._stage_out_channels = {"stem": c0, "conv2": c1, "conv3": c2, "conv4": c3, "conv5": c3}
        self._init_params()

    @staticmethod
    def _make_layer(
        n_blocks: int, in_channels: int, out_channels: int, reduce_spatial_size: bool
    ) -> nn.Sequential:
        blocks: list[nn.Module] = [OSBlock(in_channels, out_channels)]
        blocks += [OSBlock(out_channels, out_channels) for _ in range(1, n_blocks)]
        if reduce_spatial_size:
            blocks.append(nn.Sequential(Conv1x1(out_channels, out_channels), nn.AvgPool2d(2, stride=2)))
        return nn.Sequential(*blocks)

    def _init_params(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.InstanceNorm2d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Module]:
        return [nn.Sequential(self.conv1, self.maxpool), self.conv2, self.conv3, self.conv4, self.conv5]

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Global average pooling + the 512-d fc: the feature torchreid uses for retrieval."""
        return self.fc(self.global_avgpool(feature_map).flatten(1))
