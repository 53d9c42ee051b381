"""The gallery's file format: ``<path>.npz`` (embeddings, grades, clocks; arrays, no pickle) and
``<path>.json`` (ids, settings), written and read as a ``GalleryRecord``.

``OcclusionGallery.save`` / ``OcclusionGallery.load`` (``gallery.py``) go through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .grader import GradeThresholds

__all__ = ["GALLERY_FORMAT", "GalleryRecord", "save_gallery", "load_gallery"]

#: version 2: each version also masks the image's own occlusion region (``unification.py``)
GALLERY_FORMAT = "amodal.oamn_gallery/2"


@dataclass(frozen=True)
class GalleryRecord:
    """What a saved gallery holds: its settings and its entries (in slot order, all valid)."""

    embedding_dim: int
    capacity: int
    ids: list[str | int]
    clock: int
    thresholds: GradeThresholds
    fill: float
    unify: bool
    offsets: np.ndarray | None
    embeddings: np.ndarray  # (9, N, D)
    grades: np.ndarray  # (N,)
    last_used: np.ndarray  # (N,)


def save_gallery(record: GalleryRecord, path: str | Path) -> tuple[Path, Path]:
    """Write ``<path>.npz`` (embeddings, grades, clocks) and ``<path>.json`` (ids, settings)."""
    base = Path(path).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    npz, meta = base.with_suffix(".npz"), base.with_suffix(".json")
    np.savez(npz, embeddings=record.embeddings, grades=record.grades, last_used=record.last_used)
    ids = list(record.ids)
    for ident in ids:
        if not isinstance(ident, str | int):
            raise ValueError(f"only str/int ids can be saved, got {type(ident).__name__}")
    thresholds = record.thresholds
    meta.write_text(
        json.dumps(
            {
                "format": GALLERY_FORMAT,
                "embedding_dim": record.embedding_dim,
                "capacity": record.capacity,
                "ids": ids,
                "clock": record.clock,
                "thresholds": [thresholds.quarter, thresholds.half, thresholds.visible],
                "fill": record.fill,
                "unify": record.unify,
                "offsets": None if record.offsets is None else record.offsets.tolist(),
            },
            indent=1,
        )
    )
    return npz, meta


def load_gallery(path: str | Path) -> GalleryRecord:
    """Inverse of ``save_gallery``; refuses files of another format (or the older rule's)."""
    base = Path(path).with_suffix("")
    meta_path, npz_path = base.with_suffix(".json"), base.with_suffix(".npz")
    if not meta_path.is_file() or not npz_path.is_file():
        raise FileNotFoundError(f"gallery files not found: {meta_path} / {npz_path}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") == "amodal.oamn_gallery/1":
        raise ValueError(
            f"{meta_path}: saved with the older unification rule (format 1: versions without the "
            "entry's own region masked); add the entries' crops to a new gallery"
        )
    if meta.get("format") != GALLERY_FORMAT:
        raise ValueError(f"{meta_path}: not an OAMN gallery file")
    offsets = meta.get("offsets")
    with np.load(npz_path, allow_pickle=False) as data:
        embeddings, grades, last_used = data["embeddings"], data["grades"], data["last_used"]
    return GalleryRecord(
        embedding_dim=meta["embedding_dim"],
        capacity=meta["capacity"],
        ids=meta["ids"],
        clock=meta["clock"],
        thresholds=GradeThresholds(*meta["thresholds"]),
        fill=meta["fill"],
        unify=meta["unify"],
        offsets=None if offsets is None else np.asarray(offsets, dtype=np.float32),
        embeddings=embeddings,
        grades=grades,
        last_used=last_used,
    )
