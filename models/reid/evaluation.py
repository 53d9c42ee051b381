"""Pieces of ReID evaluation shared by ``amodal eval reid`` and training-time validation:
batched encoding, synthetic query occlusion with a fixed seed (OAMN sec. 3.1 corner patches) and
the held-out validation that picks the shipped checkpoint and calibrates the grader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from models.data.reid_datasets import ReIDRecord, normalize

from .metrics import cmc_map
from .occlusion_augment import AREAS, LOCATIONS, NUM_GRADES, grade_from_index, grade_index, occlude

__all__ = [
    "encode",
    "synthesize_occlusions",
    "synthesize_person_occlusions",
    "holdout_split",
    "first_image_queries",
    "held_out_split",
    "validate",
]

#: images (N, 3, H, W) normalised -> (L2-normalised embeddings (N, D), grader scores (N, 4) or None)
Model = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@torch.no_grad()
def encode(model: Model, images: torch.Tensor, batch: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Run ``model`` over ``images`` in chunks; NumPy embeddings and scores (None without a grader)."""
    embs, scores = [], []
    for s in range(0, len(images), batch):
        e, sc = model(images[s : s + batch])
        embs.append(e.cpu())
        if sc is not None:
            scores.append(sc.cpu())
    return torch.cat(embs).numpy(), (torch.cat(scores).numpy() if scores else None)


def synthesize_occlusions(images_uint8: torch.Tensor, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Occlude every image with a corner patch of another one (sec. 3.1), type uniform over the 8
    (location, area) pairs; deterministic given ``seed``. Returns the images and their true grades."""
    rng = np.random.default_rng(seed)
    out = images_uint8.clone()
    grades = np.zeros(len(images_uint8), dtype=np.int64)
    for i in range(len(images_uint8)):
        g = int(rng.integers(1, NUM_GRADES))
        j = int(rng.integers(len(images_uint8) - 1))
        j = j + 1 if j >= i else j
        loc, area = grade_from_index(g)
        out[i] = occlude(images_uint8[i], images_uint8[j], loc, area, rng).image
        grades[i] = g
    return out, grades


def synthesize_person_occlusions(
    images_uint8: torch.Tensor, occluders: torch.Tensor, occluder_masks: torch.Tensor, seed: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Occlude every image with another person pasted in front (``realistic_occlusion.paste_person``)
    from ``occluders`` (uint8 (M, 3, H, W)) and their body masks (M, H, W); deterministic given
    ``seed``. The true grade takes the whole crop as the body (test crops have no parsing): the
    side covered and the nearest area (holistic below 1/8 of the crop, 1/2 from 3/8)."""
    from .realistic_occlusion import paste_person

    rng = np.random.default_rng(seed)
    out = images_uint8.clone()
    grades = np.zeros(len(images_uint8), dtype=np.int64)
    crop = np.ones(images_uint8.shape[-2:], dtype=bool)
    for i in range(len(images_uint8)):
        j = int(rng.integers(len(occluders)))
        target = images_uint8[i].permute(1, 2, 0).numpy()
        person = occluders[j].permute(1, 2, 0).numpy()
        occ = paste_person(target, crop, person, occluder_masks[j].numpy(), rng)
        out[i] = torch.from_numpy(occ.image).permute(2, 0, 1)
        if occ.hidden_share >= 0.125:
            area = AREAS[0] if occ.hidden_share < 0.375 else AREAS[1]
            grades[i] = grade_index(LOCATIONS[occ.location], area)
    return out, grades


def holdout_split(
    records: Sequence[ReIDRecord], num_ids: int, seed: int
) -> tuple[list[ReIDRecord], list[ReIDRecord]]:
    """(train, held out): ``num_ids`` identities drawn with ``seed``, taken in turn from each subset
    so that one large subset (TownCentre: 70 % of PETA's ReID images) does not fill the hold-out."""
    if num_ids <= 0:
        return list(records), []
    rng = np.random.default_rng(seed)
    by_subset: dict[str, list[str]] = {}
    for pid in sorted({r.pid for r in records}):
        by_subset.setdefault(pid.split("/")[0] if "/" in pid else "", []).append(pid)
    queues = [list(rng.permutation(pids)) for _, pids in sorted(by_subset.items())]
    total = sum(len(q) for q in queues)
    if num_ids >= total - 1:
        raise ValueError(f"data.holdout_ids={num_ids} leaves fewer than 2 training identities of {total}")
    held: set[str] = set()
    while len(held) < num_ids:
        for q in queues:
            if q and len(held) < num_ids:
                held.add(str(q.pop()))
    return [r for r in records if r.pid not in held], [r for r in records if r.pid in held]


def first_image_queries(pids: Sequence[str]) -> np.ndarray:
    """Boolean mask of the held-out split: each identity's first image is a query (when the identity
    has another image to find), every other image is in the gallery."""
    pids = np.asarray(pids)
    _, first = np.unique(pids, return_index=True)
    is_first = np.zeros(len(pids), dtype=bool)
    is_first[first] = True
    return is_first & np.isin(pids, pids[~is_first])


def held_out_split(records: Sequence[ReIDRecord]) -> tuple[list[ReIDRecord], list[ReIDRecord]]:
    """``first_image_queries`` as (query, gallery) records, cameras set to 0 / 1 so that no
    same-identity gallery image is excluded (held-out subsets mostly lack camera labels)."""
    is_query = first_image_queries([r.pid for r in records])
    query = [replace(r, camid=0) for r, q in zip(records, is_query, strict=True) if q]
    gallery = [replace(r, camid=1) for r, q in zip(records, is_query, strict=True) if not q]
    return query, gallery


def validate(
    model: Model, images_uint8: torch.Tensor, pids: Sequence[str], seed: int = 0, batch: int = 64
) -> tuple[dict[str, float], np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Retrieval on held-out identities: each identity's first image is the query, the rest are
    the gallery; queries are holistic, then occluded synthetically (``seed``). No camera split (the
    held-out subsets mostly lack camera labels), so the numbers are optimistic: they rank checkpoints.

    Returns (metrics, grader scores of all held-out images holistic, of the occluded copies, the
    copies' true grades); the scores feed ``calibrate_thresholds``.
    """
    pids = np.asarray(pids)
    is_query = first_image_queries(pids)
    q_idx, g_idx = np.flatnonzero(is_query), np.flatnonzero(~is_query)
    occluded, true_grades = synthesize_occlusions(images_uint8, seed)
    emb_h, scores_h = encode(model, normalize(images_uint8), batch)
    emb_o, scores_o = encode(model, normalize(occluded), batch)
    zeros, ones = np.zeros(len(q_idx)), np.ones(len(g_idx))  # distinct "cameras": keep same-id matches
    metrics: dict[str, float] = {}
    for name, emb in (("holistic", emb_h), ("occluded", emb_o)):
        r = cmc_map(emb[q_idx] @ emb_h[g_idx].T, pids[q_idx], pids[g_idx], zeros, ones)
        metrics[f"{name}_rank1"], metrics[f"{name}_mAP"] = float(r["rank1"]), float(r["mAP"])
    metrics["score"] = (metrics["holistic_mAP"] + metrics["occluded_mAP"]) / 2
    return metrics, scores_h, scores_o, true_grades
