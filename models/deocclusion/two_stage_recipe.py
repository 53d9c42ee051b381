"""The YAML recipe of a two-stage de-occlusion training run (``configs/deocclusion_two_stage_*.yaml``).

One recipe trains one network: ``stage: mask`` the mask-completion network (sec. 3.2),
``stage: content`` a content network (sec. 3.3's parsing-guided one, or the U-Net baseline) behind
a trained, frozen mask-completion network. Run-level keys live in ``run:``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.run_config import RunConfig

__all__ = [
    "TwoStageModelConfig",
    "TwoStageLossConfig",
    "PairDataConfig",
    "TwoStageOptimConfig",
    "TwoStageRecipe",
]


class TwoStageModelConfig(BaseModel):
    """Network shapes of both stages (the content network's ``kind`` picks the generator)."""

    model_config = ConfigDict(extra="forbid")

    image_size: tuple[int, int] = Field((128, 64), description="Input (height, width); multiples of 16.")
    mask_channels: int = Field(16, ge=4, description="Mask-completion hourglass width (first block).")
    templates: int = Field(
        8, ge=1, description="Typical-pose templates: k-means centres of the training masks."
    )
    content: Literal["pga", "unet"] = Field(
        "pga",
        description="pga: sec. 3.3's parsing-guided network; unet: the shipped U-Net generator, "
        "given the region to restore as a 4th input channel (the baseline).",
    )
    content_channels: int = Field(24, ge=4, description="Content network width (first block).")
    attention_scales: int = Field(
        2, ge=0, le=4, description="Decoder scales with a PGA module (coarsest first)."
    )
    discriminator_channels: int = Field(16, ge=1, description="Discriminator width of the first conv.")
    mask_weights: str | None = Field(
        None, description="stage content: the trained mask-completion file it trains behind."
    )


class TwoStageLossConfig(BaseModel):
    """Eq. 4 (masks) and eq. 7 (content) weights."""

    model_config = ConfigDict(extra="forbid")

    mask_l1: float = Field(1.0, ge=0, description="Eq. 3's L1 term on the amodal mask (lambda_3).")
    adversarial: float = Field(0.05, ge=0, description="beta_1: eq. 7's adversarial term.")
    hole_l1: float = Field(
        6.0, ge=0, description="beta_2: L1 inside the restored region ([27]'s hole weight)."
    )
    perceptual: float = Field(1.0, ge=0, description="beta_3: perceptual loss through the OSNet features.")
    style: float = Field(
        50.0, ge=0, description="beta_4: style loss [27] (Gram matrices of the same features)."
    )
    osnet_weights: str = Field(
        "../shared/models/osnet_x0_25_msmt17.pth",
        description="OSNet x0.25 ReID weights for perceptual and style.",
    )


class PairDataConfig(BaseModel):
    """Market-1501 training crops, their parsing maps and how they are occluded."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field("../shared/datasets/Market-1501", description="Market-1501 root.")
    parsing: str = Field("bounding_box_train_parsing", description="Parsing-map folder under root.")
    held_out_ids: int = Field(75, ge=1, description="Training identities held out for model selection.")
    val_pairs: int = Field(400, ge=8, description="Held-out pairs validated every run.val_every steps.")
    max_train_images: int | None = Field(None, ge=2, description="Cap on training crops (quick runs).")
    kinds: dict[Literal["person", "object", "border"], float] = Field(
        {"person": 0.5, "object": 0.3, "border": 0.2}, description="Occluder kinds and their weights."
    )
    initial_mask: float = Field(
        0.5, ge=0, le=1, description="stage mask: share of crops given a (corrupted) initial modal mask."
    )
    exact_guidance: float = Field(
        0.5, ge=0, le=1, description="stage content: share of crops guided by the exact masks, not stage 1's."
    )


class TwoStageOptimConfig(BaseModel):
    """Adam for the network and its discriminator."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(2e-4, gt=0, description="Adam learning rate.")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas.")
    batch_size: int = Field(16, ge=1, description="Mini-batch size.")
    max_iters: int = Field(3000, ge=1, description="Updates in total.")
    max_minutes: float | None = Field(None, gt=0, description="Wall-clock budget; stops cleanly and saves.")


class TwoStageRunConfig(RunConfig):
    """``run:`` with this family's defaults (a partial ``run:`` section keeps them)."""

    out_dir: str = Field("runs/deocclusion_two_stage", description="Checkpoints, grids and metrics go here.")


class TwoStageRecipe(BaseModel):
    """A whole training run of one of the two stages."""

    model_config = ConfigDict(extra="forbid")

    stage: Literal["mask", "content"] = Field(description="Which network this run trains.")
    model: TwoStageModelConfig = Field(default_factory=TwoStageModelConfig, description="Network shapes.")
    loss: TwoStageLossConfig = Field(default_factory=TwoStageLossConfig, description="Objective.")
    data: PairDataConfig = Field(default_factory=PairDataConfig, description="Data and occlusion synthesis.")
    optim: TwoStageOptimConfig = Field(
        default_factory=TwoStageOptimConfig, description="Optimiser and schedule."
    )
    run: TwoStageRunConfig = Field(
        default_factory=TwoStageRunConfig, description="Output, device, threads, seed, cadence."
    )

    @model_validator(mode="after")
    def _content_needs_masks(self) -> TwoStageRecipe:
        if self.stage == "content" and not self.model.mask_weights:
            raise ValueError("stage 'content' needs model.mask_weights (a trained mask-completion file)")
        if sum(self.data.kinds.values()) <= 0:
            raise ValueError(f"data.kinds needs a positive weight, got {self.data.kinds}")
        return self
