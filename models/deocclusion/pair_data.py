"""Market-1501 training crops with part maps, split into training and held-out identities, and the
rough initial masks stage 1 learns to refine."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from models.data.reid_datasets import load_images, read_market_folder

from .parts import load_parts

__all__ = ["CropsWithParts", "load_market_parts", "split_identities", "rough_masks"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropsWithParts:
    """uint8 images (N, 3, H, W), part maps (N, H, W), which have a usable map, identities, paths."""

    images: torch.Tensor
    parts: torch.Tensor
    usable: np.ndarray
    pids: np.ndarray
    paths: list[str]

    def select(self, index: np.ndarray) -> CropsWithParts:
        return CropsWithParts(
            self.images[index],
            self.parts[index],
            self.usable[index],
            self.pids[index],
            [self.paths[i] for i in index],
        )


def load_market_parts(
    root: str | Path, parsing: str, size_hw: tuple[int, int], max_images: int | None = None, seed: int = 0
) -> CropsWithParts:
    """``root/bounding_box_train`` crops and ``root/<parsing>`` maps at ``size_hw`` (a seeded
    subsample of ``max_images`` crops for quick runs)."""
    root = Path(root)
    records = read_market_folder(root / "bounding_box_train")
    if max_images is not None and max_images < len(records):
        keep = np.sort(np.random.default_rng(seed).choice(len(records), max_images, replace=False))
        records = [records[i] for i in keep]
    images = load_images(records, size_hw)
    parts, usable = load_parts([r.path for r in records], root / parsing, size_hw)
    return CropsWithParts(
        images, parts, usable, np.array([r.pid for r in records]), [r.path for r in records]
    )


def split_identities(
    crops: CropsWithParts, held_out: int, seed: int
) -> tuple[CropsWithParts, CropsWithParts]:
    """(training, held-out): ``held_out`` identities drawn with ``seed`` keep all their crops apart."""
    ids = np.unique(crops.pids)
    if held_out >= len(ids):
        raise ValueError(f"cannot hold out {held_out} of {len(ids)} identities")
    chosen = set(np.random.default_rng(seed).choice(ids, held_out, replace=False).tolist())
    out = np.array([p in chosen for p in crops.pids])
    logger.info(
        "identities: %d training, %d held out (%d crops)", len(ids) - held_out, held_out, int(out.sum())
    )
    return crops.select(np.flatnonzero(~out)), crops.select(np.flatnonzero(out))


def rough_masks(
    visible: torch.Tensor, occluder: torch.Tensor, kinds: np.ndarray, share: float, rng: np.random.Generator
) -> tuple[torch.Tensor | None, np.ndarray]:
    """What an imperfect instance segmenter hands stage 1 (eq. 1's ``N_i(I_s)``): the exact visible
    mask grown or shrunk by a few pixels, at times with a piece missing, and for a person in front at
    times merged with that person. ``share`` of the crops get one; returns (masks (B, 1, H, W) float
    or None when no crop does, which crops got one). Crops without one get zeros, the net's "no
    initial mask" input."""
    b = len(visible)
    given = rng.random(b) < share
    if not given.any():
        return None, given
    out = np.zeros((b, 1, *visible.shape[1:]), dtype=np.float32)
    for i in np.flatnonzero(given):
        m = visible[i].numpy().astype(np.uint8)
        if kinds[i] == "person" and rng.random() < 0.3:
            m = m | occluder[i].numpy().astype(np.uint8)
        k = int(rng.integers(1, 4)) * 2 + 1
        kernel = np.ones((k, k), np.uint8)
        m = cv2.dilate(m, kernel) if rng.random() < 0.5 else cv2.erode(m, kernel)
        if rng.random() < 0.3:
            h, w = m.shape
            y, x = int(rng.integers(h)), int(rng.integers(w))
            m[y : y + int(rng.integers(4, h // 4)), x : x + int(rng.integers(4, w // 2))] = 0
        out[i, 0] = m
    return torch.from_numpy(out), given
