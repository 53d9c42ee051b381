"""Importing a graph's ``plugins:`` modules, which register their own stage types (``@register_stage``).

Plugin modules are found like ``python -m`` finds them, from the working directory, but that
directory is on ``sys.path`` only while they are imported: loading a graph leaves the process's
import path as it was.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.configfile import ConfigError

__all__ = ["import_plugins"]


@contextmanager
def _importable_from(folder: str) -> Iterator[None]:
    """``folder`` on ``sys.path`` (at the end, as before) for the ``with`` block only."""
    if folder in sys.path:
        yield
        return
    sys.path.append(folder)
    try:
        yield
    finally:
        # the last occurrence is ours, even if an import put the folder in front as well
        for index in range(len(sys.path) - 1, -1, -1):
            if sys.path[index] == folder:
                del sys.path[index]
                break


def import_plugins(modules: Any, source: str = "config") -> None:
    """Import the ``plugins:`` modules (they register stage types); ConfigError names a bad one."""
    if modules is None:
        return
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"{source}: plugins: bad value {modules!r}: expected a list of module names")
    if not modules:
        return
    with _importable_from(os.getcwd()):
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigError(f"{source}: plugins: cannot import {module!r}: {exc}") from None
