"""The attribute classifier as the pipeline's describe stage uses it: RGB crops in, probabilities out,
through any inference backend (torch, ONNX Runtime, TensorRT via ``models.backends``).

    predictor = AttributePredictor.from_weights("models/weights/attributes_part_osnet_x0_25.pt")
    probs = predictor(crops)            # (B, A) float32, columns = predictor.names
    agg = TrackAttributeAggregator(predictor.names)  # per track: agg.update(track_id, probs[i], quality)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.data.transforms import resize

from .model import AttributeModelBundle, load_attribute_model

__all__ = ["AttributeExportWrapper", "AttributePredictor", "feature_stride", "preprocess_crops"]

logger = logging.getLogger(__name__)


class AttributeExportWrapper(nn.Module):
    """images (B, 3, H, W) [, masks (B, 1, H, W)] -> (logits, probabilities): the exported graph."""

    def __init__(self, model: nn.Module, with_mask: bool = False, mask_pool: tuple[int, int] | None = None):
        """``mask_pool``: (kh, kw) = input size / feature-map size. With it the image-resolution mask is
        area-pooled here with a constant kernel (an ONNX export cannot take a kernel from traced shapes)."""
        super().__init__()
        self.model = model
        self.with_mask = with_mask
        self.mask_pool = mask_pool

    def forward(
        self, images: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.with_mask and masks is not None and self.mask_pool is not None:
            masks = F.avg_pool2d(masks, self.mask_pool)
        logits = self.model(images, masks if self.with_mask else None)
        return logits, torch.sigmoid(logits)


def feature_stride(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """(kh, kw) from one dummy forward of the backbone: input size / feature-map size."""
    with torch.no_grad():
        fmap = model.backbone.forward_features(torch.zeros(1, 3, *input_size))
    return input_size[0] // fmap.shape[2], input_size[1] // fmap.shape[3]


def preprocess_crops(crops: Sequence[np.ndarray], bundle: AttributeModelBundle) -> np.ndarray:
    """RGB uint8 crops of any size -> (B, 3, H, W) float32 normalised, H, W = the model's input size."""
    if not crops:
        raise ValueError("no crops given")
    h, w = bundle.input_size
    batch = np.stack([resize(c, (h, w)) for c in crops]).astype(np.float32) / 255.0
    batch = (batch - np.asarray(bundle.mean, np.float32)) / np.asarray(bundle.std, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


class AttributePredictor:
    """Crops -> per-attribute probabilities with one model on one backend."""

    def __init__(
        self,
        model: nn.Module,
        bundle: AttributeModelBundle,
        backend_preference: Sequence[str] = ("torch",),
        onnx_path: str | Path | None = None,
        device: str = "cpu",
        with_mask: bool = False,
    ):
        from models.backends import create_backend

        self.bundle = bundle
        self.names = list(bundle.attribute_names)
        self.with_mask = with_mask
        pool = feature_stride(model, tuple(bundle.input_size)) if with_mask else None
        self.module = AttributeExportWrapper(model, with_mask, pool).eval()
        inputs = ["images", "masks"] if with_mask else ["images"]
        self.backend = create_backend(
            list(backend_preference),
            onnx_path=onnx_path,
            module=self.module,
            device=device,
            input_names=inputs,
            output_names=["logits", "probabilities"],
        )

    @classmethod
    def from_weights(cls, weights: str | Path, **kwargs) -> AttributePredictor:
        model, bundle = load_attribute_model(weights)
        return cls(model, bundle, **kwargs)

    def __call__(self, crops: Sequence[np.ndarray], masks: np.ndarray | None = None) -> np.ndarray:
        """(B, A) probabilities for RGB uint8 crops; ``masks`` (B, 1, h, w) only with ``with_mask``."""
        feeds = {"images": preprocess_crops(crops, self.bundle)}
        if self.with_mask:
            if masks is None:
                h, w = self.bundle.input_size
                masks = np.ones((len(crops), 1, h, w), np.float32)
            feeds["masks"] = np.asarray(masks, np.float32)
        elif masks is not None:
            raise ValueError("this predictor was built without a mask input (with_mask=False)")
        return self.backend(feeds)["probabilities"]
