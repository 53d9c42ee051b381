"""Mask-attention multi-task attribute network after MAN-PAR (Yaghoubi et al.), sec. 3.3-3.5 and 4.4.

backbone feature maps F (B, C, h, w)  x  foreground mask M resized to (h, w)   (sec. 3.4, hard attention)
-> global average pooling -> one branch per task (sec. 3.5 / 4.4: Dense-ReLU -> Dropout -> Dense-ReLU ->
Dropout -> Dense-ReLU -> Dense, sigmoid in the loss) -> logits assembled in attribute order.

Masks are (B, 1, H, W) or (B, H, W) in [0, 1] at image resolution (or any resolution: they are
area-resized to the feature map, so a feature cell gets the fraction of its pixels on the person).
Without a mask the network multiplies by ones, i.e. it runs as a plain multi-task net; this is
what happens when no segmentation model is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .groups import group_attributes

__all__ = ["MaskAttentionAttributeNet", "resize_mask"]

logger = logging.getLogger(__name__)


def resize_mask(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) masks -> (B, 1, h, w) by area averaging (bilinear if not a multiple)."""
    if masks.ndim == 3:
        masks = masks.unsqueeze(1)
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must be (B, H, W) or (B, 1, H, W), got {tuple(masks.shape)}")
    masks = masks.float()
    if tuple(masks.shape[2:]) == tuple(size):
        return masks
    in_h, in_w = int(masks.shape[2]), int(masks.shape[3])
    if in_h % size[0] == 0 and in_w % size[1] == 0:  # the usual case (stride 16); exportable to ONNX
        return F.avg_pool2d(masks, (in_h // size[0], in_w // size[1]))
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)


class _TaskBranch(nn.Sequential):
    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float):
        layers: list[nn.Module] = []
        dim = in_dim
        for k, h in enumerate(hidden):
            layers += [nn.Linear(dim, h), nn.ReLU(inplace=True)]
            if k < len(hidden) - 1:  # the paper has no dropout after the last hidden layer
                layers.append(nn.Dropout(dropout))
            dim = h
        layers.append(nn.Linear(dim, out_dim))
        super().__init__(*layers)


class MaskAttentionAttributeNet(nn.Module):
    """Shared backbone, foreground-mask multiplication, task-oriented branches.

    ``pooling="mean"`` is the paper's global average over all cells (background cells count as
    zeros); ``"masked_mean"`` divides by the mask area instead, so the feature does not shrink
    for a person who fills little of the crop.
    """

    def __init__(
        self,
        backbone: nn.Module,
        attribute_names: Sequence[str],
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.3,
        pooling: str = "mean",
    ):
        super().__init__()
        if pooling not in ("mean", "masked_mean"):
            raise ValueError(f"pooling must be 'mean' or 'masked_mean', got {pooling!r}")
        if not attribute_names:
            raise ValueError("attribute_names must not be empty")
        self.backbone = backbone
        self.attribute_names = list(attribute_names)
        self.pooling = pooling
        self.groups = group_attributes(self.attribute_names)
        self.task_names = list(self.groups)
        channels = backbone.out_channels
        self.branches = nn.ModuleList(
            _TaskBranch(channels, hidden, len(idx), dropout) for idx in self.groups.values()
        )
        order = torch.cat([torch.tensor(idx) for idx in self.groups.values()])
        self.register_buffer("_inverse_order", torch.argsort(order), persistent=False)

    @property
    def num_attributes(self) -> int:
        return len(self.attribute_names)

    def forward_features(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Mask-multiplied, pooled feature (B, C)."""
        fmap = self.backbone.forward_features(images)
        if masks is None:
            return fmap.mean(dim=(2, 3))
        if masks.shape[0] != images.shape[0]:
            raise ValueError(f"{masks.shape[0]} masks for {images.shape[0]} images")
        m = resize_mask(masks.to(fmap.dtype), (fmap.shape[2], fmap.shape[3]))
        glimpse = fmap * m  # sec. 3.4: element-wise multiplication layer
        if self.pooling == "masked_mean":
            return glimpse.sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp(min=1e-3)
        return glimpse.mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([branch(features) for branch in self.branches], dim=1)
        return logits.index_select(1, self._inverse_order)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(images, masks))
