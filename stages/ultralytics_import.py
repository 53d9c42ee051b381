"""One lock for importing ultralytics from stages.

In embedded mode every stage's ``on_start`` runs in its own thread; detect and track both import
ultralytics there, and two threads importing the package at once can see it partially initialised
("cannot import name 'ASSETS' from partially initialized module 'ultralytics.utils'", about one
start in ten). Each stage imports it through ``import_ultralytics`` instead.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

__all__ = ["import_ultralytics"]

_LOCK = threading.Lock()


def import_ultralytics(*modules: str) -> list[ModuleType]:
    """Import ``ultralytics`` and then each of ``modules`` (dotted names) under the shared lock."""
    with _LOCK:
        importlib.import_module("ultralytics")
        return [importlib.import_module(name) for name in modules]
