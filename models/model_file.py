"""The one shape every model file of ours has, and the code that writes and reads it.

A model file is a ``torch.save``d dict: ``format`` (a name with a version, e.g.
``amodal-superres/1``), ``model`` (the config that rebuilds the network), one or more state dicts
(``state_dict``; the two-stage file has ``masks`` and ``content``) and whatever the writer adds
(recipe, step, validation figures). Training checkpoints (``last.pt`` / ``best.pt``) share the shape,
so a loader reads either.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

__all__ = ["MissingModelFile", "cpu_state", "write_model_file", "read_model_file", "weights_in", "as_float"]


class MissingModelFile(FileNotFoundError, ValueError):
    """A weights path that is not a file: a missing file (config error in a stage), and a ValueError
    like every other unreadable model file."""


def cpu_state(module: nn.Module, half: bool = False) -> dict[str, torch.Tensor]:
    """``module``'s state dict on the CPU, detached; ``half`` stores float tensors as float16."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    return {k: v.half() if half and v.is_floating_point() else v for k, v in state.items()}


def write_model_file(
    path: str | Path,
    format_name: str,
    model: BaseModel,
    states: Mapping[str, dict[str, torch.Tensor]],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{"format", "model", **states, **extra}`` to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"format": format_name, "model": model.model_dump(mode="json"), **states, **(extra or {})}, path
    )
    return path


def read_model_file(path: str | Path, what: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The contents of a model file: ``what`` (e.g. "super-resolution") names it in errors.

    Raises MissingModelFile when ``path`` is not a file, ValueError when it holds no ``model`` entry.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingModelFile(f"{what} weights {path} do not exist")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or "model" not in payload:
        raise ValueError(f"{path} is not a {what} file (no 'model' entry)")
    return payload


def weights_in(
    payload: Mapping[str, Any], keys: tuple[str, ...], source: str | Path
) -> dict[str, torch.Tensor]:
    """The first of ``keys`` the file holds (a shipped file's ``state_dict``, a checkpoint's own key)."""
    for key in keys:
        if key in payload:
            return payload[key]
    raise ValueError(f"{source} has no network weights ({' or '.join(repr(k) for k in keys)})")


def as_float(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float tensors (stored as float16 or not) as float32; integer buffers as they are."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
