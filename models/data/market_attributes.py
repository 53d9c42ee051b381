"""Market-1501 attribute annotations (Lin et al., Pattern Recognition 2019) on Market-1501's crops.

``<root>/market_attribute.mat`` holds a struct ``market_attribute`` with ``train`` (751 identities)
and ``test`` (750); each has one row per identity: 27 fields (``models.data.attribute_vocabulary.
MARKET_FIELDS``: gender, hair, sleeve ``up``, lower length ``down``, lower type ``clothes``, hat,
backpack, bag, handbag, 4-class age, 8 upper and 9 lower colours) with values 1 = no / first option,
2 = yes / second option (age 1-4), and ``image_index``, the 4-digit identity.

Labels are per identity: every crop of an identity gets its labels. The ``train`` split is the crops
of ``bounding_box_train/``; ``test`` is ``query/`` + ``bounding_box_test/`` (the test identities'
crops). Distractors (id ``0000``) and junk (id ``-1``) carry no attributes and are left out, and
counted. The reader logs per folder the crops found, labelled and without a label, how many
identities of the split have no crop, and refuses a folder where nothing matched.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal

import numpy as np

from .attribute_vocabulary import MARKET_FIELDS, MARKET_MAPPING, VOCABULARY_NAMES
from .images import is_image
from .peta_attributes import (
    AttributeRecord,
    AttributeRecords,
    ReaderCounts,
    check_reader_counts,
)

__all__ = ["MARKET_SPLIT_FOLDERS", "read_market_attributes", "read_market_identity_labels"]

logger = logging.getLogger(__name__)

MARKET_SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("bounding_box_train",),
    "test": ("query", "bounding_box_test"),
}
_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def _mat_string(item: object) -> str:
    while isinstance(item, np.ndarray):
        if item.size != 1:
            raise ValueError(f"expected one identity string, got an array of shape {item.shape}")
        item = item.ravel()[0]
    return str(item)


def read_market_identity_labels(
    mat_path: str | Path, split: Literal["train", "test"]
) -> tuple[list[str], np.ndarray]:
    """(identities, raw values (I, 27) in ``MARKET_FIELDS`` order) of one split of the .mat file."""
    from scipy.io import loadmat

    mat_path = Path(mat_path)
    if not mat_path.is_file():
        raise ValueError(f"Market-1501 attribute file {mat_path} not found")
    mat = loadmat(str(mat_path))
    if "market_attribute" not in mat:
        raise ValueError(f"{mat_path}: no 'market_attribute' struct (keys: {sorted(mat)})")
    top = mat["market_attribute"][0, 0]
    if split not in (top.dtype.names or ()):
        raise ValueError(f"{mat_path}: no {split!r} part in market_attribute")
    part = top[split][0, 0]
    fields = set(part.dtype.names or ())
    missing = [f for f in (*MARKET_FIELDS, "image_index") if f not in fields]
    if missing:
        raise ValueError(f"{mat_path}: market_attribute.{split} lacks fields {missing}")
    ids = [_mat_string(x) for x in np.asarray(part["image_index"]).ravel()]
    values = np.stack([np.asarray(part[f], np.float64).ravel() for f in MARKET_FIELDS], axis=1)
    if values.shape[0] != len(ids):
        raise ValueError(f"{mat_path}: {len(ids)} identities but {values.shape[0]} label rows in {split}")
    return ids, values


def read_market_attributes(
    root: str | Path, split: Literal["train", "test"] = "train", vocabulary: bool = True
) -> AttributeRecords:
    """Crops of one split with their identity's labels.

    ``vocabulary=True``: labels in the vocabulary (``names`` = every vocabulary name, -1 where Market
    does not label; ``labelled`` = the 30 it does). ``vocabulary=False``: the 27 raw fields (values
    1..4, not 0 / 1: for inspection, not for a loss).
    """
    root = Path(root)
    if split not in MARKET_SPLIT_FOLDERS:
        raise ValueError(f"Market-1501 split must be 'train' or 'test', got {split!r}")
    ids, raw = read_market_identity_labels(root / "market_attribute.mat", split)
    row_of = {pid: i for i, pid in enumerate(ids)}
    labels = MARKET_MAPPING.apply(raw, MARKET_FIELDS) if vocabulary else raw.astype(np.float32)
    out = AttributeRecords(
        records=[],
        names=VOCABULARY_NAMES if vocabulary else MARKET_FIELDS,
        labelled=MARKET_MAPPING.labelled() if vocabulary else None,
    )
    seen: set[str] = set()
    for folder_name in MARKET_SPLIT_FOLDERS[split]:
        folder = root / folder_name
        if not folder.is_dir():
            raise ValueError(f"Market-1501 {split}: folder {folder} not found")
        counts = ReaderCounts(labels=len(ids))
        excluded = {"distractor": 0, "junk": 0, "unparsed": 0}
        folder_ids: set[str] = set()
        for image in sorted(folder.iterdir()):
            if not is_image(image):
                continue
            counts.images += 1
            match = _NAME.match(image.name)
            if match is None:
                excluded["unparsed"] += 1
                counts.images_without_label += 1
                continue
            pid = match.group(1)
            if pid == "0000":
                excluded["distractor"] += 1
                continue
            if pid.startswith("-"):
                excluded["junk"] += 1
                continue
            row = row_of.get(pid)
            if row is None:
                counts.images_without_label += 1
                continue
            folder_ids.add(pid)
            out.records.append(
                AttributeRecord(path=image, person_id=f"market/{pid}", labels=labels[row], subset=folder_name)
            )
            counts.labelled += 1
        counts.labels_without_image = len(ids) - len(folder_ids)
        seen |= folder_ids
        if any(excluded.values()):
            logger.info(
                "Market-1501 %s: left out %d distractor and %d junk crops; %d names not <id>_c<cam>...",
                folder_name,
                excluded["distractor"],
                excluded["junk"],
                excluded["unparsed"],
            )
        check_reader_counts(counts, "Market-1501", folder_name, folder, logger)
        out.counts[folder_name] = counts
        out.subset_counts[folder_name] = counts.labelled
        out.images_without_label += counts.images_without_label
    missing = len(ids) - len(seen)
    if missing:
        logger.warning("Market-1501 %s: %d of %d labelled identities have no crop", split, missing, len(ids))
    return out
