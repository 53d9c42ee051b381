"""The frozen attribute classifier used by eq. 7 and by the evaluation tables (D's network).

Loaded through ``models.attributes.model.load_attribute_model`` (a self-describing checkpoint:
names, input size, thresholds), or an ``.onnx`` export run through the inference backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.backends import InferenceBackend, create_backend

__all__ = ["FrozenAttributeModel", "load_frozen_attribute_model"]


@dataclass
class FrozenAttributeModel:
    """A classifier plus what is needed to feed it and read its output."""

    module: nn.Module | None
    backend: InferenceBackend
    names: list[str]
    input_size: tuple[int, int]
    thresholds: np.ndarray

    def probabilities(self, images_imagenet: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """(N, 3, H, W) ImageNet-normalised crops -> (N, A) attribute probabilities."""
        out = []
        for start in range(0, len(images_imagenet), batch_size):
            x = images_imagenet[start : start + batch_size]
            if tuple(x.shape[2:]) != self.input_size:
                x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
            logits = next(iter(self.backend(x.float().numpy()).values()))
            out.append(1.0 / (1.0 + np.exp(-logits)))
        return np.concatenate(out) if out else np.zeros((0, len(self.names)), np.float32)

    def scores(self, images_uint8: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """mA / accuracy / precision / recall / F1 of RGB uint8 crops (N, H, W, 3) against
        ``labels`` (N, A), at the model's own thresholds (the paper's Tables 3-6 layout)."""
        from models.attributes.metrics import attribute_metrics

        from .data import to_tensor
        from .losses import to_imagenet

        probs = self.probabilities(to_imagenet(to_tensor(images_uint8)))
        preds = (probs >= self.thresholds[None, :]).astype(np.float32)
        m = attribute_metrics(preds, labels, self.names)
        return {k: m[k] for k in ("mA", "accuracy", "precision", "recall", "f1") if k in m}


def load_frozen_attribute_model(
    path: str | Path, preference: list[str] | None = None
) -> FrozenAttributeModel:
    """D's checkpoint (``load_attribute_model``) -> torch module + backend (torch by default)."""
    from models.attributes.model import load_attribute_model

    module, bundle = load_attribute_model(path)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    h, w = bundle.input_size
    backend = create_backend(
        preference or ["torch"], module=module, input_names=["images"], output_names=["logits"]
    )
    thresholds = np.asarray(bundle.thresholds or [0.5] * len(bundle.attribute_names), np.float32)
    return FrozenAttributeModel(module, backend, list(bundle.attribute_names), (int(h), int(w)), thresholds)
