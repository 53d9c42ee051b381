"""Build an attribute network from a typed config, and save / load it as one self-describing file.

A shipped checkpoint holds the config, the attribute names, the input size and normalisation,
and the per-attribute decision thresholds, so ``load_attribute_model(path)`` is all the pipeline's
describe stage needs (no recipe, no dataset).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from models.backbones import IMAGENET_MEAN, IMAGENET_STD, create_backbone

from .mask_net import MaskAttentionAttributeNet
from .part_net import PartBasedAttributeNet

__all__ = [
    "AttributeModelConfig",
    "build_attribute_model",
    "save_attribute_model",
    "load_attribute_model",
    "AttributeModelBundle",
]

logger = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "amodal-attributes-v1"


class AttributeModelConfig(BaseModel):
    """Which attribute network to build and how."""

    model_config = ConfigDict(extra="forbid")

    arch: Literal["part", "mask"] = Field(
        "part", description="'part': Fabbri et al. part-based net (eq. 1); 'mask': MAN-PAR mask-attention net"
    )
    backbone: str = Field("osnet_x0_25", description="a name from models.backbones.list_backbones()")
    backbone_weights: str | None = Field(
        None, description="local backbone weight file (torchreid layout for OSNet, torchvision for ResNet)"
    )
    backbone_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra backbone arguments, e.g. {last_stride: 1}"
    )
    part_mode: Literal["pool", "crop"] = Field(
        "pool", description="part net: 'pool' = rows of one feature map (one pass), 'crop' = paper's 4 passes"
    )
    hidden: list[int] = Field(
        default_factory=lambda: [256, 128], description="mask net: hidden sizes of each task branch"
    )
    pooling: Literal["mean", "masked_mean"] = Field(
        "mean", description="mask net: paper's global average ('mean') or divide by mask area"
    )
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout before the scorers / inside branches")


def build_attribute_model(
    cfg: AttributeModelConfig, attribute_names: list[str], load_backbone_weights: bool = True
) -> nn.Module:
    """The network ``cfg`` describes; the backbone loads ``backbone_weights`` (local only) if asked."""
    weights = cfg.backbone_weights if load_backbone_weights else None
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"model.backbone_weights: file {weights} not found")
    backbone = create_backbone(cfg.backbone, weights=weights, **cfg.backbone_kwargs)
    if cfg.arch == "part":
        return PartBasedAttributeNet(backbone, attribute_names, part_mode=cfg.part_mode, dropout=cfg.dropout)
    return MaskAttentionAttributeNet(
        backbone, attribute_names, hidden=cfg.hidden, dropout=cfg.dropout, pooling=cfg.pooling
    )


class AttributeModelBundle(BaseModel):
    """What a shipped attribute checkpoint says about itself."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: AttributeModelConfig = Field(description="the architecture")
    attribute_names: list[str] = Field(description="output order of the logits")
    input_size: tuple[int, int] = Field(description="(height, width) the network was trained at")
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="RGB normalisation mean")
    std: tuple[float, float, float] = Field(IMAGENET_STD, description="RGB normalisation std")
    thresholds: list[float] | None = Field(
        None, description="per-attribute decision thresholds (default 0.5)"
    )
    info: dict[str, Any] = Field(default_factory=dict, description="recipe, data, metrics for the README")


def save_attribute_model(
    path: str | Path, model: nn.Module, bundle: AttributeModelBundle, half: bool = False
) -> Path:
    """Weights (optionally fp16 to halve the file) + the bundle, in one torch file."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"format": CHECKPOINT_FORMAT, "bundle": bundle.model_dump(mode="json"), "state_dict": state}, path
    )
    return path


def load_attribute_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, AttributeModelBundle]:
    """Rebuild the network from a file written by ``save_attribute_model`` (or a training checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"attribute weights {path} not found")
    blob = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(blob, dict) or "bundle" not in blob or "state_dict" not in blob:
        raise ValueError(
            f"{path} is not an attribute checkpoint (no 'bundle'/'state_dict'); "
            "write it with amodal train attributes or save_attribute_model"
        )
    bundle = AttributeModelBundle.model_validate(blob["bundle"])
    model = build_attribute_model(bundle.model, bundle.attribute_names, load_backbone_weights=False)
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, bundle
