"""The de-occlusion generator as the pipeline's deocclude stage uses it: tracker crops in, restored
crops of the same size out, through any inference backend.

    predictor = DeocclusionPredictor.from_config(DeocclusionPredictorConfig(), key="deocclude.weights")
    restored = predictor(crops_bgr)     # BGR uint8, same (N, h, w, 3) as the input

The generator runs at its fixed size (``image_size``, 128x64 for the shipped files): crops are
resized down to it and the output back up. A U-Net file's restored crop carries the generator's
resolution everywhere; a two-stage file (``two_stage.py``) also returns the region it restored, and
only that region is taken from it: the rest of the crop keeps its own pixels at full resolution.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from models.backends import BackendConfig, InferenceBackend, create_backend_from_config
from models.onnx_cache import resolve_onnx
from models.predictor_io import PredictorConfig, check_crop_batch, resize_batch
from models.weights_path import require_file, sibling_key

from .checkpoint import load_generator
from .recipe import ModelConfig
from .two_stage import TwoStageDeoccluder, is_two_stage, two_stage_from
from .two_stage_recipe import TwoStageModelConfig

__all__ = ["DeocclusionPredictor", "DeocclusionPredictorConfig", "DEFAULT_DEOCCLUSION_WEIGHTS"]

logger = logging.getLogger(__name__)

DEFAULT_DEOCCLUSION_WEIGHTS = "deocclusion_two_stage_market.pt"
#: names of the exported graph (``amodal export deocclusion``): RGB in [-1, 1] in and out
INPUT_NAME, OUTPUT_NAME = "images", "generated"
#: a two-stage graph's second output: the region it restored, (N, 1, H, W) in {0, 1}
REGION_NAME = "region"


class TwoStageExport(torch.nn.Module):
    """A two-stage de-occluder with the restored region as a second output (the predictor composites
    at the crop's own resolution with it)."""

    def __init__(self, model: TwoStageDeoccluder):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.infer(images)
        return out["restored"], out["region"]


def load_deoccluder(path: str | Path) -> tuple[torch.nn.Module, ModelConfig | TwoStageModelConfig, list[str]]:
    """Either kind of file as the backends run it: (module in eval mode, its config, output names):
    a U-Net generator (``generated``) or a two-stage file (``generated``, ``region``)."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if is_two_stage(payload):
        model, cfg = two_stage_from(payload, path)
        return TwoStageExport(model).eval(), cfg, [OUTPUT_NAME, REGION_NAME]
    generator, cfg, _ = load_generator(path)
    return generator, cfg, [OUTPUT_NAME]


class DeocclusionPredictorConfig(PredictorConfig):
    """The de-occlusion generator a stage runs (a block in the stage's config)."""

    weights: str = Field(
        DEFAULT_DEOCCLUSION_WEIGHTS,
        description="de-occluder file: a two-stage file (amodal train two-stage) or a U-Net "
        "generator (amodal train deocclusion); a path, or the bare name of a file shipped in "
        "models/weights/ (research-only Market-1501 weights by default).",
    )


class DeocclusionPredictor:
    """BGR uint8 crops (N, h, w, 3) -> restored BGR uint8 crops of the same shape."""

    def __init__(
        self,
        weights: str | Path = DEFAULT_DEOCCLUSION_WEIGHTS,
        backend: BackendConfig | None = None,
        onnx: str | Path | None = None,
        key: str = "weights",
    ):
        """``weights``: generator path or shipped file name; ``key``: its config key, used in errors
        (a missing file is ``FileNotFoundError``; the ONNX file's key is the sibling ``onnx``)."""
        path = require_file(weights, key)
        onnx_key = sibling_key(key, "onnx")
        backend = backend or BackendConfig()
        module, cfg, outputs = load_deoccluder(path)
        #: True for a two-stage file: it restores a region of its own choosing and keeps the rest
        self.composites: bool = REGION_NAME in outputs
        if getattr(cfg, "num_attributes", 0):
            raise ValueError(
                f"{key} '{weights}' is an attribute-conditioned generator ({cfg.num_attributes} "
                "attributes); the predictor runs unconditioned generators only"
            )
        self.weights: Path = path
        self.model_config: ModelConfig | TwoStageModelConfig = cfg
        #: (height, width) the generator runs at
        self.image_size: tuple[int, int] = (int(cfg.image_size[0]), int(cfg.image_size[1]))
        onnx_path = resolve_onnx(
            onnx,
            onnx_key,
            path,
            module,
            [torch.zeros(2, 3, *self.image_size)],
            [INPUT_NAME],
            outputs,
            backend.names,
        )
        self.backend: InferenceBackend = create_backend_from_config(
            backend,
            onnx_path=onnx_path,
            module=module,
            input_names=[INPUT_NAME],
            output_names=outputs,
        )
        logger.info(
            "de-occlusion predictor %s (%s): %dx%d, backend %s",
            path.name,
            "two-stage" if self.composites else "U-Net",
            *self.image_size,
            self.backend.name,
        )

    @classmethod
    def from_config(cls, config: DeocclusionPredictorConfig, key: str = "weights") -> DeocclusionPredictor:
        """``key``: the config key of ``config.weights`` as the stage's config spells it (for errors)."""
        return cls(config.weights, backend=config.backend, onnx=config.onnx, key=key)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def generate(self, images: np.ndarray) -> np.ndarray:
        """The generator itself: RGB float32 (N, 3, H, W) in [-1, 1] at ``image_size`` -> the same."""
        return self.outputs(images)[OUTPUT_NAME]

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name (``generated``; two-stage files add ``region``) for ``generate``'s input."""
        x = np.asarray(images, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, *self.image_size):
            raise ValueError(
                f"images must be (N, 3, {self.image_size[0]}, {self.image_size[1]}) in [-1, 1], "
                f"got shape {x.shape}"
            )
        if len(x) == 0:
            empty = {OUTPUT_NAME: np.zeros_like(x)}
            return {**empty, REGION_NAME: np.zeros_like(x[:, :1])} if self.composites else empty
        return {k: np.asarray(v, dtype=np.float32) for k, v in self.backend(x).items()}

    def __call__(self, crops_bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 (N, h, w, 3) -> restored BGR uint8 (N, h, w, 3)."""
        crops = check_crop_batch(crops_bgr)
        if len(crops) == 0:
            return np.zeros_like(crops)
        small = resize_batch(crops, self.image_size)[..., ::-1]  # BGR -> RGB
        x = np.ascontiguousarray(small.transpose(0, 3, 1, 2), dtype=np.float32) / 127.5 - 1.0
        out = self.outputs(x)
        rgb = np.rint((np.clip(out[OUTPUT_NAME], -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
        bgr = np.ascontiguousarray(rgb.transpose(0, 2, 3, 1)[..., ::-1])
        restored = resize_batch(bgr, crops.shape[1:3])
        if not self.composites:
            return restored
        # the region back at the crop's size (soft at its rim): the crop's own pixels elsewhere
        region = (out[REGION_NAME][:, 0] * 255).astype(np.uint8)[..., None].repeat(3, axis=3)
        alpha = resize_batch(np.ascontiguousarray(region), crops.shape[1:3]).astype(np.float32) / 255.0
        mixed = crops.astype(np.float32) * (1.0 - alpha) + restored.astype(np.float32) * alpha
        return np.rint(mixed).astype(np.uint8)

    def __repr__(self) -> str:
        return (
            f"DeocclusionPredictor(weights={str(self.weights)!r}, image_size={self.image_size}, "
            f"backend={self.backend!r})"
        )
