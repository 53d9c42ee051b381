"""Per-track aggregation of per-frame attribute probabilities, for the pipeline's describe stage.

A track gives many crops of one person, of very different use: small, blurred, low-confidence or
occluded crops say little. Each frame's probabilities enter a running average weighted by a crop
quality in [0, 1] built from

* size: crop height, ramping from ``min_height`` (weight 0) to ``full_height`` (weight 1) pixels;
* sharpness: variance of the Laplacian v of the grey crop, mapped to v / (v + ``sharpness_half``);
* detector confidence, as given;
* occlusion grade: fraction of the body occluded (OAMN grader), entering as (1 - grade).

The weight is their product (a crop must be good on every count), floored at ``min_weight`` when
positive so a track of only poor crops still gets an answer. Old evidence can be forgotten
(``half_life`` in frames) so a wrong early guess does not stick forever.

Decisions use hysteresis: an attribute turns on when its averaged probability reaches ``t_on`` and
turns off only when it falls to ``t_off`` (< ``t_on``), so it does not flicker around one threshold.
Until ``min_evidence`` total weight has been seen every attribute is "undecided" (None).

API::

    agg = TrackAttributeAggregator(names, AggregationConfig())
    state = agg.update(track_id, probs, CropQuality(height=..., sharpness=..., confidence=..., occlusion=...))
    state.decisions -> {"personalMale": True, ...}; state.probabilities; agg.end(track_id)
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AggregationConfig",
    "CropQuality",
    "TrackAttributeState",
    "TrackAttributeAggregator",
    "laplacian_sharpness",
    "quality_weight",
]

logger = logging.getLogger(__name__)


class AggregationConfig(BaseModel):
    """How per-frame attribute probabilities become per-track decisions."""

    model_config = ConfigDict(extra="forbid")

    t_on: float = Field(0.6, gt=0.0, lt=1.0, description="turn an attribute on when its average reaches this")
    t_off: float = Field(
        0.4, gt=0.0, lt=1.0, description="turn it off again only when the average falls to this"
    )
    min_height: float = Field(32.0, ge=0, description="crop height (px) with zero size weight")
    full_height: float = Field(128.0, gt=0, description="crop height (px) from which size weight is 1")
    sharpness_half: float = Field(100.0, gt=0, description="Laplacian variance giving sharpness weight 0.5")
    min_weight: float = Field(0.01, ge=0, le=1, description="floor for a positive quality weight")
    min_evidence: float = Field(0.5, ge=0, description="total weight needed before any decision is made")
    half_life: float | None = Field(None, gt=0, description="frames after which old evidence counts half")

    @model_validator(mode="after")
    def _check(self) -> AggregationConfig:
        if self.t_off > self.t_on:
            raise ValueError(f"t_off ({self.t_off}) must not exceed t_on ({self.t_on})")
        if self.full_height <= self.min_height:
            raise ValueError(f"full_height ({self.full_height}) must exceed min_height ({self.min_height})")
        return self


@dataclass(frozen=True)
class CropQuality:
    """What is known about one crop; unknown terms (None) count as 1."""

    height: float | None = None
    sharpness: float | None = None
    confidence: float | None = None
    occlusion: float | None = None


def laplacian_sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop (a standard focus / blur measure)."""
    if crop.ndim == 3:
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    if crop.ndim != 2 or crop.size == 0:
        raise ValueError(f"expected an (H, W) or (H, W, 3) crop, got shape {crop.shape}")
    return float(cv2.Laplacian(crop, cv2.CV_64F).var())


def quality_weight(q: CropQuality, cfg: AggregationConfig) -> float:
    """Product of size, sharpness, confidence and visibility terms, each in [0, 1]."""
    w = 1.0
    if q.height is not None:
        w *= float(np.clip((q.height - cfg.min_height) / (cfg.full_height - cfg.min_height), 0.0, 1.0))
    if q.sharpness is not None:
        s = max(0.0, float(q.sharpness))
        w *= s / (s + cfg.sharpness_half)
    if q.confidence is not None:
        w *= float(np.clip(q.confidence, 0.0, 1.0))
    if q.occlusion is not None:
        w *= 1.0 - float(np.clip(q.occlusion, 0.0, 1.0))
    return max(w, cfg.min_weight) if w > 0 else 0.0


@dataclass
class TrackAttributeState:
    """The running state of one track."""

    names: tuple[str, ...]
    weighted_sum: np.ndarray
    weight: float = 0.0
    frames: int = 0
    on: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    decided: bool = False

    @property
    def probabilities(self) -> dict[str, float]:
        """Quality-weighted average probability per attribute (0.5 before any evidence)."""
        avg = self.weighted_sum / self.weight if self.weight > 0 else np.full(len(self.names), 0.5)
        return {n: float(p) for n, p in zip(self.names, avg, strict=True)}

    @property
    def decisions(self) -> dict[str, bool | None]:
        """True / False per attribute with hysteresis; None while evidence is insufficient."""
        if not self.decided:
            return dict.fromkeys(self.names)
        return {n: bool(v) for n, v in zip(self.names, self.on, strict=True)}


class TrackAttributeAggregator:
    """Keeps one ``TrackAttributeState`` per track id; ``update`` per frame, ``end`` when the track ends."""

    def __init__(self, names: Sequence[str], cfg: AggregationConfig | None = None):
        if not names:
            raise ValueError("names must list at least one attribute")
        self.names = tuple(names)
        self.cfg = cfg or AggregationConfig()
        self._tracks: dict[Hashable, TrackAttributeState] = {}

    def __len__(self) -> int:
        return len(self._tracks)

    def get(self, track_id: Hashable) -> TrackAttributeState | None:
        return self._tracks.get(track_id)

    def end(self, track_id: Hashable) -> TrackAttributeState | None:
        """Forget a finished track and return its final state."""
        return self._tracks.pop(track_id, None)

    def update(
        self,
        track_id: Hashable,
        probs: np.ndarray | Sequence[float],
        quality: CropQuality | float | None = None,
    ) -> TrackAttributeState:
        """Add one frame's probabilities (A,) with its crop quality (or a ready weight in [0, 1])."""
        p = np.asarray(probs, np.float64).reshape(-1)
        if p.shape[0] != len(self.names):
            raise ValueError(f"got {p.shape[0]} probabilities for {len(self.names)} attributes")
        if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
            raise ValueError("probabilities must be finite and in [0, 1]")
        if quality is None:
            w = 1.0
        elif isinstance(quality, CropQuality):
            w = quality_weight(quality, self.cfg)
        else:
            w = float(np.clip(quality, 0.0, 1.0))
        state = self._tracks.get(track_id)
        if state is None:
            state = TrackAttributeState(
                self.names, np.zeros(len(self.names)), on=np.zeros(len(self.names), bool)
            )
            self._tracks[track_id] = state
        if self.cfg.half_life is not None:
            decay = 0.5 ** (1.0 / self.cfg.half_life)
            state.weighted_sum *= decay
            state.weight *= decay
        state.weighted_sum += w * p
        state.weight += w
        state.frames += 1
        if state.weight >= self.cfg.min_evidence and state.weight > 0:
            avg = state.weighted_sum / state.weight
            if not state.decided:  # first decision: a plain threshold at the middle of the band
                state.on = avg >= 0.5 * (self.cfg.t_on + self.cfg.t_off)
                state.decided = True
            else:
                state.on = np.where(state.on, avg > self.cfg.t_off, avg >= self.cfg.t_on)
        return state
