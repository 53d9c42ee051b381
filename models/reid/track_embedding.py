"""Aggregate a track's crops into one identity representation for the "occlude them all" gallery.

A track (one person followed in one camera) yields many crops, each with an embedding, a grade
(eq. 8: 0 holistic, 1..8 location x area, ``occlusion_augment.grade_index``) and, for unification,
its 9 versions (``unification.unification_versions``: version k masks grade k's region and the
crop's own). ``TrackEmbedding`` keeps a running **weighted sum of each version row** and a weight
per grade, so memory is (9, D) whatever the track's length (or ``top_k`` crops when asked). The
aggregate is each row's weighted mean, re-normalised, plus one grade for the track
(``grade_rule``), which is what ``OcclusionGallery.add`` / ``match`` take::

    track = TrackEmbedding(512)                                  # one per live track
    versions, grades = gallery.encode(x)                         # x: the track's new crops, prepare_crops
    for i in range(len(x)):                                      # sharpness: the crop at 256 x 128, uint8
        w = crop_weight(grades[i], laplacian_sharpness(resized[i]), frame_heights[i], det_conf[i])
        track.add(versions[i], grades[i], w)
    emb, grade = track.as_query()                                # (1, 9, D), int
    matches = gallery.match(emb, grade=grade)                    # new identity if best score < threshold
    gallery.add([pid], emb, grades=[grade])                      # or enrol the track

``crop_weight`` prefers crops that show more of the person (grade 0 > quarter > half, by the visible
share of the grade's region), sharp ones (variance of the Laplacian), tall ones and confident
detections. The weights and the grade rule (defaults) were chosen on the held-out PETA training
identities by ``amodal eval identity`` (never on test data). There, and on Market-1501, weighting
by visible share and grading a track holistic once its whole crops carry a quarter of the weight
beat a uniform mean with the majority grade on occluded queries; the weighted variants are within
noise of each other, and the height and confidence factors could not be measured (fixed-height
crops, no detector scores).

Pure NumPy: no torch, no model.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Literal

import numpy as np

from .occlusion_augment import NUM_GRADES, grade_from_index

__all__ = [
    "GradeRule",
    "visible_share",
    "laplacian_sharpness",
    "crop_weight",
    "crop_weights",
    "TrackEmbedding",
    "SHARPNESS_REF",
    "HEIGHT_REF",
]

#: how a track's grade is chosen from its crops' grades and weights (see ``TrackEmbedding``)
GradeRule = Literal["dominant", "holistic_share"]

#: variance of the Laplacian (``laplacian_sharpness``) that gets half the sharpness weight: about the
#: median of the held-out PETA crops resized to the network input, 256 x 128 (24; quartiles 9 and 79;
#: Market-1501 crops: median 48)
SHARPNESS_REF = 25.0
#: crop height in pixels from which a crop gets the full height weight (smaller crops: h / HEIGHT_REF)
HEIGHT_REF = 128.0
#: no crop weighs less than this (a track always has a defined mean)
MIN_WEIGHT = 1e-3


def visible_share(grades: np.ndarray | int) -> np.ndarray:
    """1 - occluded area of each grade: 1 for holistic, 0.75 for quarters, 0.5 for halves."""
    g = np.asarray(grades, dtype=np.int64)
    if g.size and (g.min() < 0 or g.max() >= NUM_GRADES):
        raise ValueError(f"grades must be in [0, {NUM_GRADES - 1}], got {g.min()}..{g.max()}")
    areas = np.array([grade_from_index(k)[1] for k in range(NUM_GRADES)])
    return 1.0 - areas[g]


def laplacian_sharpness(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a crop's grey levels (0..255 scale): higher = sharper.
    ``image``: (H, W) grey or (H, W, 3) RGB, uint8 or float in 0..255. The value depends on the
    resolution: compare crops at one size (the network input is the natural one)."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3 and a.shape[2] == 3:
        a = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if a.ndim != 2 or a.shape[0] < 3 or a.shape[1] < 3:
        raise ValueError(f"image must be (H, W) or (H, W, 3) with H, W >= 3, got shape {np.shape(image)}")
    lap = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
    return float(lap.var())


def crop_weights(
    grades: np.ndarray,
    sharpness: np.ndarray | None = None,
    heights: np.ndarray | None = None,
    confidences: np.ndarray | None = None,
    occlusion_power: float = 2.0,
    sharpness_ref: float = SHARPNESS_REF,
    height_ref: float = HEIGHT_REF,
) -> np.ndarray:
    """Weights (N,) of crops in a track's mean.

    Each weight is the product of:

    * ``visible_share(grade) ** occlusion_power``: 1 holistic, 0.56 quarter, 0.25 half (power 2);
    * ``s / (s + sharpness_ref)`` for the crop's ``laplacian_sharpness`` s (0.5 at the reference);
    * ``min(1, h / height_ref)`` for the crop's height h in pixels in the frame;
    * the detector's confidence, clipped to [0, 1];

    each factor left out (1) where its input is None or NaN. Never below ``MIN_WEIGHT``."""
    g = np.asarray(grades, dtype=np.int64).reshape(-1)
    if occlusion_power < 0 or sharpness_ref <= 0 or height_ref <= 0:
        raise ValueError(
            f"occlusion_power must be >= 0 and sharpness_ref, height_ref > 0, got "
            f"{occlusion_power}, {sharpness_ref}, {height_ref}"
        )
    w = visible_share(g) ** occlusion_power

    def factor(values: np.ndarray | None, name: str) -> np.ndarray:
        if values is None:
            return np.ones(len(g))
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(v) != len(g):
            raise ValueError(f"{len(v)} {name} values for {len(g)} grades")
        if np.any(v[np.isfinite(v)] < 0):
            raise ValueError(f"{name} must be >= 0")
        return v

    s = factor(sharpness, "sharpness")
    h = factor(heights, "height")
    c = factor(confidences, "confidence")
    if sharpness is not None:
        w = w * np.where(np.isfinite(s), s / (s + sharpness_ref), 1.0)
    if heights is not None:
        w = w * np.where(np.isfinite(h), np.minimum(1.0, h / height_ref), 1.0)
    if confidences is not None:
        w = w * np.where(np.isfinite(c), np.clip(c, 0.0, 1.0), 1.0)
    return np.maximum(w, MIN_WEIGHT)


def crop_weight(
    grade: int,
    sharpness: float | None = None,
    height: float | None = None,
    confidence: float | None = None,
    **kwargs,
) -> float:
    """One crop's weight (``crop_weights`` for one crop; keyword options are passed on)."""

    def one(v: float | None) -> np.ndarray | None:
        return None if v is None else np.array([v], dtype=np.float64)

    return float(crop_weights(np.array([grade]), one(sharpness), one(height), one(confidence), **kwargs)[0])


class TrackEmbedding:
    """Weighted mean of a track's crop embeddings, bounded in memory.

    ``add`` takes a crop's 9 versions (9, D) (unified matching) or its plain embedding (D,) (no
    unification); a track holds one kind. ``versions()`` is each row's weighted mean re-normalised:
    version k of the track is the mean of its crops' version k (rows no crop has stay zero), so a
    gallery entry graded b meets the track through the track's version b, like a single crop.
    ``grade`` is the track's grade:

    * ``"holistic_share"`` (default, with 0.25): 0 when the holistic crops carry at least
      ``holistic_share`` of the weight, else the occluded grade carrying the most weight. A track
      graded occluded makes every gallery entry it meets lose that region, while its own version
      rows already paint each crop's occluder (0.25 scored best on the held-out ids, by a small margin);
    * ``"dominant"``: the grade carrying the most weight.

    ``top_k``: keep only the ``top_k`` heaviest crops (memory (top_k, 9, D)); None keeps a running
    sum of all crops (memory (9, D)).
    """

    def __init__(
        self,
        dim: int,
        top_k: int | None = None,
        grade_rule: GradeRule = "holistic_share",
        holistic_share: float = 0.25,
    ):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be positive or None, got {top_k}")
        if grade_rule not in ("dominant", "holistic_share"):
            raise ValueError(f"grade_rule must be 'dominant' or 'holistic_share', got {grade_rule!r}")
        if not 0.0 <= holistic_share <= 1.0:
            raise ValueError(f"holistic_share must be in [0, 1], got {holistic_share}")
        self.dim, self.top_k = dim, top_k
        self.grade_rule, self.holistic_share = grade_rule, holistic_share
        self.reset()

    def reset(self) -> None:
        """Forget every crop."""
        self._sum = np.zeros((NUM_GRADES, self.dim), dtype=np.float64)
        self._grade_weight = np.zeros(NUM_GRADES, dtype=np.float64)
        self._heap: list[tuple[float, int, np.ndarray, int]] = []  # (weight, order, rows, grade)
        self._order = itertools.count()
        self._versions: bool | None = None
        self.count = 0  # crops added (kept or not)

    # -- input ----------------------------------------------------------------------------------
    def add(self, embedding: np.ndarray, grade: int = 0, weight: float = 1.0) -> None:
        """Add one crop: ``embedding`` (9, D) versions or (D,) plain (L2-normalised here; zero rows,
        versions not computed, stay zero), its ``grade`` (0..8) and ``weight`` > 0 (``crop_weight``)."""
        e = np.asarray(embedding, dtype=np.float64)
        is_versions = e.shape == (NUM_GRADES, self.dim)
        if not is_versions and e.shape != (self.dim,):
            raise ValueError(f"embedding must be ({NUM_GRADES}, {self.dim}) or ({self.dim},), got {e.shape}")
        if self._versions is not None and is_versions != self._versions:
            have = "(9, D) versions" if self._versions else "(D,) plain embeddings"
            raise ValueError(f"this track holds {have}; cannot add a {e.shape} embedding")
        if not np.all(np.isfinite(e)):
            raise ValueError("embedding has NaN or inf values")
        if not 0 <= int(grade) < NUM_GRADES:
            raise ValueError(f"grade must be in [0, {NUM_GRADES - 1}], got {grade}")
        if not (np.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be finite and > 0, got {weight}")
        rows = e.reshape(-1, self.dim)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
        self._versions = is_versions
        self.count += 1
        if self.top_k is None:
            self._sum[: len(rows)] += weight * rows
            self._grade_weight[int(grade)] += weight
            return
        item = (float(weight), next(self._order), rows.astype(np.float32), int(grade))
        if len(self._heap) < self.top_k:
            heapq.heappush(self._heap, item)
        elif item[0] > self._heap[0][0]:  # heavier than the lightest kept crop
            heapq.heapreplace(self._heap, item)

    # -- output ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Crops the aggregate is made of (at most ``top_k`` when set)."""
        return self.count if self.top_k is None else len(self._heap)

    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count == 0:
            raise ValueError("the track has no crops yet")
        if self.top_k is None:
            return self._sum, self._grade_weight
        total = np.zeros_like(self._sum)
        by_grade = np.zeros(NUM_GRADES)
        for w, _, rows, g in self._heap:
            total[: len(rows)] += w * rows
            by_grade[g] += w
        return total, by_grade

    @property
    def nbytes(self) -> int:
        """Bytes held for the aggregate: the running sums, or the kept crops with ``top_k``."""
        if self.top_k is None:
            return self._sum.nbytes + self._grade_weight.nbytes
        return sum(rows.nbytes for _, _, rows, _ in self._heap)

    @property
    def total_weight(self) -> float:
        return float(self._state()[1].sum())

    @property
    def grade_weights(self) -> np.ndarray:
        """(9,) summed weight of the kept crops of each grade."""
        return self._state()[1].copy()

    @property
    def grade(self) -> int:
        """The track's grade by ``grade_rule``."""
        by_grade = self._state()[1]
        if self.grade_rule == "dominant":
            return int(np.argmax(by_grade))
        if by_grade[0] >= self.holistic_share * by_grade.sum():
            return 0
        return 1 + int(np.argmax(by_grade[1:]))

    def versions(self) -> np.ndarray:
        """(9, D) float32: each version row's weighted mean, L2-normalised (zero rows stay zero)."""
        if self._versions is False:
            raise ValueError("this track holds plain embeddings: use embedding()")
        return self._normalised(self._state()[0])

    def embedding(self) -> np.ndarray:
        """(D,) float32: the plain aggregate (row 0: for versions, each crop with its own region masked)."""
        return self._normalised(self._state()[0][:1])[0]

    def as_query(self) -> tuple[np.ndarray, int]:
        """(1, 9, D) versions and the track's grade: ``gallery.match(emb, grade=grade)`` or
        ``gallery.add([pid], emb, grades=[grade])``."""
        return self.versions()[None], self.grade

    @staticmethod
    def _normalised(rows: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0).astype(np.float32)
