"""The sample grid PNG: one row per crop, columns occluded | generated | ground truth."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["save_grid", "save_columns"]


def save_grid(
    path: str | Path, occluded: np.ndarray, generated: np.ndarray, clean: np.ndarray, scale: int = 2
) -> Path:
    """Write (N, H, W, 3) uint8 RGB triplets as a PNG grid (rows = crops) and return the path."""
    if not (occluded.shape == generated.shape == clean.shape) or occluded.ndim != 4:
        raise ValueError(
            f"grid inputs must be equal (N, H, W, 3) arrays, "
            f"got {occluded.shape}, {generated.shape}, {clean.shape}"
        )
    return save_columns(path, [occluded, generated, clean], scale)


def save_columns(path: str | Path, columns: list[np.ndarray], scale: int = 2) -> Path:
    """Write equal (N, H, W, 3) uint8 RGB arrays side by side, one row per crop, as a PNG."""
    if len({c.shape for c in columns}) != 1 or columns[0].ndim != 4:
        raise ValueError(f"grid columns must be equal (N, H, W, 3) arrays, got {[c.shape for c in columns]}")
    first = columns[0]
    gap = np.full((first.shape[1], 2, 3), 255, np.uint8)
    rows = [np.concatenate([x for c in columns for x in (c[i], gap)][:-1], axis=1) for i in range(len(first))]
    hgap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([x for r in rows for x in (r, hgap)][:-1], axis=0)
    if scale > 1:
        grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid[..., ::-1])
    return path
