"""P x K identity-balanced batch sampler (Hermans et al. 2017; OAMN sec. 4.1 uses P=32, K=2)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["PKSampler"]


class PKSampler:
    """Yields batches of P identities x K images each, forever (iteration-based training).

    Identities with fewer than K images are sampled with replacement. Deterministic given ``seed``;
    ``state``/``set_state`` let a resumed run continue the same sequence.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0):
        if p < 2 or k < 1:
            raise ValueError(f"P x K sampler needs p >= 2 and k >= 1, got p={p}, k={k}")
        self.by_id: dict[int, list[int]] = defaultdict(list)
        for idx, lab in enumerate(labels):
            self.by_id[int(lab)].append(idx)
        if len(self.by_id) < p:
            raise ValueError(f"P x K sampler needs at least p={p} identities, the data has {len(self.by_id)}")
        self.ids = sorted(self.by_id)
        self.p, self.k = p, k
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> list[int]:
        chosen = self.rng.choice(len(self.ids), size=self.p, replace=False)
        batch: list[int] = []
        for c in chosen:
            pool = self.by_id[self.ids[c]]
            batch += self.rng.choice(pool, size=self.k, replace=len(pool) < self.k).tolist()
        return batch

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
