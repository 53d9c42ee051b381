"""Per-camera grade thresholds for the pipeline: each camera's eq. 8 thresholds follow the median
top grader score of its own recent crops (``grader.adapt_thresholds``), so a camera whose crops
the grader scores higher than the held-out crops it was calibrated on does not grade whole people
as occluded. No labels are needed, only the grader scores the pipeline computes anyway.

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

from .grader import GradeThresholds, adapt_thresholds

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
                f"{path} has no grader_reference_median; calibrate it with tools/calibrate_reid.py"
            )
        return cls(GradeThresholds(*cfg.grade_thresholds), cfg.grader_reference_median, **kwargs)

    def observe(self, camera: Hashable, scores: np.ndarray) -> None:
        """Record the grader scores (N, 4) of crops seen by ``camera``."""
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] != 4:
            raise ValueError(f"scores must be (N, 4) grader outputs, got shape {s.shape}")
        self._scores.setdefault(camera, deque(maxlen=self.window)).extend(s)

    def seen(self, camera: Hashable) -> int:
        return len(self._scores.get(camera, ()))

    def get(self, camera: Hashable) -> GradeThresholds:
        """The camera's thresholds (the calibrated ones until it has ``min_crops`` crops)."""
        recent = self._scores.get(camera)
        if recent is None or len(recent) < self.min_crops:
            return self.base
        return adapt_thresholds(self.base, self.reference_median, np.stack(recent))
