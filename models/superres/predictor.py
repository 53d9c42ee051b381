"""The super-resolution network as tools and the pipeline use it: RGB uint8 crops in, larger crops out.

    sr = SuperResolver.from_weights("superres_x4_market.pt")
    big = sr.upscale(crops)                 # every crop x4 (crops of any sizes, batched by size)
    fixed = sr.upscale_to(crops, (128, 64))  # SR only where it helps, then resize the remainder

``upscale_to`` is the reconstruction paper's "complete model" rule (sec. 5): a crop goes through
the network only when it is smaller than the size the next network wants; the network's output
(or the crop itself) is then resized to exactly that size.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.data.transforms import resize
from models.superres.checkpoint import load_superres
from models.superres.data import to_tensor, to_uint8
from models.superres.network import SuperResolutionNet
from models.superres.recipe import ModelConfig
from models.weights_path import require_file

__all__ = ["SuperResolver", "sr_passes"]

logger = logging.getLogger(__name__)


def sr_passes(shape_hw: Sequence[int], size_hw: Sequence[int], scale: int, max_passes: int = 1) -> int:
    """How many network passes bring a (h, w) crop closest to (H, W), in log scale, at most ``max_passes``.

    The crop needs ``f = max(H / h, W / w)``; a pass multiplies by ``scale``. SR is used when
    ``f >= sqrt(scale)`` (for x4: the crop is at most half the target size), i.e. only for crops
    smaller than the target (sec. 5 "complete model"); never when the crop is at least the target.
    """
    need = max(size_hw[0] / shape_hw[0], size_hw[1] / shape_hw[1])
    if need <= 1.0:
        return 0
    return int(min(max_passes, math.floor(math.log(need) / math.log(scale) + 0.5)))


class SuperResolver:
    """RGB uint8 crops -> ``scale`` times larger RGB uint8 crops with one network on one device."""

    def __init__(
        self,
        net: SuperResolutionNet,
        config: ModelConfig,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config = config
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.batch_size = batch_size

    @classmethod
    def from_weights(cls, weights: str | Path, key: str = "weights", **kwargs) -> SuperResolver:
        """Load a checkpoint (a path or the bare name of a shipped file); a missing one is a
        ``FileNotFoundError`` naming ``key``. ``kwargs`` go to the constructor."""
        net, cfg, _ = load_superres(require_file(weights, key))
        return cls(net, cfg, **kwargs)

    @property
    def scale(self) -> int:
        return int(self.config.scale)

    @staticmethod
    def _check(crops: Sequence[np.ndarray]) -> None:
        for i, crop in enumerate(crops):
            if (
                not isinstance(crop, np.ndarray)
                or crop.dtype != np.uint8
                or crop.ndim != 3
                or crop.shape[2] != 3
            ):
                got = f"{crop.dtype} {crop.shape}" if isinstance(crop, np.ndarray) else type(crop).__name__
                raise ValueError(f"crop {i}: expected an RGB uint8 array (H, W, 3), got {got}")
            if crop.shape[0] < 1 or crop.shape[1] < 1:
                raise ValueError(f"crop {i}: empty image {crop.shape}")

    @torch.inference_mode()
    def _run(self, batch: np.ndarray) -> np.ndarray:
        return to_uint8(self.net(to_tensor(batch).to(self.device)))

    def upscale(self, crops: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each crop (h, w, 3) -> (scale*h, scale*w, 3), in input order; same-size crops share batches."""
        self._check(crops)
        out: list[np.ndarray | None] = [None] * len(crops)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, crop in enumerate(crops):
            groups[crop.shape[:2]].append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for i, image in zip(chunk, self._run(np.stack([crops[i] for i in chunk])), strict=True):
                    out[i] = image
        return out  # type: ignore[return-value]

    def upscale_to(
        self, crops: Sequence[np.ndarray], size: Sequence[int], max_passes: int = 1
    ) -> list[np.ndarray]:
        """Each crop at exactly ``size`` (height, width): SR passes where the crop is small
        (``sr_passes``), then a plain resize of the remainder (area when shrinking, else linear)."""
        self._check(crops)
        if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
            raise ValueError(f"size must be a positive (height, width), got {tuple(size)}")
        current = list(crops)
        todo = [sr_passes(c.shape[:2], size, self.scale, max_passes) for c in crops]
        for p in range(max(todo, default=0)):
            which = [i for i, n in enumerate(todo) if n > p]
            for i, image in zip(which, self.upscale([current[i] for i in which]), strict=True):
                current[i] = image
        return [resize(c, size) for c in current]
