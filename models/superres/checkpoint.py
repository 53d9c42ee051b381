"""Save / load a super-resolution network as a small self-describing file.

File = ``{"format": "amodal-superres/1", "model": ModelConfig, "state_dict": ..., "recipe": ...}``;
``load_superres`` also reads a training checkpoint (``last.pt`` / ``best.pt``, weights under ``net``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.model_file import as_float, cpu_state, read_model_file, weights_in, write_model_file
from models.superres.network import SuperResolutionNet
from models.superres.recipe import ModelConfig

__all__ = ["FORMAT", "build_network", "save_superres", "load_superres"]

FORMAT = "amodal-superres/1"


def build_network(cfg: ModelConfig) -> SuperResolutionNet:
    """The network ``cfg`` describes (freshly initialised: equal to plain interpolation)."""
    return SuperResolutionNet(
        scale=cfg.scale, channels=cfg.channels, blocks=cfg.blocks, res_scale=cfg.res_scale, skip=cfg.skip
    )


def save_superres(
    path: str | Path, net: SuperResolutionNet, cfg: ModelConfig, extra: dict[str, Any] | None = None
) -> Path:
    """Write the weights, the config that rebuilds them and ``extra`` (recipe, step, validation)."""
    return write_model_file(path, FORMAT, cfg, {"state_dict": cpu_state(net)}, extra)


def load_superres(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[SuperResolutionNet, ModelConfig, dict[str, Any]]:
    """(network in eval mode, its config, the whole payload) from a shipped file or a training checkpoint."""
    payload = read_model_file(path, "super-resolution", map_location)
    state = weights_in(payload, ("state_dict", "net"), path)
    cfg = ModelConfig(**payload["model"])
    net = build_network(cfg)
    net.load_state_dict(as_float(state), strict=True)
    return net.eval(), cfg, payload
