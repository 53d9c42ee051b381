"""Per-camera grade thresholds for the pipeline: each camera's eq. 8 thresholds follow the median
visible fraction (``visibility`` grader) or top grader score (the paper's grader) of its own recent
crops (``grader.adapt_thresholds``), so a camera whose crops the grader scores differently from the
held-out crops it was calibrated on does not grade whole people as occluded. No labels are needed,
only the grader output (N, 5) the pipeline computes anyway.

    cameras = CameraThresholds.from_weights("models/weights/oamn_osnet_x0_25_peta.pt")
    emb, scores = encoder(crops)
    cameras.observe("cam-3", scores)
    gallery.match(crops, thresholds=cameras.get("cam-3"))
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from pathlib import Path

import numpy as np

from .grader import VISIBLE, GradeThresholds, adapt_thresholds
from .occlusion_augment import LOCATIONS

__all__ = ["CameraThresholds"]


class CameraThresholds:
    """Adapted thresholds per camera from a window of its last ``window`` crops' scores; a
    camera with fewer than ``min_crops`` crops seen gets the calibrated ``base`` thresholds."""

    def __init__(
        self, base: GradeThresholds, reference_median: float, window: int = 1000, min_crops: int = 100
    ):
        if window <= 0 or not 0 < min_crops <= window:
            raise ValueError(f"need 0 < min_crops <= window, got min_crops={min_crops}, window={window}")
        if not 0.0 <= reference_median <= 1.0:
            raise ValueError(f"reference_median must be a score in [0, 1], got {reference_median}")
        self.base, self.reference_median = base, reference_median
        self.window, self.min_crops = window, min_crops
        self._scores: dict[Hashable, deque[np.ndarray]] = {}

    @classmethod
    def from_weights(cls, path: str | Path, **kwargs) -> CameraThresholds:
        """From an OAMN checkpoint's calibration (``grade_thresholds``, ``grader_reference_median``)."""
        from .oamn import load_oamn

        _, cfg = load_oamn(path)
        if cfg.grader_reference_median is None:
            raise ValueError(
                f"{path} has no grader_reference_median; calibrate it with amodal calibrate-reid"
            )
        return cls(cfg.thresholds(), cfg.grader_reference_median, **kwargs)

    def observe(self, camera: Hashable, scores: np.ndarray) -> None:
        """Record the grader output of crops seen by ``camera`` as it is: (N, 5) (four location scores
        and the visible fraction, ``grader.VISIBLE``; ``adapt_thresholds`` moves ``visible`` by it) or a
        legacy grader's (N, 4). A camera whose output width changes starts a new window (the two do
        not mix)."""
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] not in (len(LOCATIONS), VISIBLE + 1):
            raise ValueError(
                f"scores must be (N, {len(LOCATIONS)}) or (N, {VISIBLE + 1}) grader outputs, "
                f"got shape {s.shape}"
            )
        recent = self._scores.get(camera)
        if recent is None or (len(recent) and len(recent[0]) != s.shape[1]):
            recent = self._scores[camera] = deque(maxlen=self.window)
        recent.extend(s)

    def seen(self, camera: Hashable) -> int:
        return len(self._scores.get(camera, ()))

    def get(self, camera: Hashable) -> GradeThresholds:
        """The camera's thresholds (the calibrated ones until it has ``min_crops`` crops)."""
        recent = self._scores.get(camera)
        if recent is None or len(recent) < self.min_crops:
            return self.base
        return adapt_thresholds(self.base, self.reference_median, np.stack(recent))
