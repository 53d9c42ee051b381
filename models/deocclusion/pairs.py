"""Training pairs with exact targets for the two-stage de-occlusion.

The de-occlusion paper (``../shared/papers/human-deocclusion-mask-and-content.txt``, sec. 4,
Fig. 4) synthesises occlusion by pasting occluders onto humans whose full mask is known, so the
modal mask, the amodal mask and the de-occluded image are all ground truth. Here the humans are
Market-1501 training crops with their parsing maps (``parts.load_parts``), and an occluder is

- ``person``: another person's parsed body pasted in front (``realistic_occlusion.paste_person``);
- ``object``: a pole, a low object or a band textured with another crop's pixels
  (``realistic_occlusion.static_occluder``);
- ``border``: the frame border, i.e. the crop cut on one side and the missing part filled with
  black, the way a box clipped at the image edge and padded back to a person's shape looks.

Every pair knows, exactly and in the crop's own coordinates: the clean crop, the occluded crop,
the part map of the full body (amodal parsing), and the occluder's pixels. The visible (modal)
mask, the hidden body and the region to restore follow from those. Images are NumPy
``(H, W, 3)`` uint8, masks ``(H, W)`` bool; everything is deterministic given a seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.reid.realistic_occlusion import paste_person, static_occluder

__all__ = [
    "KINDS",
    "DEFAULT_WEIGHTS",
    "Pair",
    "PairBatch",
    "border_cut",
    "make_pair",
    "PairBatches",
    "pair_set",
]

KINDS = ("person", "object", "border")
#: people in front are what surveillance footage is full of; objects and the frame border follow
DEFAULT_WEIGHTS = (0.5, 0.3, 0.2)
#: a pair must hide at least this share of the body: one that hides nothing teaches no completion
MIN_HIDDEN_SHARE = 0.05
#: redraws before a pair that hides too little is accepted anyway (tiny bodies, unlucky draws)
REDRAWS = 8


@dataclass(frozen=True)
class Pair:
    """One occluded crop with everything the two stages learn from."""

    occluded: np.ndarray  # (H, W, 3) uint8: the network's input
    clean: np.ndarray  # (H, W, 3) uint8: the target
    parts: np.ndarray  # (H, W) uint8: part index of the full body (0 background), the amodal parsing
    occluder: np.ndarray  # (H, W) bool: pixels the occluder covers, the region to restore
    kind: str

    @property
    def amodal(self) -> np.ndarray:
        return self.parts > 0

    @property
    def visible(self) -> np.ndarray:
        """The modal mask: body pixels the occluder leaves in view."""
        return self.amodal & ~self.occluder

    @property
    def hidden(self) -> np.ndarray:
        return self.amodal & self.occluder

    @property
    def hidden_share(self) -> float:
        body = int(self.amodal.sum())
        return float(self.hidden.sum()) / body if body else 0.0


def border_cut(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The crop cut on one side (bottom most often: people walking in at the frame's bottom edge)
    by 15-50 %, the cut part black; returns (image, cut pixels)."""
    h, w = clean.shape[:2]
    side = ("top", "bottom", "left", "right")[int(rng.choice(4, p=[0.1, 0.5, 0.2, 0.2]))]
    share = rng.uniform(0.15, 0.5)
    cut = np.zeros((h, w), dtype=bool)
    if side in ("top", "bottom"):
        n = max(1, int(round(h * share)))
        cut[:n] = side == "top"
        cut[h - n :] = side == "bottom"
    else:
        n = max(1, int(round(w * share)))
        cut[:, :n] = side == "left"
        cut[:, w - n :] = side == "right"
    image = clean.copy()
    image[cut] = 0
    return image, cut


def make_pair(
    clean: np.ndarray,
    parts: np.ndarray,
    other: Callable[[], tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    min_hidden_share: float = MIN_HIDDEN_SHARE,
) -> Pair:
    """Occlude ``clean`` (whose full-body parts are ``parts``) with one occluder of a kind drawn with
    ``weights`` (over ``KINDS``); ``other()`` returns another person's (crop, part map). Draws the
    occluder again, same kind (up to ``REDRAWS`` times), while it hides less than
    ``min_hidden_share`` of the body, so the kinds keep their weights (0: a crop whose body is not
    known, all zeros in ``parts``, takes the first draw)."""
    if len(weights) != len(KINDS):
        raise ValueError(f"weights must give one probability per kind {KINDS}, got {tuple(weights)}")
    p = np.asarray(weights, dtype=np.float64)
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {tuple(weights)}")
    body = parts > 0
    kind = KINDS[int(rng.choice(len(KINDS), p=p / p.sum()))]
    pair = None
    for _ in range(REDRAWS):
        if kind == "person":
            crop, other_parts = other()
            occ = paste_person(clean, body, crop, other_parts > 0, rng)
            image, cover = occ.image, occ.cover
        elif kind == "object":
            occ = static_occluder(clean, body, other()[0], rng)
            image, cover = occ.image, occ.cover
        else:
            image, cover = border_cut(clean, rng)
        pair = Pair(image, clean.copy(), parts.copy(), cover, kind)
        if pair.hidden_share >= min_hidden_share:
            break
    assert pair is not None
    return pair


@dataclass(frozen=True)
class PairBatch:
    """Pairs stacked as tensors: images uint8 (N, 3, H, W), parts uint8 (N, H, W), occluder bool."""

    occluded: torch.Tensor
    clean: torch.Tensor
    parts: torch.Tensor
    occluder: torch.Tensor
    kinds: np.ndarray

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def amodal(self) -> torch.Tensor:
        return self.parts > 0

    @property
    def visible(self) -> torch.Tensor:
        return self.amodal & ~self.occluder

    @property
    def hidden(self) -> torch.Tensor:
        return self.amodal & self.occluder

    def select(self, index: slice | np.ndarray) -> PairBatch:
        return PairBatch(
            self.occluded[index],
            self.clean[index],
            self.parts[index],
            self.occluder[index],
            self.kinds[index],
        )


def _stack(pairs: Sequence[Pair]) -> PairBatch:
    def images(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(p, name) for p in pairs])).permute(0, 3, 1, 2).contiguous()

    return PairBatch(
        images("occluded"),
        images("clean"),
        torch.from_numpy(np.stack([p.parts for p in pairs])),
        torch.from_numpy(np.stack([p.occluder for p in pairs])),
        np.array([p.kind for p in pairs]),
    )


class PairBatches:
    """Draws crops that have a part map, flips them at random and occludes each with ``make_pair``
    (occluders and textures from other identities' crops, or from ``occluders``: (images, parts,
    usable, pids) of another set, e.g. training crops with part maps occluding test crops without)."""

    def __init__(
        self,
        images: torch.Tensor,
        parts: torch.Tensor,
        usable: np.ndarray,
        pids: Sequence[str],
        seed: int,
        weights: Sequence[float] = DEFAULT_WEIGHTS,
        occluders: tuple[torch.Tensor, torch.Tensor, np.ndarray, Sequence[str]] | None = None,
        min_hidden_share: float = MIN_HIDDEN_SHARE,
    ):
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if parts.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"parts must be (N, H, W) = {(images.shape[0], *images.shape[2:])}, got {tuple(parts.shape)}"
            )
        self.images, self.parts = images, parts
        self.index = np.flatnonzero(usable)
        if len(self.index) < 2:
            raise ValueError("de-occlusion pairs need at least two crops with a part map")
        self.pids = np.asarray(pids)
        self.weights = tuple(float(w) for w in weights)
        self.min_hidden_share = min_hidden_share
        self.rng = np.random.default_rng(seed)
        if occluders is None:
            self.source = (images, parts, self.index, self.pids)
        else:
            o_images, o_parts, o_usable, o_pids = occluders
            if not np.any(o_usable):
                raise ValueError("the occluder set has no crop with a part map")
            self.source = (o_images, o_parts, np.flatnonzero(o_usable), np.asarray(o_pids))

    @staticmethod
    def _take(images: torch.Tensor, parts: torch.Tensor, i: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
        image, part = images[i].permute(1, 2, 0).numpy(), parts[i].numpy()
        if flip:
            image, part = image[:, ::-1], part[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(part)

    def _other(self, i: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        images, parts, index, pids = self.source

        def draw() -> tuple[np.ndarray, np.ndarray]:
            for _ in range(8):  # another identity's crop (almost always at the first draw)
                j = int(index[self.rng.integers(len(index))])
                if pids[j] != self.pids[i]:
                    break
            return self._take(images, parts, j, bool(self.rng.random() < 0.5))

        return draw

    def sample(self, n: int) -> PairBatch:
        """``n`` pairs of crops drawn at random (with replacement)."""
        return self.occlude(self.index[self.rng.integers(len(self.index), size=n)])

    def occlude(self, picks: np.ndarray) -> PairBatch:
        """One pair for each crop index in ``picks``."""
        pairs = []
        for i in picks:
            clean, parts = self._take(self.images, self.parts, int(i), bool(self.rng.random() < 0.5))
            pairs.append(
                make_pair(clean, parts, self._other(int(i)), self.rng, self.weights, self.min_hidden_share)
            )
        return _stack(pairs)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def pair_set(
    images: torch.Tensor,
    parts: torch.Tensor,
    usable: np.ndarray,
    pids: Sequence[str],
    seed: int,
    copies: int = 1,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    occluders: tuple[torch.Tensor, torch.Tensor, np.ndarray, Sequence[str]] | None = None,
    min_hidden_share: float = MIN_HIDDEN_SHARE,
) -> PairBatch:
    """A fixed set: ``copies`` occluded versions of every crop with a part map, in order
    (validation and evaluation read it; the same seed gives the same pairs)."""
    batches = PairBatches(images, parts, usable, pids, seed, weights, occluders, min_hidden_share)
    return batches.occlude(np.tile(batches.index, copies))
