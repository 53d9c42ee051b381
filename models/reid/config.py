"""Typed recipe for OAMN training and evaluation (``configs/reid_*.yaml``): ``model``, ``loss``,
``data``, ``train`` (optimisation only) and ``run`` (output folder, device, threads, seed, cadence:
the ``run:`` section every training recipe shares)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.run_config import RunConfig, refuse_moved_keys

__all__ = [
    "OAMNModelConfig",
    "OAMNLossConfig",
    "ReIDDataConfig",
    "ReIDTrainConfig",
    "ReIDRunConfig",
    "ReIDRecipe",
]

#: run-level keys of the recipe's first shape -> where they live now
MOVED_KEYS = {
    "out_dir": "moved: write run.out_dir",
    **{
        f"train.{key}": f"moved: write run.{key}"
        for key in ("device", "threads", "seed", "log_every", "checkpoint_every", "channels_last")
    },
    "train.validate_every": "moved and renamed: write run.val_every",
}


class OAMNModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("osnet_x0_25", description="backbone name from models.backbones.list_backbones()")
    backbone_weights: str | None = Field(
        None,
        description="local backbone weight file (torchreid/torchvision layout) loaded strictly before "
        "training; null = random init",
    )
    split_at: str = Field(
        "conv3",
        description="last backbone stage of the lower encoder E^I (paper sec. 4.1: "
        "ResNet 'layer3'; OSNet equivalent 'conv3')",
    )
    input_size: tuple[int, int] = Field((256, 128), description="network input height, width in pixels")
    grader: Literal["softmax", "visibility"] = Field(
        "visibility",
        description="occlusion grader: 'visibility' = convolutional head with sigmoid location scores "
        "and an explicit visible fraction, trained on realistic occlusions with exact labels (issue "
        "12); 'softmax' = the paper's single layer over four locations (checkpoints without this key)",
    )
    grader_pool_hw: tuple[int, int] = Field(
        (8, 4), description="grid the grader's masked feature is pooled to"
    )
    attention_ratio: int = Field(8, ge=1, description="RGA-S channel/spatial/down reduction ratio")
    mask_init: Literal["random", "open"] = Field(
        "random",
        description="'random' = default init of the mask module (m ~ 0.5 +- noise at the start); "
        "'open' = m ~ 0.95 everywhere at the start (last BatchNorm scale 0, bias 3), so a pretrained "
        "E^II first sees the features it was trained on and fine-tuning starts from the backbone",
    )
    grade_thresholds: tuple[float, float] = Field(
        (0.5, 0.75),
        description="eq. 8 thresholds on s^p (quarter, half); training replaces the paper's values "
        "with ones calibrated on held-out training identities when data.holdout_ids > 0",
    )
    visible_threshold: float | None = Field(
        None,
        description="'visibility' grader: a crop is graded holistic when its visible fraction is at "
        "least this; set by training on held-out training identities; null = eq. 8 on s^p alone",
    )
    grader_reference_median: float | None = Field(
        None,
        description="median top grader score s^p ('softmax' grader) or median visible fraction "
        "('visibility' grader) of the held-out holistic crops the thresholds were calibrated on; a "
        "camera's thresholds are shifted by its own median's difference from it "
        "(grader.adapt_thresholds). Set by training; null = no per-camera adaptation",
    )
    similarity_offsets: list[list[float]] | None = Field(
        None,
        description="9 x 9 mean cosine of different held-out crops under each grade pair's union "
        "mask, subtracted by unified matching (unification.similarity_offsets). Set by training; "
        "null = the paper's raw similarities",
    )

    def thresholds(self):
        """The grade decision's thresholds (``grader.GradeThresholds``) this checkpoint carries."""
        from .grader import GradeThresholds

        return GradeThresholds(*self.grade_thresholds, visible=self.visible_threshold)

    @model_validator(mode="after")
    def _positive(self) -> OAMNModelConfig:
        if min(self.input_size) < 16:
            raise ValueError(f"input_size must be at least 16x16, got {self.input_size}")
        quarter, half = self.grade_thresholds
        if not 0.0 <= quarter <= half <= 1.0:
            raise ValueError(
                f"grade_thresholds must satisfy 0 <= quarter <= half <= 1, got {self.grade_thresholds}"
            )
        if self.similarity_offsets is not None and [len(r) for r in self.similarity_offsets] != [9] * 9:
            raise ValueError("similarity_offsets must be a 9 x 9 table (one row and column per grade)")
        return self


class OAMNLossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha1: float = Field(1.0, ge=0, description="weight of L_mask1 in L_mask (eq. 4; sec. 4.1: 1.0)")
    alpha2: float = Field(1.0, ge=0, description="weight of L_mask2 in L_mask (eq. 4; sec. 4.1: 1.0)")
    lambda_mask: float = Field(
        5.0, ge=0, description="lambda1, weight of L_mask in L1 (eq. 10; sec. 4.1: 5.0)"
    )
    lambda_triplet: float = Field(0.5, ge=0, description="lambda2, weight of L_tri-g (eq. 10; sec. 4.1: 0.5)")
    lambda_ide: float = Field(1.0, ge=0, description="lambda3, weight of L_ide (eq. 10; sec. 4.1: 1.0)")
    lambda_score: float = Field(
        1.0, ge=0, description="lambda4, weight of L_score in L2 (eq. 10; sec. 4.1: 1.0)"
    )
    margin: float = Field(0.5, ge=0, description="triplet margin m_tri (eq. 5; sec. 4.1: 0.5)")
    squared_distance: bool = Field(
        False,
        description="true = squared Euclidean distances as written in eq. 5; false (default) = plain "
        "Euclidean, whose scale suits the 0.5 margin (squared distances of unnormalised "
        "512-d features are in the hundreds and diverged in our runs)",
    )
    mask_reduction: Literal["mean", "sum"] = Field(
        "mean",
        description="'sum' = eq. 2/3's squared L2 norm over the whole feature map; 'mean' divides it by "
        "the map's element count so that lambda1=5 does not swamp the other terms",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of L_ide (paper: none)")
    lambda_unify: float = Field(
        0.0,
        ge=0,
        description="not in the paper: weight of a triplet that trains the comparison unification "
        "makes at test time, each occluded view (anchor) against the holistic views with the same "
        "band of g zeroed (feature-space masking); 0 = off (the paper's objective)",
    )


class ReIDDataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(
        "../shared/datasets/PETA",
        description="PETA root (<subset>/archive/) or a Market-style folder of <id>_c<cam>..._*.jpg images",
    )
    layout: Literal["peta", "market"] = Field("peta", description="dataset layout of root")
    subsets: list[str] = Field(
        ["3DPeS", "CAVIAR4REID", "GRID", "SARC3D", "TownCentre"],
        description="PETA subsets to train on (ignored for layout 'market')",
    )
    min_images_per_id: int = Field(2, ge=1, description="drop identities with fewer images (triplets need 2)")
    masks: str | None = Field(
        None,
        description="folder of human-parsing maps named like the training crops (<stem>.png, class 0 "
        "= background; Market-1501's bounding_box_train_parsing): full-body masks for the grader's "
        "realistic occlusions with exact labels (train.grader_batch); null = none",
    )
    max_ids: int | None = Field(
        None, ge=2, description="keep only the first N identities (smoke tests); null = all"
    )
    holdout_ids: int = Field(
        0,
        ge=0,
        description="identities held out of training (drawn with run.seed, spread evenly over the "
        "subsets) to pick the best checkpoint and calibrate the grader's thresholds; never the test set",
    )


class ReIDTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(
        1000, ge=0, description="optimiser steps of the network (0: grader only, needs init_weights)"
    )
    p: int = Field(16, ge=2, description="identities per batch (P of the P x K sampler)")
    k: int = Field(4, ge=2, description="images per identity (K of the P x K sampler)")
    optimizer: Literal["sgd", "adam"] = Field(
        "sgd", description="optimiser of the network (L1) and of the grader (L2); paper sec. 4.1: SGD"
    )
    lr: float = Field(0.01, gt=0, description="learning rate of the encoder, mask module and heads")
    backbone_lr_mult: float = Field(
        1.0, gt=0, description="learning-rate multiplier of the pretrained backbone"
    )
    grader_lr: float = Field(0.01, gt=0, description="learning rate of the grader's own optimiser (L2)")
    grader_batch: int = Field(
        0,
        ge=0,
        description="crops per grader step on realistic occlusions (other people pasted in front, "
        "static objects, frame-border cuts; exact labels from data.masks), one step after every "
        "network step; 0 = the paper: the grader learns from the network step's corner-patch views",
    )
    occlusion_mix: tuple[float, float, float, float, float] = Field(
        (0.2, 0.3, 0.15, 0.2, 0.15),
        description="share of whole crops, people in front, people behind (nothing hidden), static "
        "occluders and frame-border cuts in the grader's realistic batches "
        "(models.reid.realistic_occlusion.KINDS)",
    )
    grader_augment: bool = Field(
        False,
        description="jitter brightness and contrast of the grader's realistic batches and at times "
        "lower their resolution or blur them (realistic_occlusion.degrade): cameras unlike the "
        "training set's",
    )
    init_weights: str | None = Field(
        None,
        description="OAMN checkpoint whose network (all but the grader and the identity classifier) "
        "starts this run; with iterations 0 the run trains a fresh grader on that network only",
    )
    grader_only_iterations: int = Field(
        0,
        ge=0,
        description="extra steps after `iterations` that train only the grader (eq. 7) on the frozen "
        "encoder and mask module; cheap (no backward through the network)",
    )
    grader_only_optimizer: Literal["sgd", "adam"] = Field(
        "adam",
        description="fresh optimiser of the grader-only phase; Adam because the masked features g are "
        "small (std ~0.04), which makes SGD on the grader's linear layer slow",
    )
    grader_only_lr: float = Field(
        0.01, gt=0, description="learning rate of the grader-only phase (cosine decay)"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay")
    freeze_stages: list[str] = Field(
        [], description="leading backbone stages to freeze (CPU budget option; e.g. [stem, conv2])"
    )
    warmup_iterations: int = Field(50, ge=0, description="linear learning-rate warm-up steps")
    flip: bool = Field(True, description="random horizontal flip")
    pad_crop: int = Field(
        8, ge=0, description="pixels of zero padding before a random crop back to input size"
    )


class ReIDRunConfig(RunConfig):
    """The shared ``run:`` section with OAMN's defaults, optional validation and its checkpoint
    cadence and memory format."""

    out_dir: str = Field("runs/reid", description="checkpoints, metrics JSON and oamn.pt go here")
    seed: int = Field(
        0,
        description="seed of the held-out identities (data.holdout_ids), sampling, augmentation, init "
        "and the held-out occlusions of validation and calibration",
    )
    log_every: int = Field(10, ge=1, description="iterations between log lines")
    val_every: int = Field(
        0,
        ge=0,
        description="steps between validations on the held-out identities (data.holdout_ids); the "
        "best one (mean of holistic and occluded mAP) is shipped; 0 = ship the last step",
    )
    checkpoint_every: int = Field(100, ge=1, description="iterations between resumable checkpoints")
    channels_last: bool = Field(
        True, description="channels-last memory format (about 1.3x faster OSNet training on CPU)"
    )


class ReIDRecipe(BaseModel):
    """A complete, reproducible OAMN training recipe."""

    model_config = ConfigDict(extra="forbid")

    model: OAMNModelConfig = Field(default_factory=OAMNModelConfig, description="network")
    loss: OAMNLossConfig = Field(default_factory=OAMNLossConfig, description="loss weights (paper sec. 4.1)")
    data: ReIDDataConfig = Field(default_factory=ReIDDataConfig, description="training data")
    train: ReIDTrainConfig = Field(default_factory=ReIDTrainConfig, description="optimisation")
    run: ReIDRunConfig = Field(
        default_factory=ReIDRunConfig,
        description="output folder, device, threads, seed, log / validation / checkpoint cadence",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Run-level keys of the first recipe shape (``out_dir``, ``train.device`` ...) are refused
        with their new spelling (``run.out_dir``, ``run.device`` ...)."""
        return refuse_moved_keys(data, MOVED_KEYS, cls.__name__)

    @model_validator(mode="after")
    def _steps(self) -> ReIDRecipe:
        if self.train.iterations == 0 and (
            self.train.init_weights is None or self.train.grader_only_iterations == 0
        ):
            raise ValueError(
                "train.iterations=0 trains only the grader: it needs train.init_weights (the network) "
                "and train.grader_only_iterations > 0"
            )
        return self

    @model_validator(mode="after")
    def _grader_has_data(self) -> ReIDRecipe:
        if self.model.grader == "visibility" and (self.train.grader_batch == 0 or self.data.masks is None):
            raise ValueError(
                "model.grader='visibility' learns its visible fraction from realistic occlusions with "
                "exact labels: set train.grader_batch > 0 and data.masks (a folder of parsing maps), "
                "or use model.grader='softmax' (the paper's grader, on corner patches)"
            )
        return self
