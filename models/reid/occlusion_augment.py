"""OAMN occlusion augmentation (Chen et al., ICCV 2021, sec. 3.1) and the occlusion geometry the
grader and the gallery share.

A patch is cropped from a *corner* of another image (corners rarely hold the person), its area is
eps * area(source) with eps ~ U(0.02, 0.2) and aspect r = p_h / p_w ~ U(0.3, 3.3); it is rescaled to
a band covering a half or a quarter of the target and placed at the top, bottom, left or right.
Every image then has four occluded copies plus the holistic one; the grader's target for location
p is s^p = 2 * a_aug (sec. 3.4).

Images are torch tensors ``(C, H, W)`` / batches ``(B, C, H, W)`` of any float dtype, or NumPy
``(H, W, C)`` arrays (uint8 or float) for callers outside torch (e.g. the de-occlusion data
synthesis). Everything is deterministic given a seed or a ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "LOCATIONS",
    "AREAS",
    "NUM_GRADES",
    "OcclusionLabel",
    "OcclusionResult",
    "occlusion_box",
    "occlusion_mask",
    "sample_corner_patch",
    "occlude",
    "occlude_all_locations",
    "augment_batch",
    "AugmentedBatch",
    "grade_index",
    "grade_from_index",
    "mask_batch",
    "union_mask",
]

Location = Literal["top", "bottom", "left", "right"]
#: occlusion locations in the grader's output order (paper sec. 3.4: s = {s^t, s^b, s^l, s^r})
LOCATIONS: tuple[Location, ...] = ("top", "bottom", "left", "right")
#: occluded fractions of the image the augmentation uses (sec. 3.1: quarter and half)
AREAS: tuple[float, ...] = (0.25, 0.5)
#: holistic + 4 locations x 2 areas
NUM_GRADES = 1 + len(LOCATIONS) * len(AREAS)

_EPS_RANGE = (0.02, 0.2)  # sec. 3.1: eps ~ U(0.02, 0.2)
_RATIO_RANGE = (0.3, 3.3)  # sec. 3.1: r ~ U(0.3, 3.3)


def grade_index(location: str | None, area: float) -> int:
    """Index of an occlusion type in ``0..8``: 0 = holistic, then (location, area) pairs in
    ``LOCATIONS`` x ``AREAS`` order (top-1/4, top-1/2, bottom-1/4, ...)."""
    if location is None or area == 0:
        return 0
    if location not in LOCATIONS:
        raise ValueError(f"unknown occlusion location {location!r}; expected one of {LOCATIONS}")
    if area not in AREAS:
        raise ValueError(f"occlusion area must be one of {AREAS} (or 0 for holistic), got {area}")
    return 1 + LOCATIONS.index(location) * len(AREAS) + AREAS.index(area)


def grade_from_index(index: int) -> tuple[Location | None, float]:
    """Inverse of ``grade_index``."""
    if not 0 <= index < NUM_GRADES:
        raise ValueError(f"grade index must be in [0, {NUM_GRADES - 1}], got {index}")
    if index == 0:
        return None, 0.0
    loc, area = divmod(index - 1, len(AREAS))
    return LOCATIONS[loc], AREAS[area]


@dataclass(frozen=True)
class OcclusionLabel:
    """Where an image is occluded and how much: ``location`` None means holistic (area 0)."""

    location: Location | None
    area: float

    @property
    def index(self) -> int:
        return grade_index(self.location, self.area)

    @property
    def location_index(self) -> int:
        """0..3 for top/bottom/left/right, -1 for holistic."""
        return -1 if self.location is None else LOCATIONS.index(self.location)

    def score_target(self) -> np.ndarray:
        """Grader target (sec. 3.4): s^p = 2 * a_aug at the occluded location, 0 elsewhere."""
        s = np.zeros(len(LOCATIONS), dtype=np.float32)
        if self.location is not None:
            s[LOCATIONS.index(self.location)] = 2.0 * self.area
        return s


@dataclass(frozen=True)
class OcclusionResult:
    """An occluded image, its label and the boolean (H, W) mask of occluded pixels."""

    image: np.ndarray | torch.Tensor
    label: OcclusionLabel
    mask: np.ndarray


def occlusion_box(height: int, width: int, location: str, area: float) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of the band covering ``area`` of an ``height x width`` image at ``location``:
    top/bottom bands span the full width, left/right bands the full height."""
    grade_index(location, area)  # validates
    if location in ("top", "bottom"):
        band = max(1, int(round(height * area)))
        return (0, band, 0, width) if location == "top" else (height - band, height, 0, width)
    band = max(1, int(round(width * area)))
    return (0, height, 0, band) if location == "left" else (0, height, width - band, width)


def occlusion_mask(height: int, width: int, location: str | None, area: float) -> np.ndarray:
    """Boolean (H, W) mask, True where the occlusion type covers the image (all False if holistic)."""
    mask = np.zeros((height, width), dtype=bool)
    if location is not None and area > 0:
        y0, y1, x0, x1 = occlusion_box(height, width, location, area)
        mask[y0:y1, x0:x1] = True
    return mask


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def sample_corner_patch(source: torch.Tensor, rng: np.random.Generator | int | None) -> torch.Tensor:
    """Crop the occluder from one of the four corners of ``source`` (C, H, W) (sec. 3.1):
    p_h^2 = a * r, p_w^2 = a / r, a = eps * H * W."""
    if source.ndim != 3:
        raise ValueError(f"source must be (C, H, W), got shape {tuple(source.shape)}")
    rng = _rng(rng)
    _, h, w = source.shape
    a = rng.uniform(*_EPS_RANGE) * h * w
    r = rng.uniform(*_RATIO_RANGE)
    ph = int(np.clip(round(np.sqrt(a * r)), 1, h))
    pw = int(np.clip(round(np.sqrt(a / r)), 1, w))
    y = 0 if rng.random() < 0.5 else h - ph
    x = 0 if rng.random() < 0.5 else w - pw
    return source[:, y : y + ph, x : x + pw]


def _paste(
    target: torch.Tensor, patch: torch.Tensor, location: str, area: float
) -> tuple[torch.Tensor, np.ndarray]:
    _, h, w = target.shape
    y0, y1, x0, x1 = occlusion_box(h, w, location, area)
    resized = F.interpolate(
        patch[None].float(), size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False
    )[0]
    out = target.clone()
    if not out.is_floating_point():
        resized = resized.round().clamp(torch.iinfo(out.dtype).min, torch.iinfo(out.dtype).max)
    out[:, y0:y1, x0:x1] = resized.to(out.dtype)
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return out, mask


def _to_chw(image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    if isinstance(image, np.ndarray):
        if image.ndim != 3:
            raise ValueError(f"NumPy images must be (H, W, C), got shape {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), True
    if image.ndim != 3:
        raise ValueError(f"tensor images must be (C, H, W), got shape {tuple(image.shape)}")
    return image, False


def _from_chw(image: torch.Tensor, numpy: bool) -> np.ndarray | torch.Tensor:
    return image.permute(1, 2, 0).contiguous().numpy() if numpy else image


def occlude(
    image: np.ndarray | torch.Tensor,
    source: np.ndarray | torch.Tensor,
    location: str,
    area: float,
    rng: np.random.Generator | int | None = None,
) -> OcclusionResult:
    """One occluded copy of ``image`` with a corner patch of ``source`` at ``location`` covering ``area``."""
    grade_index(location, area)
    target, is_np = _to_chw(image)
    src, _ = _to_chw(source)
    out, mask = _paste(target, sample_corner_patch(src, rng), location, area)
    return OcclusionResult(_from_chw(out, is_np), OcclusionLabel(location, area), mask)  # type: ignore[arg-type]


def occlude_all_locations(
    image: np.ndarray | torch.Tensor,
    source: np.ndarray | torch.Tensor,
    rng: np.random.Generator | int | None = None,
    area: float | None = None,
) -> list[OcclusionResult]:
    """The four occluded copies of sec. 3.1 (top, bottom, left, right): one patch from ``source``,
    one area (drawn from {1/4, 1/2} when ``area`` is None) for all four."""
    rng = _rng(rng)
    if area is None:
        area = AREAS[int(rng.integers(len(AREAS)))]
    target, is_np = _to_chw(image)
    src, _ = _to_chw(source)
    patch = sample_corner_patch(src, rng)
    results = []
    for loc in LOCATIONS:
        out, mask = _paste(target, patch, loc, area)
        results.append(OcclusionResult(_from_chw(out, is_np), OcclusionLabel(loc, area), mask))
    return results


@dataclass(frozen=True)
class AugmentedBatch:
    """Five views of a batch of B images stacked as (5B, C, H, W): rows ``v*B + i`` are view ``v``
    of image ``i`` with views ordered [holistic, top, bottom, left, right] (paper's P' = P + {\\})."""

    images: torch.Tensor
    location: torch.Tensor  # (5B,) long: -1 holistic, 0..3 top/bottom/left/right
    area: torch.Tensor  # (5B,) float: 0, 0.25 or 0.5
    score_target: torch.Tensor  # (5B, 4): s^p = 2 * a_aug (sec. 3.4)
    grade: torch.Tensor  # (5B,) long: grade_index
    half: torch.Tensor  # (B,) bool: image i was augmented with half-area occlusions (eq. 3's I)


def augment_batch(images: torch.Tensor, rng: np.random.Generator | int | None = None) -> AugmentedBatch:
    """Occlusion augmentation of a training batch: each image's occluder comes from a corner of
    another image of the batch, its area (1/4 or 1/2) is drawn once per image (sec. 3.2, "we
    augment each training image with half/quarter occlusion area at random")."""
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"augment_batch needs (B>=2, C, H, W) images, got shape {tuple(images.shape)}")
    rng = _rng(rng)
    b = images.shape[0]
    views = [images]
    copies = [[None] * b for _ in LOCATIONS]
    areas = np.zeros(b, dtype=np.float32)
    for i in range(b):
        j = int(rng.integers(b - 1))
        j = j + 1 if j >= i else j  # another image of the batch
        area = AREAS[int(rng.integers(len(AREAS)))]
        areas[i] = area
        patch = sample_corner_patch(images[j], rng)
        for k, loc in enumerate(LOCATIONS):
            copies[k][i] = _paste(images[i], patch, loc, area)[0]
    views += [torch.stack(c) for c in copies]
    location = torch.cat(
        [torch.full((b,), -1, dtype=torch.long)]
        + [torch.full((b,), k, dtype=torch.long) for k in range(len(LOCATIONS))]
    )
    area_t = torch.cat([torch.zeros(b)] + [torch.from_numpy(areas)] * len(LOCATIONS))
    target = torch.zeros(5 * b, len(LOCATIONS))
    occluded = location >= 0
    target[occluded, location[occluded]] = 2.0 * area_t[occluded]
    grade = torch.tensor(
        [
            grade_index(None if loc < 0 else LOCATIONS[loc], float(a))
            for loc, a in zip(location.tolist(), area_t.tolist(), strict=True)
        ]
    )
    return AugmentedBatch(torch.cat(views), location, area_t, target, grade, torch.from_numpy(areas == 0.5))


def union_mask(height: int, width: int, grades: Sequence[int]) -> np.ndarray:
    """Boolean (H, W) mask of the union of the grades' occlusion regions (grades as in
    ``grade_index``; 0 = holistic adds nothing). Read-only and cached: unification asks for the
    same few regions for every crop."""
    return _union_mask(height, width, tuple(sorted({int(g) for g in grades} - {0})))


@lru_cache(maxsize=256)
def _union_mask(height: int, width: int, grades: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for g in grades:
        mask |= occlusion_mask(height, width, *grade_from_index(g))
    mask.flags.writeable = False
    return mask


def mask_batch(
    images: torch.Tensor,
    grades: torch.Tensor | list[int],
    fill: float = 0.0,
    also: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """Copy of ``images`` (B, C, H, W) with each image's occlusion region (``grades[i]`` as in
    ``grade_index``) set to ``fill``: the "masking out" of occlusion unification (sec. 3.4). With
    normalised inputs, ``fill=0`` paints the ImageNet mean colour.

    ``also`` (one grade per image) masks the union with a second region: the version of an image
    that is itself occluded (``unification.py``). A union covering the whole crop (opposite halves)
    leaves the image unmasked: nothing would be left to compare, and both sides of a comparison
    reach the same union, so they fall back together."""
    grades = torch.as_tensor(grades).tolist()
    also = [0] * len(grades) if also is None else torch.as_tensor(also).tolist()
    if len(grades) != images.shape[0] or len(also) != images.shape[0]:
        n = images.shape[0]
        raise ValueError(f"got {len(grades)} grades and {len(also)} extra grades for {n} images")
    out = images.clone()
    h, w = images.shape[-2:]
    for i, pair in enumerate(zip(grades, also, strict=True)):
        mask = union_mask(h, w, pair)
        if mask.any() and not mask.all():
            out[i, :, torch.tensor(mask)] = fill  # a copy: the cached mask is read-only
    return out
