"""Backbones by name: ``create_backbone("osnet_x0_25", weights=path)``; selectable from config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .common import Backbone
from .osnet import OSNET_WIDTHS, OSNet
from .resnet import ResNetBackbone

__all__ = ["create_backbone", "list_backbones"]


def _registry() -> dict[str, Callable[..., Backbone]]:
    reg: dict[str, Callable[..., Backbone]] = {}
    for width, channels in OSNET_WIDTHS.items():
        reg[f"osnet_{width}"] = lambda channels=channels, **kw: OSNet(channels, **kw)
    for arch in ("resnet18", "resnet50"):
        reg[arch] = lambda arch=arch, **kw: ResNetBackbone(arch, **kw)
    return reg


def list_backbones() -> list[str]:
    """Names ``create_backbone`` accepts."""
    return sorted(_registry())


def create_backbone(
    name: str, weights: str | Path | None = None, pretrained: bool = False, **kwargs
) -> Backbone:
    """Build a backbone by name; ``weights`` loads a local file strictly (never downloads).

    ``pretrained=True`` without ``weights`` is an error: there is no download path by design.
    Extra keyword arguments go to the constructor (e.g. ``last_stride=1`` for ResNets).
    """
    reg = _registry()
    if name not in reg:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(reg)}")
    if pretrained and weights is None:
        raise ValueError("pretrained=True needs a local weights file (weights=...); nothing is downloaded")
    model = reg[name](**kwargs)
    if weights is not None:
        model.load_weights(weights)
    return model
