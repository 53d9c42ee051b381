"""The YAML recipe of a super-resolution training run (``configs/superres_*.yaml``).

Sections: ``model`` (network shape and scale), ``data`` (Market-1501 crops, held-out identities,
how the low-resolution input is made), ``optim``, ``loss`` and ``run`` (out_dir, device, threads,
seed, logging and validation cadence). Every section refuses unknown keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.run_config import RunConfig

__all__ = ["ModelConfig", "DataConfig", "OptimConfig", "LossConfig", "SuperResRecipe"]


class ModelConfig(BaseModel):
    """Shape of the network (``models.superres.network.SuperResolutionNet``)."""

    model_config = ConfigDict(extra="forbid")

    scale: int = Field(4, ge=2, le=8, description="Up-sampling factor r (paper sec. 3.3 / lowRAP: 4).")
    channels: int = Field(32, ge=1, description="Feature channels of the residual body.")
    blocks: int = Field(6, ge=0, description="Residual blocks (EDSR-style, no batch norm).")
    res_scale: float = Field(1.0, gt=0, description="Scale of each block's residual branch (EDSR).")
    skip: Literal["bicubic", "bilinear"] = Field(
        "bicubic", description="Global input skip: the untrained network equals this interpolation."
    )


class DataConfig(BaseModel):
    """High-resolution crops and how their low-resolution inputs are made (sec. 3.3: downsample by r)."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(
        "../shared/datasets/Market-1501", description="Market-1501 root (or any Market-style layout)."
    )
    train_folder: str = Field(
        "bounding_box_train", description="Folder of <id>_c<cam>..._*.jpg training crops under root."
    )
    image_size: tuple[int, int] = Field(
        (128, 64), description="HR (height, width) every crop is resized to; multiples of model.scale."
    )
    val_identities: int = Field(
        50, ge=0, description="Training identities held out for model selection (never the test split)."
    )
    val_max_images: int | None = Field(
        400, ge=1, description="Cap on held-out crops scored per validation (seeded choice)."
    )
    max_train_images: int | None = Field(None, ge=1, description="Cap on training crops (quick runs).")
    downsample: Literal["area", "bicubic"] = Field(
        "area", description="How the LR input is made from the HR crop (OpenCV INTER_AREA / INTER_CUBIC)."
    )
    patch_size: tuple[int, int] | None = Field(
        None, description="Random HR patch (height, width) per sample; null = the whole crop."
    )
    flip: bool = Field(True, description="Random horizontal flips.")
    seed: int = Field(0, description="Seed of the held-out split and of the per-sample flips / patches.")


class OptimConfig(BaseModel):
    """Adam (as the paper's G^R / G^S, sec. 4 'Resolution'), cosine or constant learning rate."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(
        1e-3, gt=0, description="Adam learning rate (also D's, when the adversarial term is on)."
    )
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="Adam betas (paper: 0.5, 0.999 for its GAN)."
    )
    batch_size: int = Field(16, ge=1, description="Mini-batch size.")
    epochs: int | None = Field(None, ge=1, description="Stop after this many passes over the training crops.")
    max_iters: int | None = Field(None, ge=1, description="Stop after this many updates in total.")
    max_minutes: float | None = Field(None, gt=0, description="Wall-clock budget; stops cleanly and saves.")
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="Learning rate: constant, or cosine decay to lr_min over max_iters."
    )
    lr_min: float = Field(1e-5, ge=0, description="Final learning rate of the cosine schedule.")

    @model_validator(mode="after")
    def _needs_a_stop(self) -> OptimConfig:
        if self.epochs is None and self.max_iters is None and self.max_minutes is None:
            raise ValueError("set at least one of optim.epochs, optim.max_iters or optim.max_minutes")
        if self.schedule == "cosine" and self.max_iters is None:
            raise ValueError("optim.schedule 'cosine' needs optim.max_iters (the length of the decay)")
        return self


class LossConfig(BaseModel):
    """Content loss (sec. 3.3: SSE) plus an optional adversarial term (D^S, lambda = 1 in the paper)."""

    model_config = ConfigDict(extra="forbid")

    content: Literal["l1", "mse", "sse"] = Field(
        "l1", description="Pixel loss: l1, mse, or the paper's SSE (sum per image, mean over the batch)."
    )
    lambda_adversarial: float = Field(
        0.0, ge=0, description="Weight of the adversarial term (paper: 1); 0 = no discriminator."
    )
    discriminator_channels: int = Field(16, ge=1, description="Width of D^S's first conv (when used).")


class SuperResRunConfig(RunConfig):
    """``run:`` with this family's defaults (a partial ``run:`` section keeps them)."""

    out_dir: str = Field("runs/superres", description="Checkpoints, grids and metrics go here.")
    log_every: int = Field(50, ge=1, description="Log the loss every N iterations.")
    val_every: int = Field(500, ge=1, description="Validate (PSNR/SSIM) and write a grid every N iterations.")


class SuperResRecipe(BaseModel):
    """A whole training run."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig, description="Network shape and scale.")
    data: DataConfig = Field(default_factory=DataConfig, description="Crops and LR synthesis.")
    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(max_iters=1000), description="Optimiser and schedule."
    )
    loss: LossConfig = Field(default_factory=LossConfig, description="Objective.")
    run: SuperResRunConfig = Field(
        default_factory=SuperResRunConfig, description="Output, device, threads, seed, cadence."
    )

    @model_validator(mode="after")
    def _sizes_fit_scale(self) -> SuperResRecipe:
        r = self.model.scale
        for key, size in (
            ("data.image_size", self.data.image_size),
            ("data.patch_size", self.data.patch_size),
        ):
            if size is not None and (size[0] % r or size[1] % r or min(size) < r):
                raise ValueError(f"{key} {tuple(size)} must be positive multiples of model.scale ({r})")
        if self.data.patch_size is not None and (
            self.data.patch_size[0] > self.data.image_size[0]
            or self.data.patch_size[1] > self.data.image_size[1]
        ):
            raise ValueError(
                f"data.patch_size {tuple(self.data.patch_size)} is larger than data.image_size "
                f"{tuple(self.data.image_size)}"
            )
        return self
