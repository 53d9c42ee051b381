"""What every backbone shares: the input convention, stage bookkeeping, split and strict loading."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "load_state_dict_strict"]

logger = logging.getLogger(__name__)

# Inputs are RGB float tensors in [0, 1] normalised per channel with these (torchreid's and
# torchvision's convention; the shared OSNet weights were trained with it).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class: a backbone is an ordered list of named stages (each an ``nn.Module`` attribute).

    ``forward_features`` runs them all and returns the last feature map (no pooling); ``split``
    cuts the stage list in two so a network (e.g. OAMN's E^I / E^II) can put a module between them.
    The two halves share parameters with the backbone.
    """

    stage_names: list[str]
    #: state-dict prefixes that a weight file may carry but this backbone does not use
    ignored_prefixes: tuple[str, ...] = ()

    def stages(self) -> list[nn.Module]:
        return [getattr(self, self._stage_attr(n)) for n in self.stage_names]

    def _stage_attr(self, name: str) -> str:
        return name

    @property
    def out_channels(self) -> int:
        return self.stage_channels(self.stage_names[-1])

    def stage_channels(self, at: str) -> int:
        self._check_stage(at)
        return self._stage_out_channels[at]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def split(self, at: str) -> tuple[nn.Module, nn.Module]:
        """Lower part = stages up to and including ``at``; higher part = the stages after it.

        Splitting at the last stage gives an empty (identity) higher part.
        """
        self._check_stage(at)
        idx = self.stage_names.index(at) + 1
        mods = self.stages()
        return nn.Sequential(*mods[:idx]), nn.Sequential(*mods[idx:])

    def _check_stage(self, at: str) -> None:
        if at not in self.stage_names:
            raise ValueError(f"unknown stage {at!r}; expected one of {self.stage_names}")

    def load_weights(self, path: str | Path) -> None:
        load_state_dict_strict(self, path, self.ignored_prefixes)

    _stage_out_channels: dict[str, int]


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_strict(module: nn.Module, path: str | Path, ignored_prefixes: Sequence[str] = ()) -> None:
    """Load a local weight file; every key must match except those under ``ignored_prefixes``.

    Never downloads. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming
    the missing / unexpected keys or mismatched shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    state = _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
    skipped = [k for k in state if any(k.startswith(p) for p in ignored_prefixes)]
    state = {k: v for k, v in state.items() if k not in skipped}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"{path}: weights do not match {type(module).__name__}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''} ({len(unexpected)}), "
            f"shape mismatches {bad_shape[:4]}"
        )
    module.load_state_dict(state, strict=True)
    logger.info(
        "loaded %d tensors from %s (ignored %d: %s)",
        len(state),
        path,
        len(skipped),
        sorted({k.split(".")[0] for k in skipped}),
    )
