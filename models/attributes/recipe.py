"""The YAML training recipe of ``tools/train_attributes.py`` (typed, every key described) and the
data loading it drives: which reader, which subsets, which attributes, which held-out part.

Model selection (loss variant, epoch) uses a held-out part of the TRAINING data, split by person
id so no person is on both sides; the test set (VIPeR in ``configs/attributes_*.yaml``) is only
touched by ``tools/eval_attributes.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.data.attribute_files import (
    read_attribute_csv,
    read_attribute_json,
    read_pa100k,
    read_rap,
    select_attributes,
)
from models.data.peta_attributes import PETA_TRAIN_SUBSETS, AttributeRecords, read_peta_attributes

from .model import AttributeModelConfig

__all__ = [
    "cap_images_per_id",
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "RuntimeConfig",
    "AttributeRecipe",
    "load_records",
    "split_holdout",
]


class DataConfig(BaseModel):
    """Where the images and labels come from."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["peta", "csv", "json", "rap", "pa100k"] = Field("peta", description="annotation reader")
    root: str = Field(
        "../shared/datasets/PETA", description="PETA root, or the CSV/JSON file, or RAP/PA-100K root"
    )
    train_subsets: list[str] = Field(
        default_factory=lambda: list(PETA_TRAIN_SUBSETS), description="PETA subsets to train on"
    )
    attributes: str | list[str] = Field("peta35", description="'peta35', 'all' or an explicit attribute list")
    holdout_fraction: float = Field(
        0.1, ge=0.0, lt=0.9, description="fraction of training person ids held out for model selection"
    )
    max_images_per_id: int | None = Field(
        None,
        ge=1,
        description="keep at most this many images per person id (evenly spaced); thins video-frame "
        "subsets such as TownCentre (~30 near-identical frames per person)",
    )
    input_size: tuple[int, int] = Field((128, 64), description="(height, width) every crop is resized to")
    flip_p: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability (training)")
    crop_pad: int = Field(4, ge=0, description="random crop: pixels of padding then crop back (training)")
    jitter: float = Field(0.2, ge=0.0, lt=1.0, description="colour jitter strength (training)")

    @model_validator(mode="after")
    def _check_size(self) -> DataConfig:
        if min(self.input_size) < 32:
            raise ValueError(f"data.input_size must be at least 32 pixels per side, got {self.input_size}")
        return self


class LossConfig(BaseModel):
    """Which weighted BCE (models.attributes.losses)."""

    model_config = ConfigDict(extra="forbid")

    scheme: Literal["reconstruction", "exp", "category", "plain"] = Field(
        "reconstruction", description="Fabbri eq. 2 / de-occlusion eq. 7 / MAN-PAR eq. 4-5 / unweighted"
    )


class OptimConfig(BaseModel):
    """Optimiser and schedule."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(6, ge=1, description="passes over the training set")
    batch_size: int = Field(32, ge=1, description="images per step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the heads")
    backbone_lr_mult: float = Field(0.5, ge=0, description="backbone learning rate = lr x this")
    weight_decay: float = Field(5e-4, ge=0, description="Adam weight decay")
    warmup_iters: int = Field(100, ge=0, description="linear learning-rate warm-up steps")
    max_iters_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (smoke tests)")


class RuntimeConfig(BaseModel):
    """Where and how the run executes."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:k]'")
    threads: int | None = Field(1, ge=1, description="torch CPU threads (None = torch default)")
    seed: int = Field(0, description="seed for sampling, augmentation and initialisation")
    out_dir: str = Field("runs/attributes", description="checkpoints, metrics JSON and logs go here")
    progress: bool = Field(True, description="show a progress bar")
    preload: bool = Field(True, description="decode and resize all images once before training")


class AttributeRecipe(BaseModel):
    """A complete training recipe (configs/attributes_*.yaml)."""

    model_config = ConfigDict(extra="forbid")

    model: AttributeModelConfig = Field(default_factory=AttributeModelConfig, description="network")
    data: DataConfig = Field(default_factory=DataConfig, description="data")
    loss: LossConfig = Field(default_factory=LossConfig, description="loss")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimisation")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="execution")


def load_records(
    fmt: str, root: str | Path, subsets: list[str] | None, attributes: str | list[str], split: str = "train"
) -> AttributeRecords:
    """Records from any supported layout, restricted to ``attributes`` where the format allows it."""
    if fmt == "peta":
        return read_peta_attributes(root, subsets, attributes)
    if fmt in ("csv", "json"):
        recs = read_attribute_csv(root) if fmt == "csv" else read_attribute_json(root)
    elif fmt == "rap":
        recs = read_rap(root, split="train" if split == "train" else "test")
    elif fmt == "pa100k":
        recs = read_pa100k(root, split="trainval" if split == "train" else "test")
    else:
        raise ValueError(f"unknown data format {fmt!r}; expected peta, csv, json, rap or pa100k")
    if isinstance(attributes, list):
        recs = select_attributes(recs, attributes)
    return recs


def _id_bucket(person_id: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{person_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_holdout(
    records: AttributeRecords, fraction: float, seed: int = 0
) -> tuple[AttributeRecords, AttributeRecords]:
    """(train, held-out) split by person id (deterministic hash), so a person is never on both sides."""
    if fraction <= 0:
        return records, AttributeRecords(records=[], names=records.names)
    train, held = [], []
    for r in records:
        (held if _id_bucket(r.person_id, seed) < fraction else train).append(r)
    if not train or not held:
        raise ValueError(
            f"holdout_fraction {fraction} leaves an empty side ({len(train)} / {len(held)} images)"
        )
    return (
        AttributeRecords(records=train, names=records.names),
        AttributeRecords(records=held, names=records.names),
    )


def cap_images_per_id(records: AttributeRecords, cap: int | None) -> AttributeRecords:
    """At most ``cap`` images per person id, evenly spaced in file order (deterministic)."""
    if cap is None:
        return records
    by_id: dict[str, list] = {}
    for r in records:
        by_id.setdefault(r.person_id, []).append(r)
    kept = []
    for recs in by_id.values():
        if len(recs) <= cap:
            kept += recs
        else:
            kept += [recs[int(k * len(recs) / cap)] for k in range(cap)]
    return AttributeRecords(
        records=kept, names=records.names, unmapped=records.unmapped, aliased=records.aliased
    )
