"""Occlusion synthesis for (occluded, clean) training and evaluation pairs.

Three modes, all deterministic given a seed / ``numpy.random.Generator``, each returning the
occluded crop and the boolean mask of the pixels it covered:

* ``silhouette`` (de-occlusion paper sec. 4.1, eq. 8): another person's silhouette beta(I_gt2) is
  translated (alpha) onto the clean crop, I_occ = I_gt1 * not(a(b)) + a(b * I_gt2); a Gaussian
  blur is applied only on the band between a dilation and an erosion of the pasted mask, and the
  occluder never reaches below 6/7 of the crop height.
* ``bottom`` (reconstruction paper sec. 4, Fig. 4): the bottom 50-80 % of the crop is covered by
  the upper body of another subject.
* ``corner``: OAMN-style corner patches (C's ``models.reid.occlusion_augment``, OAMN sec. 3.1).

Silhouettes come from an ultralytics segmentation model when one is given as a local file;
otherwise from ``grabcut_person_mask`` (see its docstring for why that fallback).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from models.reid.occlusion_augment import AREAS, LOCATIONS, occlude

__all__ = [
    "SynthesisResult",
    "OcclusionSynthesizer",
    "grabcut_person_mask",
    "ellipse_person_mask",
    "UltralyticsPersonMasker",
    "person_masks",
    "MODES",
]

logger = logging.getLogger(__name__)

Mode = Literal["silhouette", "bottom", "corner"]
MODES: tuple[str, ...] = ("silhouette", "bottom", "corner")


@dataclass(frozen=True)
class SynthesisResult:
    """The occluded crop (H, W, 3 uint8), occluded pixels, blurred band (silhouette only), mode."""

    image: np.ndarray
    mask: np.ndarray
    band: np.ndarray
    mode: str


def ellipse_person_mask(height: int, width: int) -> np.ndarray:
    """A centred upright ellipse: the shape prior of a person in a detector crop."""
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width // 2, height // 2), (int(width * 0.36), int(height * 0.48)), 0, 0, 360, 1, -1)
    return mask.astype(bool)


def grabcut_person_mask(image: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Person silhouette of a pedestrian crop without a segmentation network (the offline fallback).

    Why GrabCut seeded at the centre: PETA / detector crops are centred on one standing person, so
    the crop's central column is reliably the person and its side columns mostly background. GrabCut
    then follows the person's real colour boundary (arms, bags, legs), which gives occluders with
    realistic outlines, unlike a fixed ellipse. When GrabCut degenerates (the result covers under
    15 % or over 85 % of the crop), the elliptical person prior is returned instead.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    prior = ellipse_person_mask(h, w)
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    mask[prior] = cv2.GC_PR_FGD
    mask[int(h * 0.12) : int(h * 0.88), int(w * 0.42) : max(int(w * 0.58), int(w * 0.42) + 1)] = cv2.GC_FGD
    side = max(1, w // 16)
    mask[:, :side] = cv2.GC_BGD
    mask[:, w - side :] = cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.setRNGSeed(0)  # GrabCut's GMM initialisation uses OpenCV's RNG: keep it deterministic
        cv2.grabCut(
            cv2.cvtColor(image, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK
        )
    except cv2.error as exc:
        logger.debug("grabcut failed (%s); using the ellipse prior", exc)
        return prior
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    fg = cv2.morphologyEx(cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count > 1:  # keep the largest blob: the person, not background patches of a similar colour
        fg = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    fraction = float(fg.mean())
    if not 0.15 <= fraction <= 0.85:
        return prior
    return fg.astype(bool)


class UltralyticsPersonMasker:
    """Person silhouettes from a local ultralytics segmentation model (e.g. ``yolov8n-seg.pt``).

    The file must exist locally (nothing is downloaded); the mask of the person box closest to the
    crop's centre is used, and crops where no person is found fall back to GrabCut.
    """

    def __init__(self, weights: str | Path):
        weights = Path(weights)
        if not weights.exists():
            raise ValueError(f"segmentation model {weights} does not exist (nothing is downloaded)")
        from ultralytics import YOLO

        self.model = YOLO(str(weights), task="segment")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        result = self.model.predict(np.ascontiguousarray(image[..., ::-1]), classes=[0], verbose=False)[0]
        if result.masks is None or len(result.masks) == 0:
            return grabcut_person_mask(image)
        boxes = result.boxes.xyxy.cpu().numpy()
        centres = np.stack(
            [(boxes[:, 0] + boxes[:, 2]) / 2 - w / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - h / 2], 1
        )
        best = int(np.argmin(np.linalg.norm(centres, axis=1)))
        # masks.xy are polygons in the crop's own pixel coordinates (masks.data is letterboxed)
        polygon = np.asarray(result.masks.xy[best], np.float32)
        mask = np.zeros((h, w), np.uint8)
        if len(polygon) >= 3:
            cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
        return mask.astype(bool) if mask.any() else grabcut_person_mask(image)


def person_masks(images: np.ndarray, masker: UltralyticsPersonMasker | None = None) -> np.ndarray:
    """Silhouettes for a stack of (N, H, W, 3) uint8 crops: the segmentation model's or GrabCut's."""
    fn = masker if masker is not None else grabcut_person_mask
    return np.stack([fn(img) for img in images]) if len(images) else np.zeros((0, *images.shape[1:3]), bool)


class OcclusionSynthesizer:
    """Make one occluded copy of a clean crop, with the occluder drawn from another person's crop."""

    def __init__(
        self,
        modes: Mapping[str, float] | None = None,
        height_limit: float = 6 / 7,
        shift_range: tuple[float, float] = (0.2, 0.55),
        scale_range: tuple[float, float] = (0.95, 1.25),
        bottom_range: tuple[float, float] = (0.5, 0.8),
        band_width: int | None = None,
        blur_sigma: float = 1.5,
        min_coverage: float = 0.08,
    ):
        modes = dict(modes or {"silhouette": 1.0})
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise ValueError(f"unknown occlusion modes {unknown}; choose from {list(MODES)}")
        weights = np.array([modes[m] for m in modes], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"mode weights must be >= 0 with a positive sum, got {modes}")
        if not 0 < height_limit <= 1:
            raise ValueError(f"height_limit must be in (0, 1], got {height_limit}")
        if not 0 < bottom_range[0] <= bottom_range[1] < 1:
            raise ValueError(f"bottom_range must satisfy 0 < low <= high < 1, got {bottom_range}")
        self.mode_names = list(modes)
        self.mode_probs = weights / weights.sum()
        self.height_limit = height_limit
        self.shift_range = shift_range
        self.scale_range = scale_range
        self.bottom_range = bottom_range
        self.band_width = band_width
        self.blur_sigma = blur_sigma
        self.min_coverage = min_coverage

    def __call__(
        self,
        clean: np.ndarray,
        occluder: np.ndarray,
        occluder_mask: np.ndarray | None = None,
        rng: np.random.Generator | int | None = None,
        mode: str | None = None,
    ) -> SynthesisResult:
        if clean.ndim != 3 or clean.shape[2] != 3 or clean.dtype != np.uint8:
            raise ValueError(f"clean must be an (H, W, 3) uint8 crop, got {clean.shape} {clean.dtype}")
        if occluder.shape != clean.shape or occluder.dtype != np.uint8:
            raise ValueError(
                f"occluder must match the clean crop {clean.shape} uint8, "
                f"got {occluder.shape} {occluder.dtype}"
            )
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        if mode is None:
            mode = self.mode_names[int(rng.choice(len(self.mode_names), p=self.mode_probs))]
        if mode == "silhouette":
            if occluder_mask is None:
                occluder_mask = grabcut_person_mask(occluder)
            return self.silhouette(clean, occluder, occluder_mask, rng)
        if mode == "bottom":
            return self.bottom(clean, occluder, rng)
        if mode == "corner":
            location = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
            area = AREAS[int(rng.integers(len(AREAS)))]
            result = occlude(clean, occluder, location, area, rng)
            empty = np.zeros(clean.shape[:2], bool)
            return SynthesisResult(np.asarray(result.image, np.uint8), result.mask, empty, "corner")
        raise ValueError(f"unknown occlusion mode {mode!r}; choose from {list(MODES)}")

    def _band_kernel(self, height: int) -> np.ndarray:
        k = self.band_width or max(3, int(round(height / 32)) | 1)
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))

    def silhouette(
        self, clean: np.ndarray, occluder: np.ndarray, occluder_mask: np.ndarray, rng: np.random.Generator
    ) -> SynthesisResult:
        """Eq. 8 with alpha = random scale + translation, beta = the silhouette, blur on the mask boundary."""
        h, w = clean.shape[:2]
        if occluder_mask.shape != (h, w):
            raise ValueError(f"occluder_mask must be {(h, w)}, got {occluder_mask.shape}")
        limit = int(np.floor(h * self.height_limit))  # rows >= limit are never occluded (sec. 4.1)
        source_mask = occluder_mask.astype(np.uint8)
        placed_mask = np.zeros((h, w), np.uint8)
        placed = occluder
        for _attempt in range(8):
            scale = rng.uniform(*self.scale_range)
            dx = rng.uniform(*self.shift_range) * w * (1 if rng.random() < 0.5 else -1)
            rows = np.nonzero(source_mask.any(axis=1))[0]
            bottom = (rows.max() + 1) * scale if rows.size else h
            # lift the occluder so its lowest silhouette row ends above the limit, plus a random margin
            dy = (limit - bottom) - rng.uniform(0.0, 0.25) * h
            matrix = np.float32([[scale, 0, dx + (1 - scale) * w / 2], [0, scale, dy]])
            placed = cv2.warpAffine(
                occluder, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
            )
            placed_mask = cv2.warpAffine(source_mask, matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
            placed_mask[limit:] = 0
            if placed_mask.mean() >= self.min_coverage:
                break
        mask = placed_mask.astype(bool)
        composite = np.where(mask[..., None], placed, clean)
        kernel = self._band_kernel(h)
        band = (cv2.dilate(placed_mask, kernel) > 0) & ~(cv2.erode(placed_mask, kernel) > 0)
        blurred = cv2.GaussianBlur(composite, (0, 0), self.blur_sigma)
        out = np.where(band[..., None], blurred, composite).astype(np.uint8)
        return SynthesisResult(out, mask | band, band, "silhouette")

    def bottom(self, clean: np.ndarray, occluder: np.ndarray, rng: np.random.Generator) -> SynthesisResult:
        """Reconstruction paper sec. 4: the bottom 50-80 % covered by another subject's upper body."""
        h = clean.shape[0]
        rows = int(round(rng.uniform(*self.bottom_range) * h))
        out = clean.copy()
        out[h - rows :] = occluder[:rows]
        mask = np.zeros(clean.shape[:2], bool)
        mask[h - rows :] = True
        return SynthesisResult(out, mask, np.zeros_like(mask), "bottom")
