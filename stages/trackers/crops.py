"""Cut fixed-size person crops out of a frame.

Boxes are padded by a fraction of their size on every side (context helps ReID and attribute
models, and a detector box often clips feet and hair), clipped to the frame, then either
``resize``d (stretched to the output size: what ReID/attribute nets trained on 256x128 crops such
as OSNet or the PETA models expect) or ``letterbox``ed (aspect ratio kept, the rest filled with
gray 114 like YOLO's letterbox). A box entirely outside the frame, or a row the caller masks out,
gives an all-zero crop, so crops stay aligned one-to-one with the tracks.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

__all__ = ["cut_crops", "CropMode"]

CropMode = Literal["resize", "letterbox"]
_FILL = 114


def cut_crops(
    image: np.ndarray,
    xyxy: np.ndarray,
    size: tuple[int, int],
    padding: float = 0.0,
    mode: CropMode = "resize",
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Return uint8 (N, h, w, 3) crops of ``image`` for boxes ``xyxy`` (N, 4); ``size`` is (h, w)."""
    out_h, out_w = size
    crops = np.zeros((len(xyxy), out_h, out_w, 3), np.uint8)
    if not len(xyxy):
        return crops
    img_h, img_w = image.shape[:2]
    boxes = np.asarray(xyxy, np.float32)
    pad_w = (boxes[:, 2] - boxes[:, 0]) * padding
    pad_h = (boxes[:, 3] - boxes[:, 1]) * padding
    x1 = np.clip(np.floor(boxes[:, 0] - pad_w), 0, img_w).astype(np.int32)
    y1 = np.clip(np.floor(boxes[:, 1] - pad_h), 0, img_h).astype(np.int32)
    x2 = np.clip(np.ceil(boxes[:, 2] + pad_w), 0, img_w).astype(np.int32)
    y2 = np.clip(np.ceil(boxes[:, 3] + pad_h), 0, img_h).astype(np.int32)
    for i in range(len(boxes)):
        if (keep is not None and not keep[i]) or x2[i] <= x1[i] or y2[i] <= y1[i]:
            continue
        region = image[y1[i] : y2[i], x1[i] : x2[i]]
        if mode == "resize":
            crops[i] = _resize(region, out_w, out_h)
        else:
            _letterbox_into(region, crops[i])
    return crops


def _resize(region: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = region.shape[0] > height or region.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(region, (width, height), interpolation=interpolation)


def _letterbox_into(region: np.ndarray, out: np.ndarray) -> None:
    out_h, out_w = out.shape[:2]
    scale = min(out_h / region.shape[0], out_w / region.shape[1])
    new_w = max(1, min(out_w, round(region.shape[1] * scale)))
    new_h = max(1, min(out_h, round(region.shape[0] * scale)))
    out[:] = _FILL
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    out[top : top + new_h, left : left + new_w] = _resize(region, new_w, new_h)
