"""``--set`` routing for graph configs: ``detect.weights=x.pt`` sets ``config.weights`` of the stage
named ``detect`` (``detect.inputs=[a]`` sets its inputs); anything else (``mode=process``,
``metrics.port=9100``) addresses the top level.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from pipeline.configfile import apply_overrides
from pipeline.graph_settings import TOP_LEVEL_KEYS

__all__ = ["apply_stage_overrides"]


def apply_stage_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``--set`` items; ``NAME.key=v`` goes to the config of the stage called NAME."""
    raw = copy.deepcopy(raw)
    stages = raw.get("stages")
    by_name = {}
    if isinstance(stages, list):
        by_name = {s.get("name"): s for s in stages if isinstance(s, dict)}
    top: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        head, dot, rest = key.strip().partition(".")
        if sep and dot and head in by_name and head not in TOP_LEVEL_KEYS:
            spec = by_name[head]
            field, _, _ = rest.partition(".")
            if field in ("inputs", "type", "name"):
                spec.update(apply_overrides(spec, [f"{rest}={value}"]))
            else:
                if rest.startswith("config."):
                    rest = rest[len("config.") :]
                config = spec.get("config") if isinstance(spec.get("config"), dict) else {}
                spec["config"] = apply_overrides(config, [f"{rest}={value}"])
        else:
            top.append(item)
    return apply_overrides(raw, top)
