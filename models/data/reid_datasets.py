"""Person-ReID datasets: the PETA subsets that carry identities and Market-1501-style folders.

* PETA (``<root>/<subset>/archive/``): identity = file-name prefix before the first ``_``. The camera
  is read only where the file name carries it: VIPeR ``<id>_<angle>_<cam>.bmp`` (cam 1 / 2) and
  GRID ``<id>_<cam>_<frame>_<x>_<y>_<w>_<h>.jpeg``; 3DPeS (``<id>_<seq>_FRAME_<n>_RGB.bmp``),
  CAVIAR4REID (``<id>_<n>.jpg``), SARC3D (``<id>_<view>.bmp``), TownCentre (``<id>_<frame>.jpg``) and
  MIT carry none (camera -1).
* Market-1501 style (``<id>_c<cam>s<seq>_<frame>_<n>.jpg``): id -1 (junk) is skipped; id 0
  (distractors) is kept only when asked. A root with ``query/`` and ``bounding_box_test/`` is the
  standard evaluation split.

Images are decoded with Pillow, resized to the network input and normalised with the backbone
convention (``models.backbones.IMAGENET_MEAN/STD``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.backbones import IMAGENET_MEAN, IMAGENET_STD

from .images import is_image

__all__ = [
    "ReIDRecord",
    "PETA_REID_SUBSETS",
    "read_peta_reid",
    "read_market_folder",
    "relabel",
    "split_by_camera",
    "load_images",
    "normalize",
    "evaluation_split",
]

logger = logging.getLogger(__name__)

#: PETA subsets whose identities have several images (MIT has one image per person)
PETA_REID_SUBSETS = ("3DPeS", "CAVIAR4REID", "GRID", "SARC3D", "TownCentre", "VIPeR")
_MARKET = re.compile(r"^(-?\d+)_c(\d+)")


@dataclass(frozen=True)
class ReIDRecord:
    """One person image: ``pid`` is unique across subsets (``"<subset>/<id>"``), ``camid`` -1 if unknown."""

    path: str
    pid: str
    camid: int
    subset: str


def _peta_camera(subset: str, stem: str) -> int:
    parts = stem.split("_")
    if subset == "VIPeR" and len(parts) == 3 and parts[2].isdigit():
        return int(parts[2])
    if subset == "GRID" and len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1])
    return -1


def read_peta_reid(root: str | Path, subsets: Sequence[str], min_images_per_id: int = 1) -> list[ReIDRecord]:
    """Records of the given PETA subsets, sorted by path; identities with fewer than
    ``min_images_per_id`` images are dropped (and counted in the log)."""
    root = Path(root)
    records: list[ReIDRecord] = []
    for subset in subsets:
        folder = root / subset / "archive"
        if not folder.is_dir():
            raise FileNotFoundError(f"PETA subset folder not found: {folder}")
        for path in sorted(folder.iterdir()):
            if not is_image(path):
                continue
            pid = path.stem.split("_")[0]
            records.append(ReIDRecord(str(path), f"{subset}/{pid}", _peta_camera(subset, path.stem), subset))
    counts = Counter(r.pid for r in records)
    kept = [r for r in records if counts[r.pid] >= min_images_per_id]
    logger.info(
        "PETA %s: %d images of %d ids; kept %d images of %d ids with >= %d images",
        list(subsets),
        len(records),
        len(counts),
        len(kept),
        len({r.pid for r in kept}),
        min_images_per_id,
    )
    if not kept:
        raise ValueError(f"no identities with >= {min_images_per_id} images in {list(subsets)} under {root}")
    return kept


def read_market_folder(folder: str | Path, keep_distractors: bool = False) -> list[ReIDRecord]:
    """Records of a Market-1501-style folder (``<id>_c<cam>..._*.jpg``); junk (-1) is skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    records = []
    bad = 0
    for path in sorted(folder.iterdir()):
        if not is_image(path):
            continue
        match = _MARKET.match(path.name)
        if match is None:
            bad += 1
            continue
        pid = int(match.group(1))
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        records.append(ReIDRecord(str(path), str(pid), int(match.group(2)), folder.name))
    if bad:
        logger.warning("%s: %d image names do not follow <id>_c<cam>..., skipped", folder, bad)
    if not records:
        raise ValueError(f"no <id>_c<cam>...jpg images found in {folder}")
    return records


def evaluation_split(
    data: str | Path, subset: str = "VIPeR", query_cam: int = 1, gallery_cam: int = 2
) -> tuple[list[ReIDRecord], list[ReIDRecord]]:
    """(query, gallery) for ``data``: a Market-style root (``query/`` + ``bounding_box_test/``), a PETA
    root (subset split by camera; protocol: VIPeR camera 1 query, camera 2 gallery) or one subset's
    ``archive`` folder."""
    data = Path(data)
    if (data / "query").is_dir() and (data / "bounding_box_test").is_dir():
        return read_market_folder(data / "query"), read_market_folder(data / "bounding_box_test")
    if (data / subset / "archive").is_dir():
        records = read_peta_reid(data, [subset])
    elif data.name == "archive" and data.is_dir():
        records = read_peta_reid(data.parent.parent, [data.parent.name])
    else:
        raise FileNotFoundError(
            f"{data}: neither a Market-style root (query/, bounding_box_test/) nor a PETA "
            f"root containing {subset}/archive"
        )
    return split_by_camera(records, query_cam, gallery_cam)


def split_by_camera(
    records: Sequence[ReIDRecord], query_cam: int, gallery_cam: int
) -> tuple[list[ReIDRecord], list[ReIDRecord]]:
    """Query = camera ``query_cam``, gallery = camera ``gallery_cam``."""
    query = [r for r in records if r.camid == query_cam]
    gallery = [r for r in records if r.camid == gallery_cam]
    if not query or not gallery:
        raise ValueError(
            f"camera split {query_cam}/{gallery_cam} is empty: {len(query)} query, "
            f"{len(gallery)} gallery images (cameras present: {sorted({r.camid for r in records})})"
        )
    return query, gallery


def relabel(records: Sequence[ReIDRecord]) -> tuple[np.ndarray, dict[str, int]]:
    """Contiguous integer labels 0..N-1 for the identities (sorted), for the classifier."""
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return np.array([mapping[r.pid] for r in records], dtype=np.int64), mapping


def load_images(records: Sequence[ReIDRecord], size_hw: tuple[int, int]) -> torch.Tensor:
    """All images decoded, RGB, resized (bilinear) to ``size_hw``: a uint8 tensor (N, 3, H, W). Only
    each record's ``path`` is read, so attribute records (``AttributeRecord``) load the same way.

    Training keeps the whole (small) training set in memory this way, so no batch waits on decoding.
    """
    h, w = size_hw
    out = torch.empty((len(records), 3, h, w), dtype=torch.uint8)
    for i, rec in enumerate(records):
        try:
            with Image.open(rec.path) as img:
                arr = np.array(img.convert("RGB").resize((w, h), Image.BILINEAR))
        except OSError as exc:
            raise ValueError(f"cannot decode image {rec.path}: {exc}") from exc
        out[i] = torch.from_numpy(arr).permute(2, 0, 1)
    return out


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, scaled to [0, 1] and normalised with ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images_uint8.device).view(1, 3, 1, 1)
    return (images_uint8.float() / 255.0 - mean) / std
