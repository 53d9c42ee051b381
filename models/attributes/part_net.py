"""Part-based attribute network of Fabbri et al. (GAN reconstruction for attribute recognition, sec. 3.1).

The crop's height is cut into 10 horizontal blocks; head-shoulder = blocks 1-4, upper body = 3-7,
lower body = 6-10 (sec. 4). With phi(.) the globally average-pooled backbone feature of a region,
eq. 1 scores attribute i as

    score_i = w_{i,b}^T phi(b) + max_{p in parts} w_{i,p}^T phi(p)

Two ways to get phi(p):

* ``part_mode="pool"`` (default): ONE backbone pass over the whole crop, then phi(p) = average of the
  feature-map rows covering part p. This departs from the paper, which runs the backbone four
  times (whole body + three cut-out images): here a part's feature has a receptive field that also
  sees pixels outside the part (the context above/below it) and is computed at the whole crop's
  scale rather than a part rescaled to the input size. It costs about one backbone pass instead of
  about 2.2 (the parts cover 0.4 + 0.5 + 0.5 of the height).
* ``part_mode="crop"``: the paper's four separate passes on cut-out image rows (slower, faithful).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["PART_BLOCKS", "NUM_BLOCKS", "part_row_ranges", "PartBasedAttributeNet"]

logger = logging.getLogger(__name__)

NUM_BLOCKS = 10
# (first, last) block, 1-based inclusive: Fabbri et al. sec. 4
PART_BLOCKS: dict[str, tuple[int, int]] = {
    "head_shoulder": (1, 4),
    "upper_body": (3, 7),
    "lower_body": (6, 10),
}


def part_row_ranges(
    height: int, blocks: dict[str, tuple[int, int]] | None = None, num_blocks: int = NUM_BLOCKS
) -> dict[str, tuple[int, int]]:
    """Half-open row range [start, stop) of each part for an image or feature map of ``height`` rows.

    Block edges that fall inside a row are rounded outwards, so a part never loses a row it
    partly covers (on an 8-row feature map blocks 1-4 = rows 0-3.2 -> rows [0, 4)).
    """
    if height < 1:
        raise ValueError(f"height must be >= 1, got {height}")
    blocks = PART_BLOCKS if blocks is None else blocks
    out = {}
    for name, (first, last) in blocks.items():
        if not 1 <= first <= last <= num_blocks:
            raise ValueError(f"part {name!r}: blocks ({first}, {last}) outside 1..{num_blocks}")
        start = math.floor((first - 1) * height / num_blocks + 1e-9)
        stop = math.ceil(last * height / num_blocks - 1e-9)
        out[name] = (start, max(stop, start + 1))
    return out


class PartBasedAttributeNet(nn.Module):
    """Shared backbone + whole-body and per-part linear scorers combined by eq. 1.

    ``forward(images, masks=None) -> logits (B, A)``; ``masks`` is accepted (and ignored) so both
    attribute networks share one call signature.
    """

    def __init__(
        self,
        backbone: nn.Module,
        attribute_names: Sequence[str],
        part_mode: str = "pool",
        dropout: float = 0.3,
    ):
        super().__init__()
        if part_mode not in ("pool", "crop"):
            raise ValueError(f"part_mode must be 'pool' or 'crop', got {part_mode!r}")
        if not attribute_names:
            raise ValueError("attribute_names must not be empty")
        self.backbone = backbone
        self.attribute_names = list(attribute_names)
        self.part_mode = part_mode
        self.part_names = list(PART_BLOCKS)
        channels = backbone.out_channels
        num_attrs = len(self.attribute_names)
        self.dropout = nn.Dropout(dropout)
        self.body_scorer = nn.Linear(channels, num_attrs)  # w_{i,b}
        self.part_scorers = nn.ModuleList(nn.Linear(channels, num_attrs) for _ in self.part_names)  # w_{i,p}
        for layer in [self.body_scorer, *self.part_scorers]:
            nn.init.normal_(layer.weight, 0, 0.01)
            nn.init.zeros_(layer.bias)

    @property
    def num_attributes(self) -> int:
        return len(self.attribute_names)

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi(b) (B, C) and phi(p) stacked as (B, P, C)."""
        if self.part_mode == "crop":
            return self._crop_features(images)
        fmap = self.backbone.forward_features(images)
        body = fmap.mean(dim=(2, 3))
        ranges = part_row_ranges(fmap.shape[2])
        parts = torch.stack([fmap[:, :, a:b].mean(dim=(2, 3)) for a, b in ranges.values()], dim=1)
        return body, parts

    def _crop_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        body = self.backbone.forward_features(images).mean(dim=(2, 3))
        ranges = part_row_ranges(images.shape[2])
        parts = [
            self.backbone.forward_features(images[:, :, a:b]).mean(dim=(2, 3)) for a, b in ranges.values()
        ]
        return body, torch.stack(parts, dim=1)

    def forward_head(self, body: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
        """Eq. 1: whole-body score + the best part's score, per attribute."""
        body_score = self.body_scorer(self.dropout(body))
        part_scores = torch.stack(
            [s(self.dropout(parts[:, k])) for k, s in enumerate(self.part_scorers)], dim=1
        )
        return body_score + part_scores.max(dim=1).values

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        body, parts = self.forward_features(images)
        return self.forward_head(body, parts)
