"""The YAML training recipe of ``amodal train attributes`` (typed, every key described) and the
data loading it drives: which reader, which subsets, which attributes, which held-out part.

Model selection (loss variant, epoch) uses a held-out part of the TRAINING data, split by person
id so no person is on both sides; the test set (VIPeR in ``configs/attributes_*.yaml``) is only
touched by ``amodal eval attributes``. The per-attribute decision thresholds (``selection``) are
chosen on that same held-out part of the training identities, never on test data.

Two ways to name the data:

* one source (``data.format``, ``data.root``, ``data.train_subsets``, ``data.attributes``): the
  model's attributes are the dataset's own (``peta35``, ``all`` or a list of its names);
* several sources (``data.sources``, a list; ``data.attributes: vocabulary`` or a list of vocabulary
  names): each source is read, mapped into the shared vocabulary
  (``models.data.attribute_vocabulary``) and the images are pooled. An attribute a source does not
  label is unknown (-1) for its images: no loss, no metric. ``vocabulary`` trains every vocabulary
  attribute that at least one source labels.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.data.attribute_files import (
    read_attribute_csv,
    read_attribute_json,
    read_pa100k,
    read_rap,
    select_attributes,
)
from models.data.attribute_vocabulary import (
    VOCABULARY_NAMES,
    select_vocabulary,
    to_vocabulary,
)
from models.data.market_attributes import read_market_attributes
from models.data.peta_attributes import (
    PETA_TRAIN_SUBSETS,
    AttributeRecord,
    AttributeRecords,
    read_peta_attributes,
)
from models.run_config import RunConfig, refuse_moved_keys

from .model import AttributeModelConfig

__all__ = [
    "cap_images_per_id",
    "DataConfig",
    "DataSourceConfig",
    "LossConfig",
    "OptimConfig",
    "AttributeRunConfig",
    "SelectionConfig",
    "AttributeRecipe",
    "load_records",
    "load_source",
    "load_training_records",
    "split_holdout",
]

logger = logging.getLogger(__name__)

_LEGACY_DATA_KEYS = ("format", "root", "train_subsets")


class DataSourceConfig(BaseModel):
    """One dataset among several (``data.sources``), mapped into the shared attribute vocabulary."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["peta", "market", "csv", "json", "rap", "pa100k"] = Field(
        description="annotation reader (csv / json: columns named with vocabulary attributes)"
    )
    root: str = Field(description="PETA / Market-1501 / RAP / PA-100K root, or the CSV / JSON file")
    name: str | None = Field(None, description="label in logs and person ids (default: the format)")
    subsets: list[str] | None = Field(None, description="PETA subsets (required for format peta)")
    split: Literal["train", "test"] = Field(
        "train", description="market / rap / pa100k split (PA-100K 'train' = its train + val)"
    )
    peta_attributes: Literal["peta35", "all"] = Field(
        "all", description="PETA tokens read before mapping: 'all' adds colours, boots, long sleeves ..."
    )
    max_images_per_id: int | None = Field(
        None, ge=1, description="this source's cap on images per person id (default: data.max_images_per_id)"
    )

    @model_validator(mode="after")
    def _check(self) -> DataSourceConfig:
        if self.format == "peta" and not self.subsets:
            raise ValueError("a peta source needs 'subsets' (e.g. [3DPeS, MIT])")
        if self.format != "peta" and self.subsets:
            raise ValueError(f"'subsets' is for peta sources, not {self.format}")
        return self

    @property
    def label(self) -> str:
        return self.name or self.format


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
    sources: list[DataSourceConfig] = Field(
        default_factory=list,
        description="several datasets mapped into the shared vocabulary; replaces format / root / "
        "train_subsets (leave those unset)",
    )
    attributes: str | list[str] = Field(
        "peta35",
        description="one source: 'peta35', 'all' or a list of its names; data.sources: 'vocabulary' "
        "(every vocabulary attribute some source labels) or a list of vocabulary names",
    )
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
        if self.sources:
            legacy = [f"data.{k}" for k in _LEGACY_DATA_KEYS if k in self.model_fields_set]
            if legacy:
                raise ValueError(f"data.sources replaces {', '.join(legacy)}: remove them")
            if isinstance(self.attributes, str) and self.attributes != "vocabulary":
                raise ValueError(
                    f"with data.sources, data.attributes must be 'vocabulary' or a list of vocabulary "
                    f"names, got {self.attributes!r}"
                )
            if isinstance(self.attributes, list):
                unknown = [a for a in self.attributes if a not in VOCABULARY_NAMES]
                if unknown:
                    raise ValueError(f"data.attributes: not vocabulary attributes: {unknown}")
            labels = [s.label for s in self.sources]
            if len(set(labels)) != len(labels):
                raise ValueError(f"data.sources: give each source a distinct 'name' (got {labels})")
        elif self.attributes == "vocabulary":
            raise ValueError("data.attributes 'vocabulary' needs data.sources")
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


class SelectionConfig(BaseModel):
    """Per-attribute decision thresholds, chosen on the held-out TRAINING identities."""

    model_config = ConfigDict(extra="forbid")

    thresholds: Literal["fixed", "balanced_accuracy", "f1"] = Field(
        "fixed",
        description="'fixed': 0.5 for every attribute; otherwise the threshold maximising that score "
        "per attribute on the held-out part of the training identities (stored in the checkpoint)",
    )


class AttributeRunConfig(RunConfig):
    """The shared ``run:`` section (formerly ``runtime:``) with this recipe's defaults and ``preload``.
    Training logs and validates once per epoch, so ``log_every`` and ``val_every`` are not read."""

    out_dir: str = Field("runs/attributes", description="checkpoints, metrics JSON and logs go here")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:k]'")
    threads: int | None = Field(1, ge=1, description="torch CPU threads (null = torch default)")
    seed: int = Field(0, description="seed of the held-out split, sampling, augmentation and initialisation")
    log_every: int = Field(
        20, ge=1, description="not read: attribute training logs once per epoch (shared run: key)"
    )
    val_every: int = Field(
        200,
        ge=1,
        description="not read: attribute training scores the held-out part once per epoch (shared run: key)",
    )
    progress: bool = Field(True, description="show a progress bar")
    preload: bool = Field(True, description="decode and resize all images once before training")


class AttributeRecipe(BaseModel):
    """A complete training recipe (configs/attributes_*.yaml)."""

    model_config = ConfigDict(extra="forbid")

    model: AttributeModelConfig = Field(default_factory=AttributeModelConfig, description="network")
    data: DataConfig = Field(default_factory=DataConfig, description="data")
    loss: LossConfig = Field(default_factory=LossConfig, description="loss")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimisation")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="decision thresholds")
    run: AttributeRunConfig = Field(
        default_factory=AttributeRunConfig,
        description="output folder, device, threads, seed, progress bar, preloading",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """The first recipe shape's ``runtime:`` section is refused: it is called ``run:`` now."""
        keys = data.get("runtime") if isinstance(data, dict) else None
        spelled = ", ".join(f"run.{k}" for k in keys) if isinstance(keys, dict) and keys else "run.<key>"
        return refuse_moved_keys(data, {"runtime": f"renamed run: write {spelled}"}, cls.__name__)

    @model_validator(mode="after")
    def _check_selection(self) -> AttributeRecipe:
        if self.selection.thresholds != "fixed" and self.data.holdout_fraction <= 0:
            raise ValueError(
                f"selection.thresholds {self.selection.thresholds!r} is chosen on held-out training "
                "identities: set data.holdout_fraction > 0"
            )
        return self


def load_records(
    fmt: str, root: str | Path, subsets: list[str] | None, attributes: str | list[str], split: str = "train"
) -> AttributeRecords:
    """Records from any supported layout, restricted to ``attributes`` where the format allows it.
    ``market`` records are in the vocabulary (``attributes`` then names vocabulary attributes)."""
    if fmt == "peta":
        return read_peta_attributes(root, subsets, attributes)
    if fmt in ("csv", "json"):
        recs = read_attribute_csv(root) if fmt == "csv" else read_attribute_json(root)
    elif fmt == "rap":
        recs = read_rap(root, split="train" if split == "train" else "test")
    elif fmt == "pa100k":
        recs = read_pa100k(root, split="trainval" if split == "train" else "test")
    elif fmt == "market":
        recs = read_market_attributes(root, "train" if split == "train" else "test")
        return select_vocabulary(recs, attributes) if isinstance(attributes, list) else recs
    else:
        raise ValueError(f"unknown data format {fmt!r}; expected peta, market, csv, json, rap or pa100k")
    if isinstance(attributes, list):
        recs = select_attributes(recs, attributes)
    return recs


def load_source(source: DataSourceConfig) -> AttributeRecords:
    """One source's images labelled in the vocabulary (every vocabulary name, -1 where unlabelled),
    person ids prefixed with the source's label so two sources never share a person."""
    fmt = source.format
    if fmt == "peta":
        native = read_peta_attributes(source.root, source.subsets, source.peta_attributes)
        recs = to_vocabulary(native, "peta")
    elif fmt == "market":
        recs = read_market_attributes(source.root, source.split)
    elif fmt in ("rap", "pa100k"):
        split = source.split if fmt == "rap" else ("trainval" if source.split == "train" else "test")
        native = read_rap(source.root, split=split) if fmt == "rap" else read_pa100k(source.root, split=split)
        recs = to_vocabulary(native, fmt)
    else:
        native = read_attribute_csv(source.root) if fmt == "csv" else read_attribute_json(source.root)
        recs = to_vocabulary(native, "vocabulary")
    prefixed = [
        AttributeRecord(r.path, f"{source.label}:{r.person_id}", r.labels, r.subset or source.label)
        for r in recs
    ]
    recs.records = prefixed
    return recs


def load_training_records(data: DataConfig) -> tuple[AttributeRecords, int]:
    """(training records after the per-id cap, images before the cap) for either way of naming the
    data (see the module docstring). With several sources, ``names`` are the chosen vocabulary
    attributes and ``labelled_by`` in the log says which source labels what."""
    if not data.sources:
        recs = load_records(data.format, data.root, data.train_subsets, data.attributes, split="train")
        return cap_images_per_id(recs, data.max_images_per_id), len(recs)
    loaded = []
    for source in data.sources:
        recs = load_source(source)
        if not recs.labelled:
            raise ValueError(f"data.sources {source.label}: none of its attributes maps into the vocabulary")
        if source.split != "train":
            logger.warning("data.sources %s: training on its %r split", source.label, source.split)
        cap = source.max_images_per_id or data.max_images_per_id
        capped = cap_images_per_id(recs, cap)
        logger.info(
            "source %s: %d images (%d before the per-id cap of %s), labels %d vocabulary attributes",
            source.label,
            len(capped),
            len(recs),
            cap,
            len(recs.labelled or ()),
        )
        loaded.append((source, recs, capped))
    labelled_by = {n: [s.label for s, r, _ in loaded if n in (r.labelled or ())] for n in VOCABULARY_NAMES}
    if data.attributes == "vocabulary":
        names = tuple(n for n in VOCABULARY_NAMES if labelled_by[n])
    else:
        names = tuple(data.attributes)
        nobody = [n for n in names if not labelled_by[n]]
        if nobody:
            raise ValueError(f"data.attributes: no source labels {nobody}; they would never be trained")
    logger.info(
        "training %d vocabulary attributes; labelled by one source only: %s",
        len(names),
        {n: labelled_by[n][0] for n in names if len(labelled_by[n]) == 1},
    )
    records: list[AttributeRecord] = []
    subset_counts: dict[str, int] = {}
    counts, aliased, unmapped = {}, Counter(), Counter()
    for source, recs, capped in loaded:
        chosen = select_vocabulary(capped, names)
        records += chosen.records
        subset_counts[source.label] = len(chosen)
        counts.update({f"{source.label}/{k}": v for k, v in recs.counts.items()})
        aliased.update(recs.aliased)
        unmapped.update(recs.unmapped)
    out = AttributeRecords(
        records=records,
        names=names,
        subset_counts=subset_counts,
        aliased=aliased,
        unmapped=unmapped,
        counts=counts,
        labelled=names,
    )
    return out, sum(len(r) for _, r, _ in loaded)


def _id_bucket(person_id: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{person_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_holdout(
    records: AttributeRecords, fraction: float, seed: int = 0
) -> tuple[AttributeRecords, AttributeRecords]:
    """(train, held-out) split by person id (deterministic hash), so a person is never on both sides."""
    if fraction <= 0:
        return records, AttributeRecords(records=[], names=records.names, labelled=records.labelled)
    train, held = [], []
    for r in records:
        (held if _id_bucket(r.person_id, seed) < fraction else train).append(r)
    if not train or not held:
        raise ValueError(
            f"holdout_fraction {fraction} leaves an empty side ({len(train)} / {len(held)} images)"
        )
    return (
        AttributeRecords(records=train, names=records.names, labelled=records.labelled),
        AttributeRecords(records=held, names=records.names, labelled=records.labelled),
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
        records=kept,
        names=records.names,
        unmapped=records.unmapped,
        aliased=records.aliased,
        counts=dict(records.counts),
        labelled=records.labelled,
    )
