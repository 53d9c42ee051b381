"""OAMN as the pipeline's grade / identify stages use it: tracker crops in, ReID embeddings and
occlusion-grader scores out, from one forward pass through any inference backend.

    predictor = ReidPredictor.from_config(ReidPredictorConfig(), key="grade.weights")
    embeddings, scores = predictor(crops_bgr)   # (N, 512) unit-norm float32, (N, 5) float32
    grades = predictor.grades(scores)           # (N,) int64, 0 = holistic (eq. 8, checkpoint thresholds)
    gallery = OcclusionGallery(predictor.embedding_dim, 5000, predictor.encoder,
                               thresholds=predictor.thresholds, offsets=predictor.offsets)
    gallery.add(ids, predictor.prepare(crops_bgr))
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from models.backbones import IMAGENET_MEAN, IMAGENET_STD
from models.backends import BackendConfig, InferenceBackend, create_backend_from_config
from models.onnx_cache import resolve_onnx
from models.predictor_io import (
    PredictorConfig,
    network_input,
)
from models.weights_path import require_file, sibling_key

from .config import OAMNModelConfig
from .grader import GradeThresholds, decide_grades
from .oamn import OAMNInference, load_oamn

__all__ = ["ReidPredictor", "ReidPredictorConfig", "DEFAULT_REID_WEIGHTS", "REID_OUTPUTS"]

logger = logging.getLogger(__name__)

DEFAULT_REID_WEIGHTS = "oamn_osnet_x0_25_market.pt"
#: output names of the exported graph (``amodal export reid``): L2-normalised embedding, grader scores
REID_OUTPUTS = ("embedding", "grade")
#: grader output columns: four location scores, then the visible fraction (``grader.VISIBLE``)
GRADER_COLUMNS = 5


class ReidPredictorConfig(PredictorConfig):
    """The ReID + occlusion-grader network a stage runs (a block in the stage's config)."""

    weights: str = Field(
        DEFAULT_REID_WEIGHTS,
        description="OAMN checkpoint (amodal train reid / amodal calibrate-reid): a path, or the bare name "
        "of a file shipped in models/weights/ (research-only Market-1501 weights by default).",
    )


class ReidPredictor:
    """BGR uint8 crops (N, h, w, 3) -> (L2-normalised embeddings (N, D), grader scores (N, 5)), float32.

    ``encoder`` is the same network as a ``models.reid.encoder.Encoder`` (normalised network input ->
    (embeddings, scores)), for ``OcclusionGallery``'s masked unification versions.
    """

    def __init__(
        self,
        weights: str | Path = DEFAULT_REID_WEIGHTS,
        backend: BackendConfig | None = None,
        onnx: str | Path | None = None,
        key: str = "weights",
    ):
        """``weights``: checkpoint path or shipped file name; ``key``: its config key, used in errors
        (a missing file is ``FileNotFoundError``; the ONNX file's key is the sibling ``onnx``)."""
        path = require_file(weights, key)
        onnx_key = sibling_key(key, "onnx")
        model, cfg = load_oamn(path)
        backend = backend or BackendConfig()
        module = OAMNInference(model).eval()
        example = [torch.zeros(2, 3, *cfg.input_size)]
        onnx_path = resolve_onnx(
            onnx, onnx_key, path, module, example, ["images"], list(REID_OUTPUTS), backend.names
        )
        self.weights: Path = path
        self.model_config: OAMNModelConfig = cfg
        self.input_size: tuple[int, int] = (int(cfg.input_size[0]), int(cfg.input_size[1]))
        self.embedding_dim = int(model.embedding_dim)
        #: eq. 8 thresholds calibrated on held-out identities when the checkpoint was trained
        self.thresholds = cfg.thresholds()
        #: median top grader score of those held-out crops (``grader.adapt_thresholds``); None = not stored
        self.reference_median: float | None = cfg.grader_reference_median
        #: (9, 9) similarity offsets of unified matching; None = the paper's raw similarities
        self.offsets: np.ndarray | None = (
            None if cfg.similarity_offsets is None else np.asarray(cfg.similarity_offsets, dtype=np.float32)
        )
        self.backend: InferenceBackend = create_backend_from_config(
            backend,
            onnx_path=onnx_path,
            module=module,
            input_names=["images"],
            output_names=list(REID_OUTPUTS),
        )
        self._mean = np.asarray(IMAGENET_MEAN, np.float32)
        self._std = np.asarray(IMAGENET_STD, np.float32)
        logger.info(
            "ReID predictor %s: %dx%d input, %d-d embedding, backend %s",
            path.name,
            *self.input_size,
            self.embedding_dim,
            self.backend.name,
        )

    @classmethod
    def from_config(cls, config: ReidPredictorConfig, key: str = "weights") -> ReidPredictor:
        """``key``: the config key of ``config.weights`` as the stage's config spells it (for errors)."""
        return cls(config.weights, backend=config.backend, onnx=config.onnx, key=key)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def encoder(self):
        """``models.reid.encoder.Encoder``: normalised (N, 3, H, W) -> (embeddings, scores)."""
        return self.encode

    def prepare(self, crops_bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 (N, h, w, 3) -> the network input: RGB float32 (N, 3, H, W), resized and
        normalised with the ImageNet mean and std."""
        return network_input(crops_bgr, self.input_size, self._mean, self._std)

    def encode(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Normalised network input (N, 3, H, W) -> (unit-norm embeddings (N, D), scores (N, 5))."""
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        x = np.asarray(images, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, *self.input_size):
            raise ValueError(
                f"images must be (N, 3, {self.input_size[0]}, {self.input_size[1]}) network input, "
                f"got shape {x.shape}"
            )
        if len(x) == 0:
            return (
                np.zeros((0, self.embedding_dim), dtype=np.float32),
                np.zeros((0, GRADER_COLUMNS), dtype=np.float32),
            )
        out = self.backend(x)
        emb = np.asarray(out[REID_OUTPUTS[0]], dtype=np.float32)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb.astype(np.float32, copy=False), np.asarray(out[REID_OUTPUTS[1]], dtype=np.float32)

    def __call__(self, crops_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BGR uint8 crops (N, h, w, 3) -> (embeddings (N, D) unit-norm, scores (N, 5)), float32."""
        return self.encode(self.prepare(crops_bgr))

    def grades(self, scores: np.ndarray, thresholds: GradeThresholds | None = None) -> np.ndarray:
        """(N,) int64 grade indices (0 = holistic) by eq. 8, with the checkpoint's thresholds unless
        ``thresholds`` (e.g. ``grader.adapt_thresholds`` for one camera) is given."""
        return decide_grades(scores, thresholds or self.thresholds)

    def __repr__(self) -> str:
        return (
            f"ReidPredictor(weights={str(self.weights)!r}, input_size={self.input_size}, "
            f"backend={self.backend!r})"
        )
