"""The graph schema for the stage types registered right now: ``GraphConfig`` whose ``stages`` items
are a union discriminated by ``type``, each with that stage class's own ``Config``. So an error names
the full key path (``stages[1].detect.config.conf``), the bad value and what was expected.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model

from pipeline.configfile import ConfigError
from pipeline.graph_settings import GraphConfig, StageSpecBase
from pipeline.registry import stage_types

__all__ = ["graph_schema"]


def _stage_variant(type_name: str, cls: type) -> type[StageSpecBase]:
    model = create_model(
        f"{type_name}_stage",
        __base__=StageSpecBase,
        type=(Literal[type_name], Field(description=f"Stage type ({cls.__module__}.{cls.__name__}).")),
        config=(
            cls.Config,
            Field(
                default_factory=dict, validate_default=True, description=f"Options of the {type_name} stage."
            ),
        ),
    )
    model.stage_class = cls  # type: ignore[attr-defined]
    return model


@lru_cache(maxsize=8)
def _schema(types_key: tuple[tuple[str, type], ...]) -> type[GraphConfig]:
    variants = tuple(_stage_variant(name, cls) for name, cls in types_key)
    if not variants:
        raise ConfigError("no stage types are registered: list the modules that register them in plugins:")
    item: Any = variants[0] if len(variants) == 1 else Annotated[Union[variants], Field(discriminator="type")]  # noqa: UP007
    return create_model(
        "GraphConfig",
        __base__=GraphConfig,
        stages=(
            list[item],
            Field(min_length=1, description="The stages, each {name, type, inputs, config}."),
        ),
    )


def graph_schema() -> type[GraphConfig]:
    """The GraphConfig model for the stage types registered right now."""
    return _schema(tuple(sorted(stage_types().items())))
