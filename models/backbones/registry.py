"""Backbones by name: ``create_backbone("osnet_x0_25", weights=path)``; selectable from config.

The shipped ones are listed here; a new one registers itself with ``@register_backbone("name")``
(docs/extending.md), the way stages do with ``@register_stage``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .common import Backbone
from .osnet import OSNET_WIDTHS, OSNet
from .resnet import ResNetBackbone

__all__ = ["create_backbone", "list_backbones", "register_backbone"]

F = TypeVar("F", bound=Callable[..., Backbone])

#: backbones registered by ``register_backbone`` (plugins, new modules)
_REGISTERED: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str) -> Callable[[F], F]:
    """Class (or factory) decorator: make ``create_backbone(name, **kwargs)`` build it."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"backbone name must be letters, digits and '_', got {name!r}")

    def decorate(factory: F) -> F:
        taken = _REGISTERED.get(name)
        if name in _shipped() or (taken is not None and taken.__qualname__ != factory.__qualname__):
            raise ValueError(f"backbone name {name!r} is already taken")
        _REGISTERED[name] = factory
        return factory

    return decorate


def _registry() -> dict[str, Callable[..., Backbone]]:
    return {**_shipped(), **_REGISTERED}


def _shipped() -> dict[str, Callable[..., Backbone]]:
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
