"""Save / load a generator as a small self-describing file (state dict + the shape to rebuild it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.deocclusion.generator import UNetGenerator
from models.deocclusion.recipe import ModelConfig
from models.model_file import as_float, cpu_state, read_model_file, weights_in, write_model_file

__all__ = ["FORMAT", "build_generator", "save_generator", "load_generator"]

FORMAT = "amodal-deocclusion-generator/1"


def build_generator(cfg: ModelConfig) -> UNetGenerator:
    return UNetGenerator(
        base_channels=cfg.base_channels,
        image_size=tuple(cfg.image_size),
        num_attributes=cfg.num_attributes,
        attribute_channels=cfg.attribute_channels,
        upsample=cfg.upsample,
        residual=cfg.residual,
    )


def save_generator(
    path: str | Path, generator: UNetGenerator, cfg: ModelConfig, extra: dict[str, Any] | None = None
) -> Path:
    """``{"format": "amodal-deocclusion-generator/1", "model": cfg, "state_dict": ..., **extra}``."""
    return write_model_file(path, FORMAT, cfg, {"state_dict": cpu_state(generator)}, extra)


def load_generator(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[UNetGenerator, ModelConfig, dict]:
    """A shipped generator file or a training checkpoint (``last.pt`` / ``best.pt``), in eval mode."""
    payload = read_model_file(path, "de-occlusion generator", map_location)
    state = weights_in(payload, ("state_dict", "generator"), path)
    cfg = ModelConfig(**payload["model"])
    generator = build_generator(cfg)
    generator.load_state_dict(as_float(state), strict=True)
    return generator.eval(), cfg, payload
