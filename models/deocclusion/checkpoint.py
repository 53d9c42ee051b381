"""Save / load a generator as a small self-describing file (state dict + the shape to rebuild it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.deocclusion.generator import UNetGenerator
from models.deocclusion.recipe import ModelConfig

__all__ = ["build_generator", "save_generator", "load_generator"]


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "amodal-deocclusion-generator/1",
        "model": cfg.model_dump(mode="json"),
        "state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
        **(extra or {}),
    }
    torch.save(payload, path)
    return path


def load_generator(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[UNetGenerator, ModelConfig, dict]:
    """A shipped generator file or a training checkpoint (``last.pt`` / ``best.pt``), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"generator weights {path} do not exist")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or "model" not in payload:
        raise ValueError(f"{path} is not a de-occlusion generator file (no 'model' entry)")
    if "state_dict" in payload:
        state = payload["state_dict"]
    elif "generator" in payload:
        state = payload["generator"]
    else:
        raise ValueError(f"{path} has no generator weights ('state_dict' or 'generator')")
    cfg = ModelConfig(**payload["model"])
    generator = build_generator(cfg)
    generator.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return generator.eval(), cfg, payload
