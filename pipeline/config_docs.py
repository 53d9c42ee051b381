"""The description of a config option, found from its dotted key (what ``amodal check`` prints
beside each value)."""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel

__all__ = ["option_description"]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (itself, ``X | None``, ``list[X]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, tuple, dict):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def option_description(model: type[BaseModel], key: str) -> str | None:
    """``key`` as ``_flatten`` spells it (``reconnect.max_s``, ``streams[0].id``) -> the field's
    description, or None when the key is not a described field of ``model``."""
    current: type[BaseModel] | None = model
    description = None
    for part in key.split("."):
        name = re.sub(r"\[\d+\]$", "", part)
        if current is None or name not in current.model_fields:
            return None
        field = current.model_fields[name]
        description = field.description
        current = _model_in(field.annotation)
    return description
