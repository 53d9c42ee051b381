"""Stage 1 of the two-stage de-occlusion: refined mask completion (de-occlusion paper sec. 3.2).

``../shared/papers/human-deocclusion-mask-and-content.txt``. Two stacked hourglasses:

- the first, ``N_m^hg`` (eq. 1), refines an initial modal mask ``M_i`` (from a segmentation model
  the user has, or none: it then segments the person itself) into the visible mask ``M_m`` and
  its parsing ``M_m^p``. Not in the paper: it also predicts the occluder's pixels, the region the
  second stage repaints, because a surveillance crop must lose the occluder as a whole (the person
  in front, the pole) and not only gain the hidden body;
- the second, ``N_a^hg`` (eq. 2), completes it into the amodal mask ``M_a`` and parsing ``M_a^p``
  from the first's features, its modal mask and a typical-pose prior: k-means templates ``M_t`` of
  the training masks weighted by ``1 / ||M_m - M_t||`` and mixed by a 1x1 convolution.

The hourglasses are 4-level U-Nets (the paper stacks Newell et al.'s hourglasses; a U-Net is the
same encoder-decoder with skips, and the one the content stage uses too). Images are RGB in
[-1, 1]; masks in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .generator import DOWN_BLOCKS, DoubleConv
from .parts import PARTS

__all__ = ["Hourglass", "MaskPrediction", "MaskCompletionNet", "mask_templates"]


class Hourglass(nn.Module):
    """A U-Net body: ``DOWN_BLOCKS`` poolings, skips, bilinear up-sampling; (B, C_in, H, W) ->
    (B, base, H, W) features at the input size. ``refine(level, x)``, when given, rewrites the
    decoder's features after each up-sampling block (level ``DOWN_BLOCKS - 1`` is the coarsest)."""

    def __init__(self, in_channels: int, base_channels: int):
        super().__init__()
        widths = [base_channels * 2**i for i in range(DOWN_BLOCKS)]
        self.down = nn.ModuleList()
        previous = in_channels
        for w in widths:
            self.down.append(DoubleConv(previous, w))
            previous = w
        self.bottleneck = DoubleConv(widths[-1], widths[-1])
        self.up = nn.ModuleList(DoubleConv(2 * w, w // 2 if i else w) for i, w in enumerate(widths))
        self.widths = widths

    def decoder_channels(self, level: int) -> int:
        """Channels of the decoder's features at ``level`` (what ``refine`` receives)."""
        return self.widths[level] // 2 if level else self.widths[level]

    def forward(
        self, x: torch.Tensor, refine: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skips[i]], dim=1))
            if refine is not None:
                x = refine(i, x)
        return x


def mask_templates(
    masks: torch.Tensor, count: int, size_hw: tuple[int, int], seed: int = 0, iters: int = 20
) -> torch.Tensor:
    """Sec. 3.2's typical poses: k-means (``count`` centres, Lloyd's iterations from a seeded
    k-means++ start) over full-body masks (N, H, W) resized to ``size_hw``; returns (count, h, w)."""
    x = F.interpolate(masks[:, None].float(), size=size_hw, mode="area").flatten(1)
    if len(x) < count:
        raise ValueError(f"k-means needs at least {count} masks, got {len(x)}")
    g = torch.Generator().manual_seed(seed)
    centres = [x[torch.randint(len(x), (1,), generator=g)].squeeze(0)]
    for _ in range(1, count):  # k-means++: far masks are likelier first centres
        d = torch.cdist(x, torch.stack(centres)).min(dim=1).values ** 2
        centres.append(x[torch.multinomial(d / d.sum(), 1, generator=g)].squeeze(0))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(dim=1)
        for k in range(count):
            members = x[assign == k]
            if len(members):
                c[k] = members.mean(dim=0)
    return c.view(count, *size_hw)


@dataclass
class MaskPrediction:
    """Logits at the input size: modal (B, 1), occluder (B, 1), amodal (B, 1), parsings (B, P)."""

    modal: torch.Tensor
    occluder: torch.Tensor
    modal_parts: torch.Tensor
    amodal: torch.Tensor
    amodal_parts: torch.Tensor


class MaskCompletionNet(nn.Module):
    """``(I_s, M_i) -> M_m, occluder, M_m^p, M_a, M_a^p`` (eq. 1-2).

    The input is the image, the initial modal mask and a constant channel saying whether an initial
    mask was given (1) or not (0: the mask channel is zeros and the first hourglass segments alone).
    """

    def __init__(
        self,
        templates: torch.Tensor,
        base_channels: int = 16,
        image_size: tuple[int, int] = (128, 64),
        prior_channels: int = 8,
    ):
        super().__init__()
        factor = 2**DOWN_BLOCKS
        if image_size[0] % factor or image_size[1] % factor:
            raise ValueError(f"image_size must be multiples of {factor}, got {image_size}")
        if templates.ndim != 3:
            raise ValueError(f"templates must be (K, h, w), got {tuple(templates.shape)}")
        self.image_size = tuple(image_size)
        self.template_stride = image_size[0] // templates.shape[1]
        if templates.shape[1:] != (
            image_size[0] // self.template_stride,
            image_size[1] // self.template_stride,
        ):
            raise ValueError(
                f"templates {tuple(templates.shape[1:])} are not {image_size} scaled down evenly"
            )
        parts = len(PARTS)
        self.register_buffer("templates", templates.float().clone())
        self.first = Hourglass(3 + 2, base_channels)
        self.first_head = nn.Conv2d(base_channels, 2 + parts, 1)  # modal, occluder, modal parsing
        self.prior = nn.Conv2d(templates.shape[0], prior_channels, 1)  # eq. 2's Conv(M_t . W), no activation
        self.second = Hourglass(base_channels + 1 + prior_channels, base_channels)
        self.second_head = nn.Conv2d(base_channels, 1 + parts, 1)  # amodal, amodal parsing

    def template_prior(self, modal: torch.Tensor) -> torch.Tensor:
        """Eq. 2's ``Conv(M_t . W_{m,t})`` with ``W = 1 / D``, ``D`` the l2 distance between the
        modal mask and each template (at the templates' size). Not in the paper: the weights are
        normalised to sum to 1, so their scale does not depend on the mask's size."""
        small = F.avg_pool2d(modal, self.template_stride).flatten(1)
        flat = self.templates.flatten(1)
        # l2 distances written out (B, K): the ONNX exporter has no cdist
        dist = ((small[:, None, :] - flat[None]) ** 2).sum(dim=2).clamp_min(0).sqrt()
        weights = 1.0 / (dist + 1e-3)
        weights = weights / weights.sum(dim=1, keepdim=True)
        full = F.interpolate(
            self.templates[None],
            scale_factor=float(self.template_stride),
            mode="bilinear",
            align_corners=False,
        )
        return self.prior(full * weights[:, :, None, None])

    def forward(
        self, images: torch.Tensor, initial: torch.Tensor | None = None, given: torch.Tensor | None = None
    ) -> MaskPrediction:
        """``initial`` (B, 1, H, W) in [0, 1] or None; ``given`` (B,) says which crops have one
        (default: all when ``initial`` is passed)."""
        b, _, h, w = images.shape
        if initial is None:
            initial = images.new_zeros((b, 1, h, w))
            flag = images.new_zeros((b, 1, h, w))
        elif given is None:
            flag = images.new_ones((b, 1, h, w))
        else:
            flag = given.to(images.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)
            initial = initial * flag
        features = self.first(torch.cat([images, initial, flag], dim=1))
        first = self.first_head(features)
        modal = torch.sigmoid(first[:, :1])
        second = self.second_head(
            self.second(torch.cat([features, modal, self.template_prior(modal)], dim=1))
        )
        return MaskPrediction(first[:, :1], first[:, 1:2], first[:, 2:], second[:, :1], second[:, 1:])

    def check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.image_size:
            h, w = self.image_size
            raise ValueError(f"expected images (B, 3, {h}, {w}), got {tuple(images.shape)}")
