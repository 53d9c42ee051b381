"""Stage implementations; importing this package registers every shipped stage type.

The media stages (ingest, detect, track) may be absent in a partial checkout; a missing module is
skipped, but any other import error (a bug, a missing dependency of a present module) is raised.
"""

from __future__ import annotations

import importlib

__all__: list[str] = []

_MODULES = (
    "stages.ingest",
    "stages.detect",
    "stages.track",
    "stages.upscale",
    "stages.grade",
    "stages.deocclude",
    "stages.describe",
    "stages.identify",
    "stages.sinks",
)


def _import_all() -> None:
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


_import_all()
