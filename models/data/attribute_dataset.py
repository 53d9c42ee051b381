"""A torch ``Dataset`` over attribute records (PETA, CSV/JSON, RAP, PA-100K readers all produce them).

Images are decoded and resized once (``preload=True``): an epoch then costs only augmentation and
the network, which matters on a CPU. Augmentation randomness comes from a generator seeded by
(seed, epoch, index), so a resumed or repeated run sees the same samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .peta_attributes import AttributeRecord
from .transforms import AttributeTransform, load_rgb, resize

__all__ = ["AttributeImageDataset"]

logger = logging.getLogger(__name__)


class AttributeImageDataset(Dataset):
    """(image tensor (3, H, W), labels (A,), index) triples."""

    def __init__(
        self,
        records: Sequence[AttributeRecord],
        transform: AttributeTransform,
        preload: bool = True,
        seed: int = 0,
    ):
        if not records:
            raise ValueError("no attribute records to build a dataset from")
        self.records = list(records)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.labels = np.stack([r.labels for r in self.records]).astype(np.float32)
        self._cache: np.ndarray | None = None
        if preload:
            h, w = transform.size
            cache = np.empty((len(self.records), h, w, 3), np.uint8)
            for i, rec in enumerate(self.records):
                cache[i] = resize(load_rgb(str(rec.path)), (h, w))
            self._cache = cache
            logger.info("preloaded %d images at %dx%d (%.0f MB)", len(cache), h, w, cache.nbytes / 2**20)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call once per epoch)."""
        self.epoch = epoch

    def image(self, index: int) -> np.ndarray:
        """The (resized, if preloaded) RGB uint8 image of a record."""
        if self._cache is not None:
            return self._cache[index]
        return load_rgb(str(self.records[index].path))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.transform.train else None
        x = self.transform(self.image(index), rng)
        return x, torch.from_numpy(self.labels[index]), index
