"""The grader's training and held-out data: crops with full-body masks, occluded realistically.

Market-1501 ships a human-parsing map for (almost) every training crop
(``bounding_box_train_parsing/<stem>.png``, class 0 = background); its non-background pixels are
the person's full-body mask. ``RealisticBatches`` draws training batches from crops that have one
(``realistic_occlusion.synthesize`` with exact labels), and ``realistic_set`` a fixed held-out set
that validation and calibration read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.data.reid_datasets import ReIDRecord
from models.deocclusion.parts import load_parts

from .realistic_occlusion import DEFAULT_WEIGHTS, degrade, grader_target, synthesize

__all__ = [
    "load_body_masks",
    "RealisticSet",
    "realistic_set",
    "RealisticBatches",
]


def load_body_masks(
    records: Sequence[ReIDRecord], masks_dir: str | Path, size_hw: tuple[int, int]
) -> tuple[torch.Tensor, np.ndarray]:
    """Full-body masks (N, H, W) bool at ``size_hw`` from ``masks_dir/<image stem>.png`` and a (N,)
    bool array of which records have a usable one (missing files and parsing failures do not)."""
    parts, usable = load_parts([rec.path for rec in records], masks_dir, size_hw)
    return parts > 0, usable


@dataclass(frozen=True)
class RealisticSet:
    """Occluded crops with exact labels: images uint8 (N, 3, H, W), targets (N, 5), kinds (N,)."""

    images: torch.Tensor
    targets: np.ndarray
    kinds: np.ndarray

    @property
    def hidden_share(self) -> np.ndarray:
        return 1.0 - self.targets[:, -1]


class RealisticBatches:
    """Draws crops that have a body mask, flips them at random and occludes each with
    ``realistic_occlusion.synthesize`` (occluders and textures from other identities' crops)."""

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        usable: np.ndarray,
        pids: Sequence[str],
        seed: int,
        weights: Sequence[float] = DEFAULT_WEIGHTS,
        augment: bool = False,
    ):
        self.images, self.masks = images, masks
        self.index = np.flatnonzero(usable)
        if len(self.index) < 2:
            raise ValueError("realistic occlusion needs at least two crops with a body mask")
        self.pids = np.asarray(pids)
        self.weights = tuple(float(w) for w in weights)
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def _crop(self, i: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
        image = self.images[i].permute(1, 2, 0).numpy()
        mask = self.masks[i].numpy()
        if flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def _other(self, i: int):
        def draw() -> tuple[np.ndarray, np.ndarray]:
            for _ in range(8):  # another identity's crop (almost always at the first draw)
                j = int(self.index[self.rng.integers(len(self.index))])
                if self.pids[j] != self.pids[i]:
                    break
            return self._crop(j, bool(self.rng.random() < 0.5))

        return draw

    def sample(self, n: int) -> RealisticSet:
        picks = self.index[self.rng.integers(len(self.index), size=n)]
        images, targets, kinds = [], [], []
        for i in picks:
            image, body = self._crop(int(i), bool(self.rng.random() < 0.5))
            occ = synthesize(image, body, self._other(int(i)), self.rng, self.weights)
            out = degrade(occ.image, self.rng) if self.augment else occ.image
            images.append(torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1))
            targets.append(grader_target(occ.location, occ.hidden_share))
            kinds.append(occ.kind)
        return RealisticSet(torch.stack(images), np.stack(targets), np.array(kinds))

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def realistic_set(
    images: torch.Tensor,
    masks: torch.Tensor,
    usable: np.ndarray,
    pids: Sequence[str],
    seed: int,
    copies: int = 2,
) -> RealisticSet:
    """A fixed held-out set: ``copies`` occluded versions of every crop with a mask (one kind each,
    drawn with the default mixture, so about a third stay whole)."""
    batches = RealisticBatches(images, masks, usable, pids, seed)
    return batches.sample(copies * len(batches.index))


def held_out_report(
    scores: np.ndarray, grades: np.ndarray, realistic: RealisticSet, visibility_threshold: float = 0.7
) -> dict:
    """The grader's figures (``grader_eval.grader_metrics``) on a realistic held-out set, overall
    and per occlusion kind (each kind's crops together with the whole ones, so every row has both
    classes): its ``scores`` (N, 5) and ``grades`` (N,) on ``realistic.images``."""
    from .grader import occlusion_score
    from .grader_eval import grader_metrics

    occlusion = occlusion_score(scores)
    visibility = 1.0 - realistic.hidden_share
    report = {"overall": grader_metrics(occlusion, grades, visibility, visibility_threshold), "kinds": {}}
    whole = realistic.kinds == "none"
    for kind in sorted(set(realistic.kinds.tolist()) - {"none"}):
        rows = whole | (realistic.kinds == kind)
        report["kinds"][kind] = grader_metrics(
            occlusion[rows], grades[rows], visibility[rows], visibility_threshold
        )
    return report
