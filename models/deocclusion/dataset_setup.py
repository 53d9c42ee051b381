"""Turn a recipe's data block into crops, labels, splits and occluders (shared by train and eval tools)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.data.peta_attributes import read_peta_attributes
from models.deocclusion.data import load_crops

__all__ = ["CropSet", "load_crop_set", "split_holdout"]

logger = logging.getLogger(__name__)


@dataclass
class CropSet:
    """Decoded crops of one or more PETA subsets with their attribute labels and person ids."""

    images: np.ndarray
    labels: np.ndarray
    person_ids: list[str]
    paths: list[str]
    names: tuple[str, ...]


def load_crop_set(
    root: str | Path,
    subsets: list[str],
    size: tuple[int, int],
    attributes: str = "peta35",
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> CropSet:
    """Read labels with D's PETA reader, decode and resize the crops (cached as .npy by file list + size)."""
    records = read_peta_attributes(root, subsets, attributes=attributes)
    if len(records) == 0:
        raise ValueError(f"no labelled images in {root} subsets {subsets}")
    order = np.arange(len(records))
    if limit is not None and limit < len(records):
        order = np.sort(np.random.default_rng(seed).choice(len(records), size=limit, replace=False))
    recs = [records[int(i)] for i in order]
    paths = [str(r.path) for r in recs]
    labels = np.stack([r.labels for r in recs]).astype(np.float32)
    images = None
    cache = None
    if cache_dir is not None:
        digest = hashlib.sha256(("\n".join(paths) + f"|{size}").encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"crops_{size[0]}x{size[1]}_{digest}.npy"
        if cache.is_file():
            images = np.load(cache)
    if images is None:
        logger.info("decoding %d crops from %s", len(paths), subsets)
        images = load_crops(paths, size)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, images)
    return CropSet(images, labels, [r.person_id for r in recs], paths, records.names)


def split_holdout(crops: CropSet, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out) with whole persons held out, about ``count`` crops."""
    if count <= 0:
        return np.arange(len(crops.images)), np.zeros(0, np.int64)
    ids = sorted(set(crops.person_ids))
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    held: set[str] = set()
    total = 0
    per_id: dict[str, int] = {}
    for pid in crops.person_ids:
        per_id[pid] = per_id.get(pid, 0) + 1
    for pid in ids:
        if total >= count:
            break
        held.add(pid)
        total += per_id[pid]
    mask = np.array([pid in held for pid in crops.person_ids])
    return np.nonzero(~mask)[0], np.nonzero(mask)[0]
