"""(low-resolution, high-resolution) pairs from person crops (reconstruction paper sec. 3.3 / lowRAP).

The LR input is the HR crop downsampled by the factor r (sec. 3.3: "a simple downsample operation
with factor r=4"; OpenCV INTER_AREA by default, INTER_CUBIC on request). Crops are decoded once into
one uint8 array; a training item is a random horizontal flip (and, optionally, a random HR patch) of
a crop, drawn from a generator keyed by (seed, epoch, index), so a run is deterministic given its
seed and a resumed run sees the same pairs as an uninterrupted one. Evaluation items have no
randomness at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from models.data.reid_datasets import ReIDRecord, load_images, read_market_folder

__all__ = [
    "Downsample",
    "downsample",
    "upsample",
    "modcrop",
    "to_tensor",
    "to_uint8",
    "SRPairs",
    "load_market_crops",
    "split_identities",
]

logger = logging.getLogger(__name__)

Downsample = Literal["area", "bicubic"]
_DOWN = {"area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC}
_UP = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom / right so height and width are multiples of ``scale`` (standard SR practice)."""
    h, w = image.shape[0] - image.shape[0] % scale, image.shape[1] - image.shape[1] % scale
    if h < scale or w < scale:
        raise ValueError(f"image {image.shape[:2]} is smaller than the scale factor {scale}")
    return image[:h, :w]


def downsample(image: np.ndarray, scale: int, method: Downsample = "area") -> np.ndarray:
    """HR (H, W, 3) uint8 -> LR (H // scale, W // scale, 3): lowRAP's "downsample by r" (sec. 4)."""
    _check_rgb(image)
    if method not in _DOWN:
        raise ValueError(f"downsample method must be one of {sorted(_DOWN)}, got {method!r}")
    h, w = image.shape[0] // scale, image.shape[1] // scale
    if h < 1 or w < 1:
        raise ValueError(f"image {image.shape[:2]} is too small to downsample by {scale}")
    return cv2.resize(image, (w, h), interpolation=_DOWN[method])


def upsample(
    image: np.ndarray, size: Sequence[int], method: Literal["bicubic", "bilinear"] = "bicubic"
) -> np.ndarray:
    """Plain interpolation to (height, width): the baselines SR is compared with (Tab. 2 uses bilinear).

    OpenCV's INTER_CUBIC equals torch's ``bicubic`` (align_corners=False) after rounding, so the
    bicubic baseline is exactly what the untrained network outputs.
    """
    _check_rgb(image)
    if method not in _UP:
        raise ValueError(f"upsample method must be one of {sorted(_UP)}, got {method!r}")
    return cv2.resize(image, (int(size[1]), int(size[0])), interpolation=_UP[method])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) or (H, W, 3) uint8 -> float (N, 3, H, W) / (3, H, W) in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return t.permute(0, 3, 1, 2) if t.ndim == 4 else t.permute(2, 0, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [0, 1] (clamped) -> (N, H, W, 3) uint8."""
    x = (images.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


class SRPairs(Dataset):
    """Item: dict(lr (3, h, w), hr (3, H, W) float in [0, 1], index); h = H / scale."""

    def __init__(
        self,
        images: np.ndarray,
        scale: int,
        seed: int,
        downsample_method: Downsample = "area",
        patch_size: tuple[int, int] | None = None,
        flip: bool = True,
        train: bool = True,
    ):
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
        if len(images) == 0:
            raise ValueError("no images")
        if images.shape[1] % scale or images.shape[2] % scale:
            raise ValueError(f"crop size {images.shape[1:3]} is not a multiple of the scale {scale}")
        if patch_size is not None and (
            patch_size[0] % scale
            or patch_size[1] % scale
            or patch_size[0] > images.shape[1]
            or patch_size[1] > images.shape[2]
        ):
            raise ValueError(
                f"patch_size {tuple(patch_size)} must be multiples of {scale} within {images.shape[1:3]}"
            )
        self.images, self.scale, self.seed = images, scale, seed
        self.downsample_method = downsample_method
        self.patch_size = tuple(patch_size) if patch_size is not None else None
        self.flip, self.train = flip, train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New random flips / patches each training epoch (evaluation pairs never change)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(LR uint8, HR uint8) for ``index``; deterministic given seed, epoch and index."""
        hr = self.images[index]
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            if self.patch_size is not None:
                ph, pw = self.patch_size
                r = self.scale  # patch corners on the LR grid, so LR pixels stay aligned
                y = int(rng.integers(0, (hr.shape[0] - ph) // r + 1)) * r
                x = int(rng.integers(0, (hr.shape[1] - pw) // r + 1)) * r
                hr = hr[y : y + ph, x : x + pw]
            if self.flip and rng.random() < 0.5:
                hr = hr[:, ::-1]
        hr = np.ascontiguousarray(hr)
        return downsample(hr, self.scale, self.downsample_method), hr

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        lr, hr = self.pair(index)
        return {"lr": to_tensor(lr), "hr": to_tensor(hr), "index": torch.tensor(index)}


def load_market_crops(
    folder: str | Path, size: tuple[int, int], limit: int | None = None, seed: int = 0
) -> tuple[np.ndarray, list[ReIDRecord]]:
    """Decode a Market-style folder's crops (junk and distractors left out) to (N, H, W, 3) uint8 RGB.

    ``limit``: a seeded random subset of that many crops (kept in file order).
    """
    records = read_market_folder(folder)
    if limit is not None and limit < len(records):
        keep = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
        records = [records[i] for i in keep]
    images = load_images(records, size).permute(0, 2, 3, 1).contiguous().numpy()
    logger.info("%s: %d crops of %d identities", folder, len(records), len({r.pid for r in records}))
    return images, records


def split_identities(pids: Sequence[str], n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): ``n_val`` whole identities held out, chosen with ``seed``."""
    unique = sorted(set(pids))
    if n_val >= len(unique):
        raise ValueError(f"cannot hold out {n_val} of {len(unique)} identities and still train")
    held = set(np.random.default_rng(seed).permutation(unique)[:n_val].tolist())
    mask = np.array([p in held for p in pids], dtype=bool)
    return np.flatnonzero(~mask), np.flatnonzero(mask)
