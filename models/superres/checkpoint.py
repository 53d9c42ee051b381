"""Save / load a super-resolution network as a small self-describing file.

File = ``{"format": "amodal-superres/1", "model": ModelConfig, "state_dict": ..., "recipe": ...}``;
``load_superres`` also reads a training checkpoint (``last.pt`` / ``best.pt``, weights under ``net``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model": cfg.model_dump(mode="json"),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **(extra or {}),
    }
    torch.save(payload, path)
    return path


def load_superres(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[SuperResolutionNet, ModelConfig, dict[str, Any]]:
    """(network in eval mode, its config, the whole payload) from a shipped file or a training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"super-resolution weights {path} do not exist")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or "model" not in payload:
        raise ValueError(f"{path} is not a super-resolution file (no 'model' entry)")
    state = payload.get("state_dict", payload.get("net"))
    if state is None:
        raise ValueError(f"{path} has no network weights ('state_dict' or 'net')")
    cfg = ModelConfig(**payload["model"])
    net = build_network(cfg)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval(), cfg, payload
