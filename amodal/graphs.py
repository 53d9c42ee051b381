"""The graphs ``amodal`` loads: the user's YAML or a built-in one, with the product's stages registered.

The built-in replay graphs are the YAML files in ``configs/`` themselves (``replay.yaml``, and
``replay_basic.yaml`` for ``--basic``): one source, commented, to copy and tune.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.configfile import ConfigError, load_yaml
from pipeline.graph import GraphConfig, load_graph
from pipeline.plugins import import_plugins

__all__ = ["STAGE_PACKAGES", "CONFIG_DIR", "builtin_replay_graph", "load_app_graph", "register_stages"]

#: the modules whose import registers the product's stage types (ingest, detect, ..., the sinks)
STAGE_PACKAGES = ("stages",)

#: the source tree's configs/ folder (``pip install -e .`` keeps the package beside it)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def builtin_replay_graph(basic: bool = False) -> dict[str, Any]:
    """The raw built-in replay graph: ``configs/replay.yaml``, or ``configs/replay_basic.yaml``
    (detect-and-track only) with ``basic``."""
    path = CONFIG_DIR / ("replay_basic.yaml" if basic else "replay.yaml")
    if not path.is_file():
        raise ConfigError(f"the built-in replay graph {path} is missing: give --config GRAPH.yaml")
    return load_yaml(path)


def load_app_graph(
    path: str | Path | None = None, overrides: Iterable[str] = (), data: dict[str, Any] | None = None
) -> GraphConfig:
    """``pipeline.graph.load_graph`` with the product's stage packages as plugins."""
    return load_graph(path, overrides, data=data, plugins=STAGE_PACKAGES)


def register_stages() -> None:
    """Import the product's stage packages, for code that looks stage types up before loading a graph."""
    import_plugins(list(STAGE_PACKAGES), "amodal")
