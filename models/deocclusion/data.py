"""(occluded, clean) pairs from PETA crops (or any list of crops) for training and evaluation.

Crops are decoded once, resized to the generator's size and kept as one uint8 array (a few hundred
MB for all of PETA at 128x64), so an epoch costs only the synthesis. The occluders come from a pool
of crops whose silhouettes are computed once (GrabCut costs ~50 ms a crop on this CPU) and cached.
Training pairs are random per epoch; evaluation pairs depend only on ``seed`` and the index, so
every checkpoint is scored on the same occlusions.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from models.deocclusion.synthesis import OcclusionSynthesizer, UltralyticsPersonMasker, person_masks

__all__ = ["load_crops", "OcclusionPairs", "occluder_pool", "to_tensor", "to_uint8"]

logger = logging.getLogger(__name__)


def load_crops(paths: Sequence[str | Path], size: tuple[int, int]) -> np.ndarray:
    """Decode and resize crops to (N, H, W, 3) uint8 RGB; unreadable files are an error naming the file."""
    height, width = size
    out = np.empty((len(paths), height, width, 3), np.uint8)
    for i, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {path}")
        out[i] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)[..., ::-1]
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) or (H, W, 3) uint8 -> float (N, 3, H, W) / (3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
    return t.permute(0, 3, 1, 2) if t.ndim == 4 else t.permute(2, 0, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def occluder_pool(
    images: np.ndarray,
    size: int,
    seed: int,
    cache_dir: str | Path | None = None,
    segmenter: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick ``size`` crops as occluders and compute their silhouettes (cached by content hash).

    Returns (indices into ``images``, their crops, their boolean masks).
    """
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(images), size=min(size, len(images)), replace=False))
    crops = images[idx]
    masker = UltralyticsPersonMasker(segmenter) if segmenter else None
    cache = None
    if cache_dir is not None:
        digest = hashlib.sha256(crops.tobytes()).hexdigest()[:16]
        tag = "seg" if segmenter else "grabcut"
        cache = Path(cache_dir) / f"occluder_masks_{tag}_{digest}.npy"
        if cache.is_file():
            masks = np.load(cache)
            if masks.shape == crops.shape[:3]:
                return idx, crops, masks
    logger.info(
        "computing %d occluder silhouettes (%s)", len(crops), "segmentation model" if masker else "GrabCut"
    )
    masks = person_masks(crops, masker)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, masks)
    return idx, crops, masks


class OcclusionPairs(Dataset):
    """Item: dict(occluded, clean in [-1, 1] (3, H, W), mask (H, W) bool as float, labels, index)."""

    def __init__(
        self,
        images: np.ndarray,
        occluders: np.ndarray,
        occluder_masks: np.ndarray,
        synthesizer: OcclusionSynthesizer,
        seed: int,
        labels: np.ndarray | None = None,
        train: bool = True,
        mode: str | None = None,
        person_ids: list[str] | None = None,
        occluder_ids: list[str] | None = None,
    ):
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
        if occluders.shape[1:] != images.shape[1:] or occluder_masks.shape != occluders.shape[:3]:
            raise ValueError(
                f"occluders {occluders.shape} / masks {occluder_masks.shape} "
                f"do not match the crops {images.shape}"
            )
        if len(occluders) < 2:
            raise ValueError("need at least 2 occluder crops")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} label rows for {len(images)} images")
        self.images, self.occluders, self.occluder_masks = images, occluders, occluder_masks
        self.labels = labels
        self.synthesizer, self.seed, self.train, self.mode = synthesizer, seed, train, mode
        self.person_ids, self.occluder_ids = person_ids, occluder_ids
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New random occlusions each training epoch (evaluation pairs never change)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(occluded uint8, clean uint8, mask bool) for ``index``, deterministic given seed (+ epoch)."""
        key = (self.seed, self.epoch, index) if self.train else (self.seed, index)
        rng = np.random.default_rng(key)
        clean = self.images[index]
        j = int(rng.integers(len(self.occluders)))
        for _ in range(len(self.occluders)):  # never occlude a person with themself
            same_id = (
                self.person_ids is not None
                and self.occluder_ids is not None
                and self.person_ids[index] == self.occluder_ids[j]
            )
            if not same_id and not np.array_equal(self.occluders[j], clean):
                break
            j = (j + 1) % len(self.occluders)
        result = self.synthesizer(clean, self.occluders[j], self.occluder_masks[j], rng=rng, mode=self.mode)
        occluded, mask = result.image, result.mask
        if self.train and rng.random() < 0.5:  # sec. 3.3: random horizontal flips
            clean, occluded, mask = clean[:, ::-1], occluded[:, ::-1], mask[:, ::-1]
        return occluded, clean, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        occluded, clean, mask = self.pair(index)
        item = {
            "occluded": to_tensor(occluded),
            "clean": to_tensor(clean),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).float(),
            "index": torch.tensor(index),
        }
        if self.labels is not None:
            item["labels"] = torch.from_numpy(self.labels[index].astype(np.float32))
        return item
