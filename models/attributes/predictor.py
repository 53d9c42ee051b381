"""The attribute classifier as the pipeline's describe stage uses it: crops in, probabilities out,
through any inference backend (torch, ONNX Runtime, TensorRT via ``models.backends``).

    predictor = AttributePredictor.from_config(AttributePredictorConfig(), key="describe.weights")
    probs = predictor.predict_bgr(crops_bgr)  # tracker crops, BGR uint8 (N, h, w, 3) -> (N, A) float32
    probs = predictor(rgb_crops)              # a list of RGB uint8 crops of any size (tools, tests)
    agg = TrackAttributeAggregator(predictor.names)  # per track: agg.update(track_id, probs[i], quality)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from models.backends import BackendConfig
from models.data.transforms import resize
from models.onnx_cache import resolve_onnx
from models.predictor_io import (
    PredictorConfig,
    network_input,
)
from models.weights_path import require_file, sibling_key

from .model import AttributeModelBundle, load_attribute_model

__all__ = [
    "AttributeExportWrapper",
    "AttributePredictor",
    "AttributePredictorConfig",
    "DEFAULT_ATTRIBUTE_WEIGHTS",
    "feature_stride",
    "preprocess_crops",
]

logger = logging.getLogger(__name__)

DEFAULT_ATTRIBUTE_WEIGHTS = "attributes_part_osnet_x0_25.pt"


class AttributePredictorConfig(PredictorConfig):
    """The attribute classifier a stage runs (a block in the stage's config)."""

    weights: str = Field(
        DEFAULT_ATTRIBUTE_WEIGHTS,
        description="attribute checkpoint (amodal train attributes / amodal export attributes --ship): a "
        "path, or the bare name of a file shipped in models/weights/ (research-only PETA weights).",
    )


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
    """Crops -> per-attribute probabilities (B, A) float32 with one model on one backend; columns in
    the order of ``names``."""

    def __init__(
        self,
        model: nn.Module,
        bundle: AttributeModelBundle,
        backend_preference: Sequence[str] = ("torch",),
        onnx_path: str | Path | None = None,
        device: str = "cpu",
        with_mask: bool = False,
        backend: BackendConfig | None = None,
    ):
        """``backend``, when given, replaces ``backend_preference`` and ``device`` (and sets the chunk
        size, ``max_batch``, of one backend call)."""
        from models.backends import create_backend, create_backend_from_config

        self.bundle = bundle
        self.names = list(bundle.attribute_names)
        self.input_size: tuple[int, int] = (int(bundle.input_size[0]), int(bundle.input_size[1]))
        self.with_mask = with_mask
        pool = feature_stride(model, self.input_size) if with_mask else None
        self.module = AttributeExportWrapper(model, with_mask, pool).eval()
        inputs = ["images", "masks"] if with_mask else ["images"]
        outputs = ["logits", "probabilities"]
        if backend is not None:
            self.backend = create_backend_from_config(
                backend, onnx_path=onnx_path, module=self.module, input_names=inputs, output_names=outputs
            )
        else:
            self.backend = create_backend(
                list(backend_preference),
                onnx_path=onnx_path,
                module=self.module,
                device=device,
                input_names=inputs,
                output_names=outputs,
            )
        self._mean = np.asarray(bundle.mean, np.float32)
        self._std = np.asarray(bundle.std, np.float32)

    @classmethod
    def from_weights(cls, weights: str | Path, key: str = "weights", **kwargs) -> AttributePredictor:
        """Load a checkpoint (a path or a shipped file name); a missing one is ``FileNotFoundError``
        naming ``key``. ``kwargs`` go to the constructor."""
        model, bundle = load_attribute_model(require_file(weights, key))
        return cls(model, bundle, **kwargs)

    @classmethod
    def from_config(cls, config: AttributePredictorConfig, key: str = "weights") -> AttributePredictor:
        """``key``: the config key of ``config.weights`` as the stage's config spells it (for errors;
        the ONNX file's key is the sibling ``onnx``)."""
        path = require_file(config.weights, key)
        onnx_key = sibling_key(key, "onnx")
        model, bundle = load_attribute_model(path)
        module = AttributeExportWrapper(model).eval()
        example = [torch.zeros(2, 3, *bundle.input_size)]
        onnx_path = resolve_onnx(
            config.onnx,
            onnx_key,
            path,
            module,
            example,
            ["images"],
            ["logits", "probabilities"],
            config.backend.names,
        )
        return cls(model, bundle, onnx_path=onnx_path, backend=config.backend)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def thresholds(self) -> np.ndarray | None:
        """Per-attribute decision thresholds (A,) float32 stored in the checkpoint; None when it has
        none (then 0.5, or the aggregator's own hysteresis, applies)."""
        if self.bundle.thresholds is None:
            return None
        return np.asarray(self.bundle.thresholds, dtype=np.float32)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, len(self.names)), dtype=np.float32)

    def _run(self, images: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        feeds = {"images": images}
        if self.with_mask:
            if masks is None:
                masks = np.ones((len(images), 1, *self.input_size), np.float32)
            feeds["masks"] = np.asarray(masks, np.float32)
        elif masks is not None:
            raise ValueError("this predictor was built without a mask input (with_mask=False)")
        return np.asarray(self.backend(feeds)["probabilities"], dtype=np.float32)

    def __call__(self, crops: Sequence[np.ndarray], masks: np.ndarray | None = None) -> np.ndarray:
        """(B, A) probabilities for RGB uint8 crops of any size; ``masks`` (B, 1, h, w) only with
        ``with_mask``. No crops -> (0, A)."""
        if len(crops) == 0:
            return self._empty()
        return self._run(preprocess_crops(crops, self.bundle), masks)

    def prepare_bgr(self, crops_bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 (N, h, w, 3) -> the network input: RGB float32 (N, 3, H, W), resized and
        normalised with the checkpoint's mean and std."""
        return network_input(crops_bgr, self.input_size, self._mean, self._std)

    def predict_bgr(self, crops_bgr: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """(N, A) float32 probabilities for tracker crops, BGR uint8 (N, h, w, 3); N = 0 -> (0, A)."""
        x = self.prepare_bgr(crops_bgr)
        if len(x) == 0:
            return self._empty()
        return self._run(x, masks)
