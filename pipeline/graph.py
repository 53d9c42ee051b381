"""Loading a graph config: which stages run, how they are linked, and how the runtime behaves.

A graph YAML is a list of stages (``name``, ``type``, ``inputs``, ``config``) plus runtime
sections (``graph_settings``). Each stage's ``config`` is validated against that stage type's own
pydantic ``Config``: the schema is assembled at load time from the stage registry as a union
discriminated by ``type`` (``graph_schema``), so an error names the full key path
(``stages[1].detect.config.conf``), the bad value and what was expected, exactly like every other
config in the project (pipeline.configfile). The runtime knows no stage of its own: the
application names the modules that register its stage types (``load_graph(plugins=...)``), a graph
may add more in ``plugins:``, and they are imported first (``plugins``).

``--set`` overrides address a stage by its name: ``detect.weights=x.pt`` sets
``config.weights`` of the stage named ``detect`` (``detect.inputs=[a]`` sets its inputs);
anything else (``mode=process``, ``metrics.port=9100``) addresses the top level (``stage_overrides``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.configfile import ConfigError, interpolate_env, load_yaml, validate
from pipeline.graph_schema import graph_schema
from pipeline.graph_settings import GraphConfig
from pipeline.plugins import import_plugins
from pipeline.stage_overrides import apply_stage_overrides

# GraphConfig is what load_graph returns: importable from here for callers of load_graph
__all__ = ["GraphConfig", "load_graph"]


def load_graph(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    data: dict[str, Any] | None = None,
    plugins: Sequence[str] = (),
) -> GraphConfig:
    """Load a graph YAML (or a dict), apply ``--set`` overrides and ``${ENV}``, validate everything.

    ``plugins``: modules the application registers its stage types from (``["stages"]`` for
    ``amodal``), imported before the graph's own ``plugins:``. They are written into the graph's
    ``plugins`` list, so a stage process started from the loaded graph imports them too.
    """
    raw = load_yaml(path) if path is not None else copy.deepcopy(data or {})
    raw = apply_stage_overrides(raw, overrides)
    own = raw.get("plugins")
    if plugins and (own is None or isinstance(own, list)):  # a malformed list is reported by validation
        raw["plugins"] = list(dict.fromkeys([*plugins, *(own or [])]))
    source = str(path) if path is not None else "config"
    try:
        raw = interpolate_env(raw, env)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    import_plugins(raw.get("plugins"), source)
    graph = validate(graph_schema(), raw, source=source)
    try:
        graph.check()
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return graph
