"""The TensorRT optimisation profile: which batch sizes an engine accepts for a fixed (C,H,W).

Part of every engine's cache key (``engine_cache``) and of the build (``tensorrt_build``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EngineProfile", "default_profile"]


@dataclass(frozen=True)
class EngineProfile:
    """The dynamic-batch optimisation profile: batch sizes min <= opt <= max for a fixed (C,H,W)."""

    input_name: str
    chw: tuple[int, int, int]
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"profile batches must satisfy 1 <= min_batch <= opt_batch <= max_batch, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )
        if len(self.chw) != 3 or any(int(d) <= 0 for d in self.chw):
            raise ValueError(f"profile chw must be three positive sizes, got {self.chw}")

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        c, h, w = self.chw
        return (self.min_batch, c, h, w), (self.opt_batch, c, h, w), (self.max_batch, c, h, w)


def default_profile(
    input_name: str, chw: Sequence[int], max_batch: int = 32, opt_batch: int = 8
) -> EngineProfile:
    """A 1..max_batch profile tuned for ``opt_batch`` crops (the pipeline batches crops across streams)."""
    return EngineProfile(
        input_name, (int(chw[0]), int(chw[1]), int(chw[2])), 1, min(opt_batch, max_batch), max_batch
    )
