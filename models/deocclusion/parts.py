"""Body parts for the two-stage de-occlusion: LIP's 20 parsing classes grouped into 7.

Market-1501's parsing maps (``bounding_box_train_parsing/<stem>.png``) use LIP's classes; the
two-stage model (``../shared/papers/human-deocclusion-mask-and-content.txt``, sec. 3.2-3.3) needs
parsing as a supervision and as guidance, and a handful of coarse parts is what a 128x64 crop can
resolve (the paper uses 19 classes on large images).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["PARTS", "LIP_TO_PART", "group_parsing", "load_parts"]

logger = logging.getLogger(__name__)

#: part 0 is background; the amodal (full-body) mask is ``parts > 0``
PARTS = ("background", "head", "upper", "arms", "lower", "legs", "feet")

#: LIP class id -> part index (0 bg, 1 hat, 2 hair, 3 glove, 4 sunglasses, 5 upper clothes, 6 dress,
#: 7 coat, 8 socks, 9 pants, 10 jumpsuit, 11 scarf, 12 skirt, 13 face, 14-15 arms, 16-17 legs,
#: 18-19 shoes)
LIP_TO_PART = np.array([0, 1, 1, 3, 1, 2, 2, 2, 5, 4, 2, 2, 4, 1, 3, 3, 5, 5, 6, 6], dtype=np.uint8)

#: parsing maps covering less of the crop than this are parsing failures, not people
MIN_BODY_SHARE = 0.05


def group_parsing(lip: np.ndarray) -> np.ndarray:
    """LIP class ids (any shape, uint8) -> part indices; unknown ids are refused."""
    if lip.size and int(lip.max()) >= len(LIP_TO_PART):
        raise ValueError(f"parsing class {int(lip.max())} is not one of LIP's {len(LIP_TO_PART)}")
    return LIP_TO_PART[lip]


def load_parts(
    paths: Sequence[str | Path], masks_dir: str | Path, size_hw: tuple[int, int]
) -> tuple[torch.Tensor, np.ndarray]:
    """Part maps (N, H, W) uint8 at ``size_hw`` from ``masks_dir/<image stem>.png`` and a (N,) bool
    array of which crops have a usable one (missing files and parsing failures do not)."""
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"parsing-mask folder not found: {masks_dir}")
    h, w = size_hw
    out = torch.zeros((len(paths), h, w), dtype=torch.uint8)
    usable = np.zeros(len(paths), dtype=bool)
    missing = failed = 0
    for i, path in enumerate(paths):
        file = masks_dir / (Path(path).stem + ".png")
        if not file.is_file():
            missing += 1
            continue
        with Image.open(file) as img:
            parts = group_parsing(np.array(img.resize((w, h), Image.NEAREST)))
        if (parts > 0).mean() < MIN_BODY_SHARE:
            failed += 1
            continue
        out[i] = torch.from_numpy(parts)
        usable[i] = True
    logger.info(
        "part maps from %s: %d of %d crops (%d without a parsing file, %d with a body under %.0f %%)",
        masks_dir,
        int(usable.sum()),
        len(paths),
        missing,
        failed,
        100 * MIN_BODY_SHARE,
    )
    if not usable.any():
        raise ValueError(f"no usable parsing map in {masks_dir} for the {len(paths)} crops")
    return out, usable
