"""Stage registry: the graph config's ``type:`` string -> the stage class.

Stage modules register themselves with ``@register_stage("detect")`` when they are imported; the
runtime imports none itself (the application names its stage packages as plugins, see
``pipeline.graph.load_graph``). The registry is a plain dict owned by this module (not a singleton
object with state beyond the mapping), so tests can register throwaway stages under unique names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pipeline.stage import Stage

__all__ = ["register_stage", "get_stage", "stage_types"]

S = TypeVar("S", bound=type[Stage])

_STAGES: dict[str, type[Stage]] = {}


def register_stage(type_name: str) -> Callable[[S], S]:
    """Class decorator: make ``type: <type_name>`` in a graph config build this class."""
    if not type_name or not type_name.replace("_", "").isalnum():
        raise ValueError(f"stage type name must be letters, digits and '_', got {type_name!r}")

    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise TypeError(f"@register_stage({type_name!r}) must decorate a Stage subclass, got {cls!r}")
        existing = _STAGES.get(type_name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"stage type {type_name!r} is already registered by {existing.__module__}.{existing.__name__}"
            )
        _STAGES[type_name] = cls
        return cls

    return decorate


def get_stage(type_name: str) -> type[Stage]:
    """The class registered for ``type_name``; ValueError listing the known types otherwise."""
    try:
        return _STAGES[type_name]
    except KeyError:
        known = ", ".join(sorted(_STAGES)) or "none"
        raise ValueError(
            f"unknown stage type {type_name!r}; known types: {known} (a module listed in plugins: "
            "registers more)"
        ) from None


def stage_types() -> dict[str, type[Stage]]:
    """Every stage type registered so far (by the modules imported until now)."""
    return dict(_STAGES)
