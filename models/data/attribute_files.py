"""Attribute annotations for a user's own data (CSV / JSON) and the RAP and PA-100K benchmarks.

CSV (one row per image; header names the attributes)::

    image,person_id,personalMale,carryingBackpack,...
    cam1/0001.jpg,17,1,0,...

``image`` is relative to the CSV's folder (or absolute); ``person_id`` is optional; a label is
1 / 0, and -1 or an empty cell means unknown (ignored by the loss and the label-based metrics).

JSON::

    {"attributes": ["personalMale", ...],
     "samples": [{"image": "cam1/0001.jpg", "person_id": "17", "labels": {"personalMale": 1, ...}}, ...]}

(a missing attribute in ``labels`` is unknown; ``labels`` may also be a list in attribute order).

RAP (v1/v2 ``RAP_annotation.mat``) and PA-100K (``annotation.mat``) are read with scipy from the
field names their documentation gives. They are written from those documented layouts only and
have not been run against the real files (the datasets are not available here); tests check them on
synthetic .mat files written in those layouts with scipy.

Every reader logs the images it found, labelled and could not label, the label entries that matched
no image and the label values it could not map, and refuses (``ValueError``) a file or split where
no image got a label. ``models.data.attribute_vocabulary`` maps any of them into the shared vocabulary.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .peta_attributes import AttributeRecord, AttributeRecords, ReaderCounts, check_reader_counts

__all__ = ["read_attribute_csv", "read_attribute_json", "read_pa100k", "read_rap", "select_attributes"]

logger = logging.getLogger(__name__)


def _label_value(raw: object, where: str) -> float:
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return -1.0
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label {raw!r} is not 1, 0 or -1") from None
    if value not in (0.0, 1.0, -1.0):
        raise ValueError(f"{where}: label {raw!r} is not 1, 0 or -1")
    return value


def _resolve(base: Path, image: str) -> Path:
    p = Path(image)
    return p if p.is_absolute() else base / p


def read_attribute_csv(path: str | Path, check_images: bool = True) -> AttributeRecords:
    """Read the CSV format above."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"attribute CSV {path} not found")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or header[0].strip() != "image":
            raise ValueError(
                f"{path}: the first column must be 'image', got {header[:1] if header else 'nothing'}"
            )
        has_pid = len(header) > 1 and header[1].strip() == "person_id"
        names = tuple(h.strip() for h in header[2 if has_pid else 1 :])
        if not names:
            raise ValueError(f"{path}: no attribute columns after 'image'")
        records = []
        for line_no, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line_no}: {len(row)} cells, header has {len(header)}")
            image = _resolve(path.parent, row[0].strip())
            if check_images and not image.is_file():
                raise ValueError(f"{path}:{line_no}: image {image} not found")
            values = row[2 if has_pid else 1 :]
            labels = np.array([_label_value(v, f"{path}:{line_no}") for v in values], np.float32)
            pid = row[1].strip() if has_pid else image.stem
            records.append(AttributeRecord(path=image, person_id=pid, labels=labels, subset=path.stem))
    return _finish("CSV", path, records, names)


def _finish(
    kind: str, path: Path, records: list[AttributeRecord], names: tuple[str, ...]
) -> AttributeRecords:
    """Counts for a CSV / JSON file (every row names its image; a missing image was already an error)."""
    unknown = sum(int((r.labels < 0).sum()) for r in records)
    counts = ReaderCounts(images=len(records), labelled=len(records), labels=len(records))
    check_reader_counts(counts, kind, path.stem, path, logger)
    if unknown:
        logger.info("%s %s: %d labels are unknown (-1 / empty)", kind, path.stem, unknown)
    return AttributeRecords(
        records=records, names=names, subset_counts={path.stem: len(records)}, counts={path.stem: counts}
    )


def read_attribute_json(path: str | Path, check_images: bool = True) -> AttributeRecords:
    """Read the JSON format above."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"attribute JSON {path} not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("attributes"), list)
        or not isinstance(doc.get("samples"), list)
    ):
        raise ValueError(f"{path}: expected an object with 'attributes' (list) and 'samples' (list)")
    names = tuple(str(a) for a in doc["attributes"])
    index = {n: i for i, n in enumerate(names)}
    records = []
    for k, sample in enumerate(doc["samples"]):
        where = f"{path}: samples[{k}]"
        if not isinstance(sample, dict) or "image" not in sample:
            raise ValueError(f"{where}: needs an 'image' entry")
        image = _resolve(path.parent, str(sample["image"]))
        if check_images and not image.is_file():
            raise ValueError(f"{where}: image {image} not found")
        raw = sample.get("labels", {})
        labels = np.full(len(names), -1.0, np.float32)
        if isinstance(raw, list):
            if len(raw) != len(names):
                raise ValueError(f"{where}: {len(raw)} labels for {len(names)} attributes")
            labels[:] = [_label_value(v, where) for v in raw]
        elif isinstance(raw, dict):
            for name, value in raw.items():
                if name not in index:
                    raise ValueError(f"{where}: unknown attribute {name!r}")
                labels[index[name]] = _label_value(value, where)
        else:
            raise ValueError(f"{where}: 'labels' must be an object or a list")
        pid = str(sample.get("person_id", image.stem))
        records.append(AttributeRecord(path=image, person_id=pid, labels=labels, subset=path.stem))
    return _finish("JSON", path, records, names)


def select_attributes(records: AttributeRecords, names: Sequence[str]) -> AttributeRecords:
    """Keep (and reorder to) ``names``; an attribute the file lacks is an error naming it."""
    missing = [n for n in names if n not in records.names]
    if missing:
        raise ValueError(f"attributes not in the annotation file: {', '.join(missing)}")
    idx = [records.names.index(n) for n in names]
    recs = [AttributeRecord(r.path, r.person_id, r.labels[idx], r.subset) for r in records]
    return AttributeRecords(
        records=recs,
        names=tuple(names),
        subset_counts=dict(records.subset_counts),
        counts=dict(records.counts),
    )


def _mat_strings(arr: object) -> list[str]:
    """Flatten a MATLAB cell array of strings as loaded by scipy.io.loadmat."""
    out = []
    for item in np.asarray(arr, dtype=object).ravel():
        while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.ravel()[0]
        out.append(str(item.ravel()[0]) if isinstance(item, np.ndarray) and item.size else str(item))
    return out


def _keep_existing(
    kind: str, split: str, where: Path, records: list[AttributeRecord], check_images: bool, unknown: int
) -> tuple[list[AttributeRecord], ReaderCounts]:
    """Drop entries whose image file is missing (when checking), log the counts, refuse if none is left."""
    kept = [r for r in records if r.path.is_file()] if check_images else records
    counts = ReaderCounts(
        images=len(kept),
        labelled=len(kept),
        labels=len(records),
        labels_without_image=len(records) - len(kept),
        unmapped_tokens=unknown,
    )
    check_reader_counts(counts, kind, split, where, logger)
    return kept, counts


def read_pa100k(root: str | Path, split: str = "test", check_images: bool = True) -> AttributeRecords:
    """PA-100K: ``<root>/annotation.mat`` (fields ``attributes``, ``{train,val,test}_images_name``,
    ``{train,val,test}_label``) and images in ``<root>/data/`` (or ``<root>/release_data/release_data``).
    Entries whose image is missing are counted and skipped (``check_images``); label values other than
    0 / 1 become unknown (-1) and are counted. Untested on the real file (not available here)."""
    from scipy.io import loadmat

    root = Path(root)
    if split not in ("train", "val", "test", "trainval"):
        raise ValueError(f"PA-100K split must be train, val, test or trainval, got {split!r}")
    ann = root / "annotation.mat"
    if not ann.is_file():
        raise ValueError(f"PA-100K annotation {ann} not found")
    mat = loadmat(str(ann))
    names = tuple(_mat_strings(mat["attributes"]))
    image_dir = next(
        (d for d in (root / "data", root / "release_data" / "release_data", root) if d.is_dir()), root
    )
    records, unknown = [], 0
    for part in ("train", "val") if split == "trainval" else (split,):
        files = _mat_strings(mat[f"{part}_images_name"])
        labels = np.asarray(mat[f"{part}_label"], np.float32)
        bad = (labels != 0) & (labels != 1)
        unknown += int(bad.sum())
        labels[bad] = -1.0
        for f, y in zip(files, labels, strict=True):
            records.append(AttributeRecord(path=image_dir / f, person_id=Path(f).stem, labels=y, subset=part))
    records, counts = _keep_existing("PA-100K", split, image_dir, records, check_images, unknown)
    return AttributeRecords(
        records=records, names=names, subset_counts={split: len(records)}, counts={split: counts}
    )


def read_rap(
    root: str | Path, partition: int = 0, split: str = "test", check_images: bool = True
) -> AttributeRecords:
    """RAP v1: ``<root>/RAP_annotation/RAP_annotation.mat`` (struct ``RAP_annotation`` with ``imagesname``,
    ``label``, ``attribute``, ``partion{k}.{train,test}_index`` 1-based) and images in
    ``<root>/RAP_dataset/``; the 51 attributes of the common protocol are the first 51 columns.
    Labels of 2 (RAP's "uncertain") become -1 (unknown) and are counted; entries whose image is
    missing are counted and skipped (``check_images``). Untested on the real file."""
    from scipy.io import loadmat

    root = Path(root)
    ann = next(
        (
            p
            for p in (root / "RAP_annotation" / "RAP_annotation.mat", root / "RAP_annotation.mat")
            if p.is_file()
        ),
        None,
    )
    if ann is None:
        raise ValueError(f"RAP annotation RAP_annotation.mat not found under {root}")
    if split not in ("train", "test"):
        raise ValueError(f"RAP split must be train or test, got {split!r}")
    data = loadmat(str(ann), squeeze_me=False)["RAP_annotation"][0, 0]
    files = _mat_strings(data["imagesname"])
    names = tuple(_mat_strings(data["attribute"]))[:51]
    labels = np.asarray(data["label"], np.float32)[:, :51]
    uncertain = (labels != 0) & (labels != 1)
    labels[uncertain] = -1.0
    part = data["partion"][partition, 0][0, 0]
    index = np.asarray(part[f"{split}_index"]).ravel().astype(int) - 1
    image_dir = root / "RAP_dataset"
    records = [
        AttributeRecord(
            path=image_dir / files[i], person_id=Path(files[i]).stem, labels=labels[i], subset=split
        )
        for i in index
    ]
    records, counts = _keep_existing(
        "RAP", split, image_dir, records, check_images, int(uncertain[index].sum()) if len(index) else 0
    )
    return AttributeRecords(
        records=records, names=names, subset_counts={split: len(records)}, counts={split: counts}
    )
