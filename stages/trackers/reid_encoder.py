"""BoT-SORT's appearance model through our own ReID network and backend layer.

ultralytics' BoT-SORT loads its ReID model with its own loader, which reads neither this project's
OAMN checkpoints nor torchreid weights (it failed on the first frame with both). It only needs a
callable ``encoder(image, dets) -> [embedding per detection]`` with ``dets[:, :4]`` the boxes as
centre x, centre y, width, height; this is that callable, on a ``ReidPredictor`` (so ONNX Runtime /
TensorRT / torch as configured) and the tracker's own crop rule.
"""

from __future__ import annotations

import numpy as np

from models.reid.predictor import ReidPredictor
from stages.trackers.crops import cut_crops

__all__ = ["TrackerReidEncoder"]


class TrackerReidEncoder:
    """``(image BGR (H, W, 3), dets (N, >=4) centre-xywh) -> list of N unit-norm embeddings``."""

    def __init__(self, predictor: ReidPredictor, padding: float = 0.1) -> None:
        self.predictor = predictor
        self.padding = padding

    def __call__(self, image: np.ndarray, dets: np.ndarray) -> list[np.ndarray]:
        boxes = np.asarray(dets, np.float32)[:, :4].reshape(-1, 4)
        if not len(boxes):
            return []
        xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], axis=1)
        crops = cut_crops(image, xyxy, self.predictor.input_size, self.padding)
        embeddings, _ = self.predictor(crops)
        return list(embeddings)
