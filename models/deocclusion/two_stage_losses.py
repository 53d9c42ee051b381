"""Objectives of the two stages (de-occlusion paper eq. 3-4 and eq. 7).

Masks (eq. 3): cross-entropy on the modal, amodal and occluder masks and on both parsings, plus
eq. 3's L1 on the amodal mask. The mask discriminator and mask perceptual term of eq. 3 are left
out: they sharpen mask borders, which a 128x64 crop barely has, and cost a CPU run a third of its
steps.

Content (eq. 7): adversarial + L1 + perceptual + style [27]. L1 is taken inside the restored
region (the rest is the input's, exactly); perceptual and style go through the pretrained OSNet
person-ReID features (no ImageNet VGG file exists offline), one feature pass for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .losses import FeatureNetwork, to_imagenet
from .mask_completion import MaskPrediction

__all__ = ["mask_losses", "gram", "FeatureLosses", "hole_l1"]


def mask_losses(
    pred: MaskPrediction, visible: torch.Tensor, occluder: torch.Tensor, parts: torch.Tensor, l1: float
) -> dict[str, torch.Tensor]:
    """Targets: visible and occluder (B, H, W) bool, parts (B, H, W) long (0 background)."""
    vis, occ, amodal = visible.float()[:, None], occluder.float()[:, None], (parts > 0).float()[:, None]
    return {
        "modal": F.binary_cross_entropy_with_logits(pred.modal, vis),
        "occluder": F.binary_cross_entropy_with_logits(pred.occluder, occ),
        "amodal": F.binary_cross_entropy_with_logits(pred.amodal, amodal),
        "modal_parts": F.cross_entropy(pred.modal_parts, parts * visible.long()),
        "amodal_parts": F.cross_entropy(pred.amodal_parts, parts),
        "amodal_l1": l1 * (torch.sigmoid(pred.amodal) - amodal).abs().mean(),
    }


def hole_l1(restored: torch.Tensor, clean: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of the restored region, over all pixels (so crops with large occluders
    weigh more, as [27]'s L_hole does)."""
    return ((restored - clean).abs() * region).mean()


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C), normalised by C*H*W ([27] eq. 4-5)."""
    b, c, h, w = features.shape
    f = features.flatten(2)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


class FeatureLosses(nn.Module):
    """Perceptual (mean squared feature difference) and style (L1 between Gram matrices) through a
    frozen feature network, summed over its layers."""

    def __init__(self, network: FeatureNetwork):
        super().__init__()
        self.network = network.freeze()

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gen = self.network(to_imagenet(generated))
        with torch.no_grad():
            tgt = self.network(to_imagenet(target))
        perceptual = sum(F.mse_loss(g, t) for g, t in zip(gen, tgt, strict=True))
        style = sum(F.l1_loss(gram(g), gram(t)) for g, t in zip(gen, tgt, strict=True))
        return perceptual, style
