"""Attention-guided mask module M of OAMN (Chen et al., ICCV 2021, sec. 3.2, eq. 1), built as the
spatial relation-aware global attention of RGA-S (Zhang et al., "Relation-Aware Global Attention
for Person Re-identification", CVPR 2020, sec. 3.2-3.3).

For a feature map f (C x H x W) with N = H*W positions, pairwise affinities
r_ij = theta(f_i)^T phi(f_j) are stacked for every position as its outgoing and incoming relations
(2N channels), embedded together with a channel-pooled embedding of f itself, and a small
1x1-conv network turns that into one sigmoid weight per position: the spatial mask m (B, 1, H, W).
Because the relation channels number 2N, the module is built for one feature-map size.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SpatialRelationAttention"]


def _conv_bn(in_ch: int, out_ch: int, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SpatialRelationAttention(nn.Module):
    """RGA-S spatial attention; ``forward(f) -> m`` with m in (0, 1) of shape (B, 1, H, W)."""

    def __init__(
        self,
        in_channels: int,
        feature_hw: tuple[int, int],
        channel_ratio: int = 8,
        spatial_ratio: int = 8,
        down_ratio: int = 8,
    ):
        super().__init__()
        h, w = feature_hw
        if h <= 0 or w <= 0:
            raise ValueError(f"feature_hw must be positive, got {feature_hw}")
        self.feature_hw = (h, w)
        n = h * w
        inter_c = max(1, in_channels // channel_ratio)
        inter_s = max(1, n // spatial_ratio)
        self.theta = _conv_bn(in_channels, inter_c)  # RGA eq. 2 embeddings of the affinity
        self.phi = _conv_bn(in_channels, inter_c)
        self.embed_relation = _conv_bn(2 * n, inter_s)  # phi_r over the stacked relations
        self.embed_feature = _conv_bn(in_channels, inter_c)  # psi_s, then pooled over channels
        joint = 1 + inter_s
        self.weight = nn.Sequential(
            _conv_bn(joint, max(1, joint // down_ratio)), _conv_bn(max(1, joint // down_ratio), 1, relu=False)
        )

    def open_(self, bias: float = 3.0) -> SpatialRelationAttention:
        """Start with m = sigmoid(bias) at every position (0.95 for 3): the last BatchNorm's scale is
        zeroed, the same trick as zero-initialised residual branches (Goyal et al. 2017), so that a
        pretrained higher encoder first sees (almost) the features it was trained on. The scale
        still gets a gradient, so the mask learns from there."""
        last_bn = self.weight[-1][1]
        nn.init.zeros_(last_bn.weight)
        nn.init.constant_(last_bn.bias, bias)
        return self

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, _, h, w = f.shape
        if (h, w) != self.feature_hw:
            raise ValueError(
                f"attention built for a {self.feature_hw} feature map, got {(h, w)}; "
                "the input image size must match the recipe's input size"
            )
        n = h * w
        theta = self.theta(f).flatten(2).transpose(1, 2)  # (B, N, c')
        phi = self.phi(f).flatten(2)  # (B, c', N)
        rel = torch.bmm(theta, phi)  # (B, N, N): r_ij
        rel_in = rel.transpose(1, 2).reshape(b, n, h, w)  # incoming relations r_ji per position i
        rel_out = rel.reshape(b, n, h, w)  # outgoing relations r_ij
        relations = self.embed_relation(torch.cat([rel_in, rel_out], 1))
        pooled = self.embed_feature(f).mean(1, keepdim=True)
        return torch.sigmoid(self.weight(torch.cat([pooled, relations], 1)))
