"""What a gallery stores, from what it is given: crops through an encoder into their grade and
unification versions (``unification.unification_versions``), or (N, 9, D) embeddings checked and
L2-normalised. ``OcclusionGallery.encode`` / ``add`` / ``match`` go through here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .encoder import Encoder
from .grader import GradeThresholds, decide_grades
from .occlusion_augment import NUM_GRADES
from .unification import unification_versions

__all__ = ["EncodeCrops", "encode_crops", "as_embeddings", "check_grades"]

#: crops, their grades (None: graded here), versions to compute, thresholds -> (embeddings, grades)
EncodeCrops = Callable[
    [np.ndarray, np.ndarray | None, Sequence[int] | None, GradeThresholds | None],
    tuple[np.ndarray, np.ndarray],
]


def check_grades(g: np.ndarray, what: str) -> None:
    if len(g) and (g.min() < 0 or g.max() >= NUM_GRADES):
        raise ValueError(f"{what}: grades must be in [0, {NUM_GRADES - 1}]")


def encode_crops(
    encoder: Encoder | None,
    images: np.ndarray | torch.Tensor,
    dim: int,
    thresholds: GradeThresholds,
    unify: bool,
    fill: float,
    grades: Sequence[int] | None = None,
    versions: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crops (N, 3, H, W) -> (N, 9, D) embeddings and grades (N,); see ``OcclusionGallery.encode``."""
    if encoder is None:
        raise ValueError("this gallery has no encoder; pass (N, 9, D) embeddings and grades instead of crops")
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"crops must be (N, 3, H, W) normalised float arrays, got shape {tuple(x.shape)}")
    plain, scores = encoder(x)
    if plain.shape[1] != dim:
        raise ValueError(f"encoder gives {plain.shape[1]}-d embeddings, gallery holds {dim}-d")
    if grades is None:
        own = decide_grades(scores, thresholds)
    else:
        own = np.asarray(grades, np.int64)
    if len(own) != len(x):
        raise ValueError(f"{len(own)} grades for {len(x)} crops")
    if not unify:
        emb = np.zeros((len(x), NUM_GRADES, dim), dtype=np.float32)
        emb[:, 0] = plain
        return emb, own
    return unification_versions(encoder, x, own, plain, versions, fill), own


def as_embeddings(
    data,
    grades,
    what: str,
    dim: int,
    encode: EncodeCrops,
    versions: Sequence[int] | None = None,
    thresholds: GradeThresholds | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crops (through ``encode``) or (N, 9, D) embeddings -> normalised (N, 9, D) and checked grades;
    ``what`` names the caller in errors."""
    arr = np.asarray(data)
    if arr.ndim == 3 and arr.shape[1:] == (NUM_GRADES, dim):
        if grades is None:
            raise ValueError(f"{what}: grades are required when passing embeddings")
        emb = arr.astype(np.float32)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=2, keepdims=True), 1e-12)
        g = np.asarray(grades, dtype=np.int64).reshape(-1)
    elif arr.ndim == 4:
        given = None if grades is None else np.asarray(grades, dtype=np.int64).reshape(-1)
        if given is not None:
            if len(given) != len(arr):
                raise ValueError(f"{what}: {len(given)} grades for {len(arr)} items")
            check_grades(given, what)  # before masking crops with them
        emb, g = encode(arr, given, versions, thresholds)
    else:
        raise ValueError(
            f"{what}: expected crops (N, 3, H, W) or embeddings (N, {NUM_GRADES}, {dim}), "
            f"got shape {arr.shape}"
        )
    if len(g) != len(emb):
        raise ValueError(f"{what}: {len(g)} grades for {len(emb)} items")
    check_grades(g, what)
    return emb, g
