"""Environment defaults the ``amodal`` command sets before any stage runs.

Some libraries the stages use read their settings once, from the environment, when they are first
imported, and offer no other way to set them: ultralytics turns ``YOLO_AUTOINSTALL`` into a
module constant (``ultralytics.utils.AUTOINSTALL``) at import. So ``amodal`` sets these defaults,
once, before the graph starts (a variable the user set wins); the stage processes of a process-mode
graph inherit them. Stages, the runtime and library code never change the environment.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["PROGRAM_ENV_DEFAULTS", "set_program_env_defaults"]

#: YOLO_AUTOINSTALL=false: ultralytics never pip-installs a missing package at run time
PROGRAM_ENV_DEFAULTS = {"YOLO_AUTOINSTALL": "false"}


def set_program_env_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each of ``PROGRAM_ENV_DEFAULTS`` not set already; call it first thing in ``main``."""
    for name, value in PROGRAM_ENV_DEFAULTS.items():
        environ.setdefault(name, value)
