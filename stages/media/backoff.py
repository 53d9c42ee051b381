"""Reconnect delays: exponential backoff with jitter and a ceiling.

Full jitter on the upper part of the delay keeps a fleet of cameras behind one flaky switch from
reconnecting in lock-step, while the floor keeps the delay from collapsing to zero.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays ``initial * multiplier**n``, capped at ``maximum``, each scaled by a random factor in
    ``[1 - jitter, 1]``. ``reset()`` after a healthy connection starts again from ``initial``."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum, got initial={initial}, maximum={maximum}"
            )
        if multiplier < 1:
            raise ValueError(f"backoff multiplier must be >= 1, got {multiplier}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff jitter must be within [0, 1], got {jitter}")
        self.initial, self.maximum, self.multiplier, self.jitter = initial, maximum, multiplier, jitter
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the exponent."""
        base = min(self.maximum, self.initial * self.multiplier ** min(self.attempts, 64))
        self.attempts += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Forget past failures (call once frames flow again)."""
        self.attempts = 0
