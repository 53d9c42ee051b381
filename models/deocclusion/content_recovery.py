"""Stage 2 of the two-stage de-occlusion: parsing-guided content recovery (de-occlusion paper
sec. 3.3, Fig. 3, eq. 5-7).

``../shared/papers/human-deocclusion-mask-and-content.txt``. A U-Net ``N_c`` takes the occluded
image with the visible mask ``M_v`` and the amodal mask ``M_a`` (eq. 5) and, at the two coarsest
decoder scales, a Parsing Guided Attention (PGA) module mixes in the modal and amodal parsings:

- stream 1 reduces the feature to one channel per part, multiplies it with each parsing and
  fuses both with a 1x1 convolution (which body part a feature belongs to, visible or hidden);
- stream 2 is eq. 6: keys of the visible pixels ``K_vis = phi(F + M_m^p)`` against keys of the
  hidden ones ``K_amo = psi(F + M_a^p)``, a softmax over the visible pixels for every hidden one,
  and the input feature gathered with those weights (what each hidden pixel borrows from the
  visible context).

Both streams are concatenated with the input and reduced by a 1x1 convolution. The output is
composited: the visible pixels are the input's, exactly; only the region to restore (``R``, the
occluder's pixels) is generated.

Departures: plain convolutions take the masks as input channels instead of partial convolutions
[27]; the input also carries ``R`` (the paper restores only ``M_a - M_v``; we also repaint the
occluder's background, since a crop with half an occluder left is still a confusing crop); eq. 6's
softmax runs over the visible pixels only (the paper's zero keys at masked positions would still
take a share of the softmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .generator import DOWN_BLOCKS
from .mask_completion import Hourglass
from .parts import PARTS

__all__ = ["ParsingGuidedAttention", "ContentRecoveryNet", "composite", "restore_region"]


def restore_region(occluder: torch.Tensor) -> torch.Tensor:
    """The pixels to regenerate: the occluder's mask (B, 1, H, W) grown by one pixel, so the blended
    rim a pasted or real occluder leaves around itself is repainted too."""
    return F.max_pool2d(occluder.float(), 3, stride=1, padding=1)


def composite(occluded: torch.Tensor, generated: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Visible pixels from the input, exactly; the region to restore from the generator."""
    return occluded * (1.0 - region) + generated * region


class ParsingGuidedAttention(nn.Module):
    """Fig. 3 (right): the PGA module at one scale; (B, C, h, w) features in and out."""

    def __init__(self, channels: int, stride: int, parts: int = len(PARTS), key_channels: int = 16):
        super().__init__()
        self.stride = stride  # the feature's scale: guidance is average-pooled by it
        self.reduce = nn.Conv2d(channels, parts, 1)
        self.part_fuse = nn.Conv2d(2 * parts, channels, 1)
        self.phi = nn.Conv2d(channels + parts, key_channels, 1)
        self.psi = nn.Conv2d(channels + parts, key_channels, 1)
        self.out = nn.Conv2d(3 * channels, channels, 1)

    def forward(
        self, x: torch.Tensor, modal_parts: torch.Tensor, amodal_parts: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        mp = F.avg_pool2d(modal_parts, self.stride)
        ap = F.avg_pool2d(amodal_parts, self.stride)
        mv = F.avg_pool2d(visible, self.stride)
        # stream 1: the feature distributed over the body parts of both parsings
        reduced = self.reduce(x)
        parts = self.part_fuse(torch.cat([reduced * mp, reduced * ap], dim=1))
        # stream 2 (eq. 6): relevance of every visible pixel i to every hidden pixel j
        k_vis = (self.phi(torch.cat([x, mp], dim=1)) * mv).flatten(2)  # (B, K, N)
        k_amo = (self.psi(torch.cat([x, ap], dim=1)) * (1.0 - mv)).flatten(2)
        relation = torch.bmm(k_vis.transpose(1, 2), k_amo)  # (B, N_i, N_j)
        seen = mv.flatten(2).transpose(1, 2) > 0.5  # (B, N, 1): softmax over visible i only
        relation = relation.masked_fill(~seen, -1e4)
        weights = torch.softmax(relation, dim=1)
        context = torch.bmm(x.flatten(2), weights).view_as(x)  # hidden j gathers sum_i R_ij F_i
        return self.out(torch.cat([x, parts, context], dim=1))


class ContentRecoveryNet(Hourglass):
    """``N_c(I_s + M_v + M_a + R, M_m^p, M_a^p) -> I_o`` (eq. 5); returns the raw generated image
    (tanh, [-1, 1]); ``composite`` keeps the visible pixels."""

    def __init__(
        self, base_channels: int = 24, image_size: tuple[int, int] = (128, 64), attention_scales: int = 2
    ):
        super().__init__(3 + 3, base_channels)  # image, visible, amodal, region to restore
        factor = 2**DOWN_BLOCKS
        if image_size[0] % factor or image_size[1] % factor:
            raise ValueError(f"image_size must be multiples of {factor}, got {image_size}")
        if not 0 <= attention_scales <= DOWN_BLOCKS:
            raise ValueError(f"attention_scales must be in [0, {DOWN_BLOCKS}], got {attention_scales}")
        self.image_size = tuple(image_size)
        # PGA after the coarsest decoder blocks ("at multiple scales"); the finest scales would
        # need an (HW x HW) relation too large for a CPU
        self.attention = nn.ModuleDict(
            {
                str(i): ParsingGuidedAttention(self.decoder_channels(i), 2**i)
                for i in range(DOWN_BLOCKS - attention_scales, DOWN_BLOCKS)
            }
        )
        self.head = nn.Sequential(nn.Conv2d(base_channels, 3, 1), nn.Tanh())

    def forward(  # type: ignore[override]
        self,
        occluded: torch.Tensor,
        visible: torch.Tensor,
        amodal: torch.Tensor,
        region: torch.Tensor,
        modal_parts: torch.Tensor,
        amodal_parts: torch.Tensor,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1]; masks (B, 1, H, W) in [0, 1]; parsings (B, P, H, W)
        probabilities. The region to restore is blanked in the input, so the network never copies
        the occluder."""

        def attend(level: int, x: torch.Tensor) -> torch.Tensor:
            if str(level) not in self.attention:
                return x
            return self.attention[str(level)](x, modal_parts, amodal_parts, visible)

        x = torch.cat([occluded * (1.0 - region), visible, amodal, region], dim=1)
        return self.head(super().forward(x, attend))
