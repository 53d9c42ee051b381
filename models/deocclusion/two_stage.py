"""The two stages cascaded (de-occlusion paper sec. 3.1: "in the testing phase, the two stages are
cascaded into an end-to-end manner"), their builders and their files.

``TwoStageDeoccluder(images) -> restored`` is what the pipeline and the exporter see: RGB in
[-1, 1] in and out, the visible pixels kept exactly. ``infer`` also returns the masks, for the
evaluation and the grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.model_file import as_float, cpu_state, read_model_file, write_model_file

from .content_recovery import ContentRecoveryNet, composite, restore_region
from .generator import UNetGenerator
from .mask_completion import MaskCompletionNet
from .parts import PARTS
from .two_stage_recipe import TwoStageModelConfig

__all__ = [
    "RegionUNet",
    "TwoStageDeoccluder",
    "build_mask_net",
    "build_content_net",
    "save_two_stage",
    "load_mask_net",
    "load_two_stage",
    "is_two_stage",
    "read_two_stage",
    "mask_net_from",
    "two_stage_from",
    "guidance",
    "exact_guidance",
    "mix_guidance",
]

FORMAT = "amodal-two-stage-deocclusion/1"


class RegionUNet(nn.Module):
    """The baseline: the shipped U-Net generator (the other de-occlusion paper, sec. 3.2) given the
    blanked image and the region to restore (4 input channels), composited like the PGA network."""

    def __init__(self, base_channels: int, image_size: tuple[int, int]):
        super().__init__()
        self.unet = UNetGenerator(base_channels, image_size, upsample="bilinear", in_channels=4)

    def forward(self, occluded, visible, amodal, region, modal_parts, amodal_parts) -> torch.Tensor:
        return self.unet(torch.cat([occluded * (1.0 - region), region], dim=1))


def build_mask_net(cfg: TwoStageModelConfig, templates: torch.Tensor | None = None) -> MaskCompletionNet:
    """Templates come from the data when training starts, from the file's buffer when loading."""
    if templates is None:
        templates = torch.zeros(cfg.templates, cfg.image_size[0] // 4, cfg.image_size[1] // 4)
    return MaskCompletionNet(templates, cfg.mask_channels, tuple(cfg.image_size))


def build_content_net(cfg: TwoStageModelConfig) -> nn.Module:
    if cfg.content == "pga":
        return ContentRecoveryNet(cfg.content_channels, tuple(cfg.image_size), cfg.attention_scales)
    return RegionUNet(cfg.content_channels, tuple(cfg.image_size))


def guidance(
    masks: MaskCompletionNet, images: torch.Tensor, initial: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Stage 1's outputs as stage 2 reads them: probabilities, the occluder thresholded into the
    region to restore (grown by a pixel), and the visible mask kept out of that region."""
    pred = masks(images, initial)
    occluder = (torch.sigmoid(pred.occluder) > 0.5).float()
    region = restore_region(occluder)
    return {
        "visible": torch.sigmoid(pred.modal) * (1.0 - region),
        "amodal": torch.sigmoid(pred.amodal),
        "region": region,
        "modal_parts": torch.softmax(pred.modal_parts, dim=1),
        "amodal_parts": torch.softmax(pred.amodal_parts, dim=1),
    }


def exact_guidance(
    visible: torch.Tensor, occluder: torch.Tensor, parts: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``guidance``'s dict from a pair's exact targets (visible, occluder (B, H, W) bool, parts
    (B, H, W) part indices): what stage 2 learns from when stage 1 is perfect."""
    region = restore_region(occluder[:, None].float())
    one_hot = torch.nn.functional.one_hot(parts.long(), len(PARTS)).permute(0, 3, 1, 2).float()
    return {
        "visible": visible[:, None].float() * (1.0 - region),
        "amodal": (parts > 0)[:, None].float(),
        "region": region,
        "modal_parts": one_hot * visible[:, None].float(),
        "amodal_parts": one_hot,
    }


def mix_guidance(
    predicted: dict[str, torch.Tensor], exact: dict[str, torch.Tensor], use_exact: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per crop, the exact guidance where ``use_exact`` (B,) is true, stage 1's elsewhere."""
    pick = use_exact.view(-1, 1, 1, 1)
    return {k: torch.where(pick, exact[k], predicted[k]) for k in predicted}


class TwoStageDeoccluder(nn.Module):
    """Mask completion, then content recovery, then the composite."""

    def __init__(self, masks: MaskCompletionNet, content: nn.Module):
        super().__init__()
        self.masks, self.content = masks, content
        self.image_size = masks.image_size

    def infer(
        self,
        images: torch.Tensor,
        initial: torch.Tensor | None = None,
        given: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Restored crops and the guidance that produced them (stage 1's, or ``given``)."""
        g = given if given is not None else guidance(self.masks, images, initial)
        raw = self.content(
            images, g["visible"], g["amodal"], g["region"], g["modal_parts"], g["amodal_parts"]
        )
        return {**g, "restored": composite(images, raw, g["region"])}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.infer(images)["restored"]

    def check_input(self, images: torch.Tensor) -> None:
        self.masks.check_input(images)


def save_two_stage(
    path: str | Path,
    cfg: TwoStageModelConfig,
    masks: MaskCompletionNet,
    content: nn.Module | None = None,
    extra: dict[str, Any] | None = None,
    half: bool = True,
) -> Path:
    """One self-describing file: the model config, stage 1's weights and, once trained, stage 2's.
    ``half`` stores float weights as float16 (half the size, so the shipped file stays small; they
    are computed in float32 after loading)."""
    states = {"masks": cpu_state(masks, half)}
    if content is not None:
        states["content"] = cpu_state(content, half)
    return write_model_file(path, FORMAT, cfg, states, {"parts": list(PARTS), **(extra or {})})


def is_two_stage(payload: object) -> bool:
    """Whether a loaded weights file (``torch.load``'s result) is a two-stage file."""
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def read_two_stage(path: str | Path) -> dict:
    """A two-stage file's contents, checked (format and parts)."""
    payload = read_model_file(path, "two-stage de-occlusion")
    if not is_two_stage(payload):
        raise ValueError(f"{path} is not a two-stage de-occlusion file (format {FORMAT!r})")
    return payload


def mask_net_from(payload: dict, source: str | Path) -> tuple[MaskCompletionNet, TwoStageModelConfig]:
    """Stage 1 from a read file (``source`` names it in errors), in eval mode."""
    if list(payload.get("parts", [])) != list(PARTS):
        raise ValueError(f"{source} was trained on parts {payload.get('parts')}, this code has {list(PARTS)}")
    cfg = TwoStageModelConfig(**payload["model"])
    masks = build_mask_net(cfg, payload["masks"]["templates"].float())
    masks.load_state_dict(as_float(payload["masks"]))
    return masks.eval(), cfg


def two_stage_from(payload: dict, source: str | Path) -> tuple[TwoStageDeoccluder, TwoStageModelConfig]:
    """Both stages from a read file, in eval mode; a file holding stage 1 only is refused."""
    masks, cfg = mask_net_from(payload, source)
    if "content" not in payload:
        raise ValueError(f"{source} holds the mask-completion stage only; train the content stage on it")
    content = build_content_net(cfg)
    content.load_state_dict(as_float(payload["content"]))
    return TwoStageDeoccluder(masks, content.eval()).eval(), cfg


def load_mask_net(path: str | Path) -> tuple[MaskCompletionNet, TwoStageModelConfig, dict]:
    """Stage 1 alone (a mask-stage run's output, or a complete file), in eval mode."""
    payload = read_two_stage(path)
    return (*mask_net_from(payload, path), payload)


def load_two_stage(path: str | Path) -> tuple[TwoStageDeoccluder, TwoStageModelConfig, dict]:
    """Both stages, in eval mode; a file holding stage 1 only is refused."""
    payload = read_two_stage(path)
    return (*two_stage_from(payload, path), payload)
