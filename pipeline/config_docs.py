"""The description of a config option, found from its dotted key (what ``amodal check`` prints
beside each value)."""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel

__all__ = ["option_description"]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation: itself, ``X | None``, ``list[X]``, ``dict[str, X]``,
    and each member of a (discriminated) union such as ``list[Annotated[A | B, ...]]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]
    return []


def option_description(model: type[BaseModel], key: str) -> str | None:
    """``key`` as ``_flatten`` spells it (``reconnect.max_s``, ``streams[0].id``) -> the field's
    description, or None when the key is not a described field of ``model``. Under a union the first
    member that has the field answers (the members of a discriminated union share only ``type``)."""
    candidates: list[type[BaseModel]] = [model]
    description = None
    for part in key.split("."):
        name = re.sub(r"\[\d+\]$", "", part)
        owner = next((m for m in candidates if name in m.model_fields), None)
        if owner is None:
            return None
        field = owner.model_fields[name]
        description = field.description
        candidates = _models_in(field.annotation)
    return description
