"""Foreground (person) masks for MAN-PAR's hard attention (sec. 3.3), from an ultralytics
segmentation model when one is configured.

MAN-PAR uses Mask R-CNN; here any ultralytics ``*-seg`` model fills that role (YOLO seg weights
are not shipped: a user configures a local file). Without a masker the attribute net multiplies
by ones. The subject of a person crop is taken to be the largest person mask in it; a crop where
the model finds no person gets an all-ones mask (no attention rather than attention on nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["YoloForegroundMasker", "full_masks"]

logger = logging.getLogger(__name__)
PERSON_CLASS = 0  # COCO


def full_masks(batch: int, height: int, width: int) -> np.ndarray:
    """All-ones masks (B, 1, H, W): 'no segmentation available'."""
    return np.ones((batch, 1, height, width), np.float32)


class YoloForegroundMasker:
    """Person masks for RGB crops from an ultralytics segmentation model.

    ``model`` is a local weights path (loaded on first use, never downloaded) or an already built
    ``ultralytics.YOLO`` segmentation model (e.g. ``YOLO("yolo11n-seg.yaml")`` in tests).
    """

    def __init__(self, model: str | Path | Any, conf: float = 0.25, imgsz: int = 160, device: str = "cpu"):
        if isinstance(model, (str, Path)) and not Path(model).is_file():
            raise ValueError(f"segmentation weights {model} not found (nothing is downloaded)")
        self._source = model
        self._model: Any = None if isinstance(model, (str, Path)) else model
        self.conf = conf
        self.imgsz = imgsz
        self.device = device

    def _load(self) -> Any:
        if self._model is None:
            from ultralytics import YOLO

            self._model = YOLO(str(self._source), task="segment")
        if getattr(self._model, "task", "segment") != "segment":
            raise ValueError(f"{self._source}: not a segmentation model (task {self._model.task!r})")
        return self._model

    def __call__(self, crops: Sequence[np.ndarray], size: tuple[int, int] | None = None) -> np.ndarray:
        """(B, 1, H, W) float32 masks in [0, 1]; H, W = ``size`` or the first crop's size."""
        if not crops:
            raise ValueError("no crops given")
        h, w = size if size is not None else crops[0].shape[:2]
        model = self._load()
        bgr = [np.ascontiguousarray(c[..., ::-1]) for c in crops]
        results = model.predict(
            bgr,
            conf=self.conf,
            imgsz=self.imgsz,
            classes=[PERSON_CLASS],
            verbose=False,
            device=self.device,
            retina_masks=True,
        )
        out = full_masks(len(crops), h, w)
        for i, res in enumerate(results):
            if res.masks is None or len(res.masks) == 0:
                continue
            masks = res.masks.data.cpu().numpy()
            best = masks[int(masks.reshape(len(masks), -1).sum(1).argmax())].astype(np.float32)
            out[i, 0] = cv2.resize(best, (w, h), interpolation=cv2.INTER_LINEAR).clip(0, 1)
        return out
