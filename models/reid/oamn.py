"""OAMN network (Chen et al., ICCV 2021, sec. 3, Fig. 3): backbone split into a lower encoder E^I
and a higher encoder E^II, the attention-guided mask module M between them (g = m * f, eq. 1),
a BNNeck embedding + identity classifier on E^II, and the occlusion grader T on the detached g.

One forward pass gives both the ReID embedding and the grader scores, which is what the pipeline
needs: it routes a crop on the grade and matches it on the embedding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import Backbone, create_backbone

from .attention import SpatialRelationAttention
from .grader import OcclusionGrader
from .occlusion_augment import grade_from_index, occlusion_box

__all__ = [
    "OAMN",
    "OAMNOutput",
    "OAMNInference",
    "infer_feature_hw",
    "load_oamn",
    "load_oamn_checkpoint",
    "oamn_extra",
    "save_oamn_weights",
]

logger = logging.getLogger(__name__)


@dataclass
class OAMNOutput:
    """Everything one forward pass produces; ``logits`` is None without a classifier."""

    embedding: torch.Tensor  # (B, D) BNNeck feature: what the gallery matches on
    feature: torch.Tensor  # (B, D) pre-BN feature h: the triplet loss's input
    logits: torch.Tensor | None  # (B, num_classes) identity logits r
    scores: torch.Tensor  # (B, 5) grader: s over top/bottom/left/right, then the visible fraction
    f: torch.Tensor  # E^I output
    m: torch.Tensor  # (B, 1, h, w) spatial mask
    g: torch.Tensor  # m * f


def infer_feature_hw(backbone: Backbone, split_at: str, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size of E^I's output for an input size (one tiny dry run, no gradient)."""
    lower, _ = backbone.split(split_at)
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = lower(torch.zeros(1, 3, *input_hw))
    backbone.train(was_training)
    return int(out.shape[-2]), int(out.shape[-1])


class OAMN(nn.Module):
    """OAMN on any registered backbone; plain constructor arguments (``from_config`` maps a recipe)."""

    def __init__(
        self,
        backbone: Backbone,
        split_at: str,
        feature_hw: tuple[int, int],
        num_classes: int = 0,
        grader_pool_hw: tuple[int, int] = (8, 4),
        attention_ratio: int = 8,
        mask_init: str = "random",
        grader: str = "visibility",
    ):
        super().__init__()
        backbone._check_stage(split_at)
        if split_at == backbone.stage_names[-1]:
            raise ValueError(
                f"split_at={split_at!r} leaves no higher encoder E^II; "
                f"choose one of {backbone.stage_names[:-1]}"
            )
        self.backbone = backbone
        self.split_at = split_at
        self._split_index = backbone.stage_names.index(split_at) + 1
        channels = backbone.stage_channels(split_at)
        self.mask_module = SpatialRelationAttention(
            channels, feature_hw, attention_ratio, attention_ratio, attention_ratio
        )
        if mask_init == "open":
            self.mask_module.open_()
        elif mask_init != "random":
            raise ValueError(f"mask_init must be 'random' or 'open', got {mask_init!r}")
        self.grader = OcclusionGrader(channels, grader_pool_hw, grader)
        dim = backbone.feature_dim
        self.embedding_dim = dim
        # BNNeck (Luo et al., "Bag of Tricks", 2019): triplet on h, identity loss after BN; BN bias frozen
        self.bnneck = nn.BatchNorm1d(dim)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False) if num_classes > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def _lower(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = x
        for stage in self.backbone.stages()[: self._split_index]:  # E^I
            f = stage(f)
        m = self.mask_module(f)  # M, eq. 1
        return f, m, m * f

    def masked_features(self, x: torch.Tensor) -> torch.Tensor:
        """g = M(E^I(x)) * E^I(x): the grader's input, without running E^II."""
        return self._lower(x)[2]

    def forward(self, x: torch.Tensor) -> OAMNOutput:
        f, m, g = self._lower(x)
        h = self.higher(g)  # E^II
        emb = self.bnneck(h)
        logits = self.classifier(emb) if self.classifier is not None else None
        scores = self.grader(g)  # T on detached g (eq. 7: no gradient back)
        return OAMNOutput(emb, h, logits, scores, f, m, g)

    def higher(self, g: torch.Tensor) -> torch.Tensor:
        """E^II + the backbone's head on a (masked) feature g: the pre-BN feature h."""
        z = g
        for stage in self.backbone.stages()[self._split_index :]:
            z = stage(z)
        return self.backbone.forward_head(z)

    def mask_feature(self, g: torch.Tensor, grades: int | list[int]) -> torch.Tensor:
        """Copy of g with the band of an occlusion grade zeroed (one grade for every row, or one per
        row): what a perfect mask module does to an occluder there (eq. 1). One grade for all rows
        is a single slice, so an exported graph keeps a dynamic batch."""
        h, w = self.mask_module.feature_hw  # fixed for the model: static in an exported graph
        out = g.clone()
        rows = [(slice(None), grades)] if isinstance(grades, int) else enumerate(grades)
        for i, grade in rows:
            location, area = grade_from_index(int(grade))
            if location is not None:
                y0, y1, x0, x1 = occlusion_box(h, w, location, area)
                out[i, :, y0:y1, x0:x1] = 0
        return out

    def freeze_stages(self, names: list[str]) -> None:
        """Freeze leading backbone stages (no gradient, BatchNorm statistics kept): a CPU budget
        option that skips the backward pass through the high-resolution early layers."""
        for name in names:
            if name not in self.backbone.stage_names[: self._split_index]:
                raise ValueError(
                    f"can only freeze stages of E^I {self.backbone.stage_names[: self._split_index]}, "
                    f"got {name!r}"
                )
        self._frozen = list(names)
        stages = dict(zip(self.backbone.stage_names, self.backbone.stages(), strict=True))
        for name in names:
            for p in stages[name].parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> OAMN:
        super().train(mode)
        stages = dict(zip(self.backbone.stage_names, self.backbone.stages(), strict=True))
        for name in getattr(self, "_frozen", []):
            stages[name].eval()
        return self

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Everything minimised by L1 (eq. 10): all trainable parameters except the grader's."""
        grader = {id(p) for p in self.grader.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in grader]

    @classmethod
    def from_config(cls, cfg: Any, num_classes: int = 0, load_backbone_weights: bool = True) -> OAMN:
        """Build from a ``models.reid.config.OAMNModelConfig``."""
        weights = cfg.backbone_weights if load_backbone_weights else None
        backbone = create_backbone(cfg.backbone, weights=weights)
        hw = infer_feature_hw(backbone, cfg.split_at, tuple(cfg.input_size))
        return cls(
            backbone,
            cfg.split_at,
            hw,
            num_classes,
            tuple(cfg.grader_pool_hw),
            cfg.attention_ratio,
            cfg.mask_init,
            cfg.grader,
        )


class OAMNInference(nn.Module):
    """The exported inference graph: normalised images (B, 3, H, W) -> (L2-normalised embedding,
    grader scores), one forward pass per crop."""

    def __init__(self, model: OAMN):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return F.normalize(out.embedding, dim=1), out.scores


def save_oamn_weights(
    model: OAMN, model_config: dict[str, Any], path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Ship an inference checkpoint: the model without its identity classifier plus its config."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"format": "amodal.oamn/1", "model_config": model_config, "state_dict": state, "extra": extra or {}},
        path,
    )
    return path


def oamn_extra(path: str | Path) -> dict:
    """The ``extra`` a checkpoint carries (seed, data root, held-out identities, calibration, site
    adaptation); ``{}`` when it has none. For a caller that needs nothing else of the file (one that
    also needs the network reads both at once with ``load_oamn_checkpoint``); read after the file was
    checked, e.g. by ``load_oamn``, which names a bad file clearly."""
    return _extra_of(torch.load(path, map_location="cpu", weights_only=True))


def _extra_of(ckpt: object) -> dict:
    return dict(ckpt.get("extra") or {}) if isinstance(ckpt, dict) else {}


def load_oamn(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[OAMN, Any]:
    """Load a checkpoint written by ``save_oamn_weights`` or a training checkpoint (``last.pt`` /
    ``best.pt`` from ``amodal train reid``); returns the model in eval mode and its model config."""
    model, cfg, _ = load_oamn_checkpoint(path, map_location)
    return model, cfg


def load_oamn_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[OAMN, Any, dict]:
    """``load_oamn`` and the checkpoint's ``extra`` (``oamn_extra``), from one read of the file."""
    from .config import OAMNModelConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OAMN weights not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not an OAMN checkpoint")
    if "model_config" in ckpt:
        cfg_dict, state = ckpt["model_config"], ckpt["state_dict"]
    elif "recipe" in ckpt and "model" in ckpt:
        cfg_dict, state = ckpt["recipe"]["model"], ckpt["model"]
    else:
        raise ValueError(f"{path}: not an OAMN checkpoint (keys {sorted(ckpt)[:6]})")
    cfg_dict = {"grader": "softmax", **cfg_dict}  # written before the visibility grader existed
    cfg = OAMNModelConfig.model_validate(cfg_dict)
    model = OAMN.from_config(cfg, num_classes=0, load_backbone_weights=False)
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the OAMN config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.eval(), cfg, _extra_of(ckpt)
