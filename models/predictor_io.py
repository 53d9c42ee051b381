"""What every predictor (``models/*/predictor.py``) shares: batches of person crops as the tracker
emits them (BGR uint8 ``(N, h, w, 3)``, one size per batch), validated once and resized to the
network's input size, and the start-up check that an ONNX file fits the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.backends import BackendConfig, OnnxRuntime, TensorRTRuntime, TorchRuntime
from models.data.transforms import resize

__all__ = ["PredictorConfig", "check_crop_batch", "resize_batch", "network_input", "check_onnx_image_size"]


class PredictorConfig(BaseModel):
    """What every predictor block in a stage's config has besides ``weights`` (each family adds that,
    with its shipped default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: BackendConfig = Field(
        default_factory=lambda: BackendConfig(
            preference=[TensorRTRuntime(), OnnxRuntime(threads=1), TorchRuntime()]
        ),
        description="Inference runtime, in order of preference; max_batch is the chunk size of one call. "
        "ONNX Runtime gets 1 thread by default, since the graph's stages share the cores.",
    )
    onnx: str | None = Field(
        "auto",
        description="ONNX file for ONNX Runtime / TensorRT: 'auto' exports these weights once into the "
        "cache (~/.cache/amodal/onnx, or $AMODAL_CACHE); a path names an export (amodal export ...); "
        "null = torch only.",
    )


def check_crop_batch(crops: np.ndarray, what: str = "crops") -> np.ndarray:
    """``crops`` if it is a BGR uint8 (N, h, w, 3) array with h, w > 0 (N may be 0), else ValueError."""
    if not isinstance(crops, np.ndarray):
        raise ValueError(f"{what} must be a BGR uint8 np.ndarray (N, h, w, 3), got {type(crops).__name__}")
    if crops.ndim != 4 or crops.shape[3] != 3:
        raise ValueError(f"{what} must be a BGR uint8 array (N, h, w, 3), got shape {crops.shape}")
    if crops.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (BGR), got {crops.dtype}")
    if crops.shape[1] == 0 or crops.shape[2] == 0:
        raise ValueError(f"{what} must have a positive height and width, got shape {crops.shape}")
    return crops


def network_input(
    crops_bgr: np.ndarray, size_hw: Sequence[int], mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """BGR uint8 (N, h, w, 3) -> RGB float32 (N, 3, H, W), resized and normalised with ``mean`` and
    ``std`` (per channel, on the 0..1 scale): what the ReID and attribute networks take."""
    crops = check_crop_batch(crops_bgr)
    if len(crops) == 0:
        return np.zeros((0, 3, int(size_hw[0]), int(size_hw[1])), dtype=np.float32)
    rgb = resize_batch(crops, size_hw)[..., ::-1].astype(np.float32)
    x = (rgb / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def resize_batch(crops: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """(N, h, w, C) uint8 -> (N, H, W, C): area interpolation when shrinking, linear when enlarging
    (``models.data.transforms.resize``); the batch itself when it already has that size."""
    h, w = int(size_hw[0]), int(size_hw[1])
    if crops.shape[1:3] == (h, w):
        return crops
    out = np.empty((len(crops), h, w, crops.shape[3]), dtype=crops.dtype)
    for i, crop in enumerate(crops):
        out[i] = resize(np.ascontiguousarray(crop), (h, w))
    return out


def check_onnx_image_size(
    onnx_path: str | Path, size_hw: Sequence[int], key: str, weights: str | Path
) -> None:
    """ValueError (naming ``key``) when the ONNX graph's first input has a fixed image size other than
    ``size_hw``, the size the checkpoint ``weights`` was trained at: a config error at start-up rather
    than a runtime error on the first batch."""
    from models.backends.export import onnx_io_spec

    inputs, _ = onnx_io_spec(onnx_path)
    dims = next(iter(inputs.values()), [])
    fixed = [d for d in dims[2:] if isinstance(d, int) and d > 0]
    if len(dims) == 4 and len(fixed) == 2 and tuple(fixed) != tuple(int(v) for v in size_hw):
        raise ValueError(
            f"{key} '{onnx_path}' takes {fixed[0]}x{fixed[1]} images but the weights "
            f"'{weights}' were trained at {size_hw[0]}x{size_hw[1]}; export it from these weights"
        )
