"""How the export and evaluation programs time a model call: the median of repeated calls after a
warm-up (the median, so one call slowed by another process does not move the figure)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["call_seconds"]


def call_seconds(call: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``call()``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times
