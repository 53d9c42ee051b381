"""Image transforms shared by the attribute, ReID and de-occlusion data pipelines.

Everything works on RGB ``uint8`` arrays (H, W, 3) with NumPy/OpenCV (no per-pixel Python) and ends
with ``to_tensor``: float CHW normalised with ImageNet mean/std, the backbones' input convention.
Random transforms take a ``numpy.random.Generator`` so a seeded run is reproducible.

* ``resize``: to a configurable (height, width), aspect ratio not kept (as in PAR practice);
* ``random_flip``: horizontal flip (attribute labels are left/right symmetric);
* ``random_crop``: small translation crops: pad by ``pad`` pixels (edge replicate), crop back;
* ``colour_jitter``: brightness / contrast / saturation factors drawn in [1 - s, 1 + s];
* ``occlude_bottom``: Fabbri et al. sec. 4 "occRAP": the bottom 50-80% of a crop covered by the
  upper body of another person (used for the occluded evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from models.backbones import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "resize",
    "random_flip",
    "random_crop",
    "colour_jitter",
    "to_tensor",
    "occlude_bottom",
    "AttributeTransform",
    "load_rgb",
]


def load_rgb(path: str) -> np.ndarray:
    """Read an image file as RGB uint8; a clear error for a missing or broken file."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _check(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")


def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize to (height, width); area interpolation when shrinking, linear when enlarging."""
    _check(image)
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive (height, width), got {tuple(size)}")
    if image.shape[:2] == (h, w):
        return image
    shrink = image.shape[0] > h and image.shape[1] > w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def random_flip(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1]) if rng.random() < p else image


def random_crop(image: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Pad ``pad`` pixels on each side (edge replicate) and crop back to the input size at random."""
    if pad <= 0:
        return image
    h, w = image.shape[:2]
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    y, x = rng.integers(0, 2 * pad + 1, size=2)
    return padded[y : y + h, x : x + w]


def colour_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
) -> np.ndarray:
    """Random brightness, contrast and saturation, applied in float and clipped back to uint8."""
    img = image.astype(np.float32)
    if brightness > 0:
        img *= rng.uniform(1 - brightness, 1 + brightness)
    if contrast > 0:
        mean = img.mean()
        img = (img - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    if saturation > 0:
        grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
        img = (img - grey[..., None]) * rng.uniform(1 - saturation, 1 + saturation) + grey[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def to_tensor(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float32 (3, H, W)."""
    _check(image)
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def occlude_bottom(image: np.ndarray, occluder: np.ndarray, fraction: float) -> np.ndarray:
    """Cover the bottom ``fraction`` of ``image`` with the upper body of ``occluder`` (Fabbri et al. sec. 4).

    The occluder's top half (head and torso) is resized to the covered band, as if another person
    stood in front of the subject, nearer the camera.
    """
    _check(image)
    _check(occluder)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    h, w = image.shape[:2]
    band = max(1, int(round(h * fraction)))
    upper = occluder[: max(1, occluder.shape[0] // 2)]
    out = image.copy()
    out[h - band :] = cv2.resize(upper, (w, band), interpolation=cv2.INTER_LINEAR)
    return out


@dataclass
class AttributeTransform:
    """Resize + (training only) flip, small crop and colour jitter, then normalise to a tensor."""

    size: tuple[int, int] = (128, 64)
    train: bool = False
    flip_p: float = 0.5
    crop_pad: int = 4
    jitter: float = 0.2

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        image = resize(image, self.size)
        if self.train:
            if rng is None:
                raise ValueError("a training transform needs a numpy Generator (rng) for reproducibility")
            image = random_flip(image, rng, self.flip_p)
            image = random_crop(image, rng, self.crop_pad)
            if self.jitter > 0:
                image = colour_jitter(image, rng, self.jitter, self.jitter, self.jitter)
        return to_tensor(image)
