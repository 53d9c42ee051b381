"""The YAML recipe of a de-occlusion training run (``configs/deocclusion_*.yaml``).

Sections: ``model``, ``loss``, ``data`` (crops, occlusion synthesis and the data seed), ``optim`` and
``run`` (out_dir, device, threads, the training seed, logging and validation cadence), the ``run:``
section every training recipe shares. Every section refuses unknown keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.backends import BackendConfig
from models.run_config import RunConfig, refuse_moved_keys

__all__ = [
    "ModelConfig",
    "LossConfig",
    "DataConfig",
    "OptimConfig",
    "DeocclusionRunConfig",
    "DeocclusionRecipe",
    "EvalConfig",
]

#: top-level keys of the recipe's first shape, now in ``run:``
MOVED_KEYS = {
    key: f"moved: write run.{key}"
    for key in ("out_dir", "device", "threads", "seed", "log_every", "val_every")
}


class ModelConfig(BaseModel):
    """Generator / discriminator shape (de-occlusion paper sec. 3.2)."""

    model_config = ConfigDict(extra="forbid")

    image_size: tuple[int, int] = Field(
        (128, 64), description="Input (height, width); multiples of 16. Paper: 320x128."
    )
    base_channels: int = Field(
        16, ge=1, description="Generator width of the first block (doubles per block)."
    )
    discriminator_channels: int = Field(16, ge=1, description="Discriminator width of the first conv.")
    num_attributes: int = Field(
        0, ge=0, description="> 0: 'Entire' variant, attributes joined at the bottleneck."
    )
    attribute_channels: int = Field(
        8, ge=1, description="Channels the attribute FC is reshaped to at the bottleneck."
    )
    upsample: Literal["transpose", "bilinear"] = Field("transpose", description="x2 up-sampling layer type.")
    residual: bool = Field(
        False, description="Not in the paper: global input skip (starts as identity; for short CPU runs)."
    )


class LossConfig(BaseModel):
    """Eq. 3: L = L_adv + lambda_1 * L_content + lambda_2 * L_attr (+ optional pixel anchor)."""

    model_config = ConfigDict(extra="forbid")

    content: Literal["perceptual", "mse", "sse"] = Field(
        "perceptual", description="perceptual (eq. 5-6) or the sec. 5.2 baseline's MSE / SSE."
    )
    lambda_adversarial: float = Field(1.0, ge=0, description="Weight of eq. 4 (paper: 1).")
    lambda_content: float = Field(10.0, ge=0, description="lambda_1 (paper: 10).")
    lambda_attribute: float = Field(
        0.0, ge=0, description="lambda_2 (paper: 5 on RAP); needs attribute_model."
    )
    lambda_pixel: float = Field(
        0.0, ge=0, description="Extra L1 pixel term (not in the paper; anchors colours for a short CPU run)."
    )
    vgg16_weights: str | None = Field(
        None, description="Local torchvision VGG16 ImageNet state dict; else OSNet."
    )
    osnet_weights: str | None = Field(
        "../shared/models/osnet_x0_25_msmt17.pth",
        description="OSNet x0.25 ReID weights for the perceptual loss.",
    )
    attribute_model: str | None = Field(
        None, description="Frozen attribute classifier (TorchScript or pickled nn.Module) for eq. 7."
    )

    @model_validator(mode="after")
    def _attribute_needs_model(self) -> LossConfig:
        if self.lambda_attribute > 0 and not self.attribute_model:
            raise ValueError(
                "loss.lambda_attribute > 0 needs loss.attribute_model (a frozen attribute classifier)"
            )
        if self.content == "perceptual" and not (self.vgg16_weights or self.osnet_weights):
            raise ValueError("loss.content 'perceptual' needs loss.vgg16_weights or loss.osnet_weights")
        return self


class DataConfig(BaseModel):
    """Where crops come from and how they are occluded (sec. 4.1 / reconstruction paper sec. 4)."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field("../shared/datasets/PETA", description="PETA root (holds <subset>/archive/Label.txt).")
    train_subsets: list[str] = Field(
        ["3DPeS", "CAVIAR4REID", "GRID", "MIT", "SARC3D", "TownCentre"],
        description="Training subsets (ASSETS.md).",
    )
    test_subsets: list[str] = Field(["VIPeR"], description="Held-out subsets for evaluation (ASSETS.md).")
    attributes: str = Field("peta35", description="Attribute set for labels: peta35 or all.")
    val_images: int = Field(
        300, ge=0, description="Training crops held out for model selection (never VIPeR)."
    )
    max_train_images: int | None = Field(None, ge=1, description="Cap on training crops (quick runs).")
    occluder_pool: int = Field(1500, ge=2, description="Crops whose silhouettes serve as occluders.")
    segmenter: str | None = Field(
        None, description="Local ultralytics *-seg model for silhouettes; else GrabCut."
    )
    modes: dict[Literal["silhouette", "bottom", "corner"], float] = Field(
        {"silhouette": 0.6, "bottom": 0.2, "corner": 0.2},
        description="Training occlusion modes and their weights.",
    )
    eval_mode: Literal["silhouette", "bottom", "corner"] = Field(
        "silhouette",
        description="Occlusion used for validation/evaluation pairs (the paper's Table 3 setting).",
    )
    seed: int = Field(
        0,
        description="The data seed: held-out split, occluder pool and evaluation occlusions (run.seed "
        "is the training seed: initialisation and batch order).",
    )


class OptimConfig(BaseModel):
    """Sec. 3.3: Adam(0.5, 0.999), lr 2e-4, batch 20, K = 1."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(2e-4, gt=0, description="Adam learning rate for G and D.")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas.")
    batch_size: int = Field(20, ge=1, description="Mini-batch size.")
    epochs: int = Field(10, ge=1, description="Epochs (a pass over the training crops).")
    max_iters: int | None = Field(None, ge=1, description="Stop after this many G updates in total.")
    max_minutes: float | None = Field(None, gt=0, description="Wall-clock budget; stops cleanly and saves.")
    disc_steps: int = Field(1, ge=1, description="K: D updates per G update.")


class DeocclusionRunConfig(RunConfig):
    """The shared ``run:`` section with this recipe's output folder; its seed is the training seed."""

    out_dir: str = Field("runs/deocclusion", description="Checkpoints, grids and metrics go here.")
    seed: int = Field(
        0,
        description="The training seed: initialisation and batch order (data.seed is the data seed: "
        "held-out split, occluder pool, evaluation occlusions).",
    )
    log_every: int = Field(20, ge=1, description="Log losses every N iterations.")
    val_every: int = Field(200, ge=1, description="Validate (SSIM/PSNR) and write a grid every N iterations.")


class DeocclusionRecipe(BaseModel):
    """A whole training run."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig, description="Network shapes.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Objective.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data and occlusion synthesis.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and schedule.")
    run: DeocclusionRunConfig = Field(
        default_factory=DeocclusionRunConfig, description="Output, device, threads, training seed, cadence."
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Top-level run keys of the first recipe shape (``out_dir``, ``device`` ...) are refused with
        their new spelling (``run.out_dir``, ``run.device`` ...)."""
        return refuse_moved_keys(data, MOVED_KEYS, cls.__name__)


class EvalConfig(BaseModel):
    """Evaluation settings (``amodal eval deocclusion``)."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendConfig = Field(
        default_factory=lambda: BackendConfig(preference=["torch"]), description="How the generator runs."
    )
