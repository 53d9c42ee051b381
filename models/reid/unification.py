"""Occlusion unification (OAMN, Chen et al., ICCV 2021, sec. 3.4): "occlude them all".

Every image (gallery entry or query) has a grade o (eq. 8; 0 = holistic) and 9 versions: version k
is the crop with grade k's region **and its own region o** masked out (version 0: its own region
only, so the unmasked crop for a holistic image). A query graded a meets a gallery entry graded b
through

    sim(q, j) = < V_q[b], V_j[a] >

so both crops are compared with the union of both occlusion regions masked out. The paper masks
the gallery with the query's occlusion and, as its exception, the query with an occluded gallery
entry's ("we may also occlude the query image correspondingly if the gallery image already
contains occlusion"); it leaves each image's own occluder in place. Masking the own region as well
is what makes the two sides identical: an occluder is never compared with the painted mean colour
on the other side. On the 80 held-out PETA training identities (the selection split) with the
shipped checkpoint and grader grades, occluded-query rank-1 was 82.5 with own-region masking and
76.25 without it (none: 73.75); docs/reid.md has the table.

**Similarity offsets** (ours, not in the paper). Two different crops painted with the same band
look more alike than two plain crops: on the held-out PETA crops the mean cosine of two different
identities is 0.088 plain and 0.10-0.17 with one band painted. Within one query's ranking the
entries are compared under different unions (each entry's own grade joins the query's), so an entry
graded occluded, rightly or wrongly, is lifted above the plain ones. ``similarity_offsets`` measures
the mean cosine of different crops under each union, O[a, b], and ``unified_similarity`` subtracts
it. On the held-out identities (grader grades, seeds 0-4) occluded rank-1 / mAP went from
76.75 / 67.81 to 77.25 / 68.10 (rank-1 never lower on any seed); on VIPeR from 16.30 / 23.81 to
16.68 / 24.25.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .occlusion_augment import NUM_GRADES, mask_batch, union_mask

__all__ = ["unified_similarity", "plain_similarity", "unification_versions", "similarity_offsets"]

#: images (N, 3, H, W) -> (embeddings (N, D) L2-normalised, grader scores or None), NumPy
EncodeFn = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray | None]]


def plain_similarity(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """No unification: holistic embeddings only, (Nq, D) x (Ng, D) -> (Nq, Ng)."""
    return np.ascontiguousarray(query, dtype=np.float32) @ np.ascontiguousarray(gallery, dtype=np.float32).T


def unified_similarity(
    query: np.ndarray,
    query_grades: np.ndarray,
    gallery: np.ndarray,
    gallery_grades: np.ndarray,
    offsets: np.ndarray | None = None,
    plain_fallback: bool = False,
    gallery_has: np.ndarray | None = None,
) -> np.ndarray:
    """``query`` (9, Nq, D) and ``gallery`` (9, Ng, D): each image's versions (``unification_versions``);
    grades are indices 0..8. Returns (Nq, Ng) similarities (embeddings assumed L2-normalised), less
    ``offsets[a, b]`` (``similarity_offsets``) for a query graded a and an entry graded b when given.

    ``plain_fallback``: a pair whose version on either side was not computed (an all-zero row, as
    ``unification_versions(versions=...)`` leaves them) is compared through version 0 of both (less
    ``offsets[0, 0]``) instead of scoring 0: the pipeline computes every version only for crops that
    earned it (``stages/identify.py``). ``gallery_has`` (9, Ng) says which gallery versions exist
    when the caller keeps it (``OcclusionGallery`` does), instead of scanning the gallery per call.

    One matrix product per distinct query grade: G[a] (Ng, D) against all 9 versions of the
    queries graded a, then the column of each gallery entry's own grade is picked.
    """
    if query.ndim != 3 or gallery.ndim != 3 or query.shape[0] != NUM_GRADES or gallery.shape[0] != NUM_GRADES:
        raise ValueError(f"expected (9, N, D) embeddings, got query {query.shape}, gallery {gallery.shape}")
    qg, gg = np.asarray(query_grades), np.asarray(gallery_grades)
    if len(qg) != query.shape[1] or len(gg) != gallery.shape[1]:
        raise ValueError("one grade per query and per gallery entry is needed")
    if offsets is not None and np.shape(offsets) != (NUM_GRADES, NUM_GRADES):
        raise ValueError(f"offsets must be ({NUM_GRADES}, {NUM_GRADES}), got {np.shape(offsets)}")
    nq, ng = query.shape[1], gallery.shape[1]
    out = np.empty((nq, ng), dtype=np.float32)
    cols = np.arange(ng)
    for a in np.unique(qg):
        rows = np.flatnonzero(qg == a)
        # (9 * n_a, D) @ (D, Ng) -> (9, n_a, Ng); pick version gallery_grades[j] for column j
        sims = (query[:, rows].reshape(-1, query.shape[2]) @ gallery[a].T).reshape(NUM_GRADES, len(rows), ng)
        out[rows] = sims[gg, :, cols].T
        if offsets is not None:
            out[rows] -= offsets[a, gg]
    if plain_fallback:
        q_has = np.abs(query).sum(axis=2) > 0  # (9, Nq)
        g_has = np.abs(gallery).sum(axis=2) > 0 if gallery_has is None else gallery_has  # (9, Ng)
        missing = ~(q_has[gg].T & g_has[qg])  # pair (q, j) needs query version gg[j] and entry version qg[q]
        if missing.any():
            plain = query[0] @ gallery[0].T - (0.0 if offsets is None else offsets[0, 0])
            out[missing] = plain[missing]
    return out


def unification_versions(
    encode: EncodeFn,
    images: np.ndarray | torch.Tensor,
    own_grades: Sequence[int] | np.ndarray,
    unmasked: np.ndarray,
    versions: Sequence[int] | None = None,
    fill: float = 0.0,
    chunk: int = 256,
) -> np.ndarray:
    """(N, 9, D) versions of normalised crops (N, 3, H, W) graded ``own_grades``; ``unmasked``
    (N, D) is their plain embedding, already computed. ``versions`` limits the rows computed (the
    others stay zero). Versions whose masked region is empty or the whole crop reuse ``unmasked``,
    and versions with the same region (k = o and k = 0) are encoded once; the rest go through
    ``encode`` ``chunk`` crops at a time."""
    x = torch.as_tensor(images, dtype=torch.float32)
    own = np.asarray(own_grades, dtype=np.int64).reshape(-1)
    if len(own) != len(x) or len(unmasked) != len(x):
        raise ValueError(f"{len(x)} crops, {len(own)} grades and {len(unmasked)} embeddings must agree")
    wanted = range(NUM_GRADES) if versions is None else sorted({int(k) for k in versions})
    h, w = x.shape[-2:]
    out = np.zeros((len(x), NUM_GRADES, unmasked.shape[1]), dtype=np.float32)
    jobs: dict[tuple[int, frozenset[int]], list[int]] = {}  # (image, grades masked) -> versions
    for i, o in enumerate(own.tolist()):
        for k in wanted:
            region = frozenset({k, o} - {0})
            mask = union_mask(h, w, sorted(region))
            if not mask.any() or mask.all():
                out[i, k] = unmasked[i]
            else:
                jobs.setdefault((i, region), []).append(k)
    keys = list(jobs)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        idx = [i for i, _ in part]
        first = [min(r) for _, r in part]
        second = [max(r) for _, r in part]
        emb, _ = encode(mask_batch(x[idx], first, fill, also=second))
        for (i, region), e in zip(part, emb, strict=True):
            out[i, jobs[(i, region)]] = e
    return out


def _mean_cross_similarity(embeddings: np.ndarray) -> float:
    """Mean cosine over pairs of different rows of L2-normalised ``embeddings``, in O(N D):
    (|sum|^2 - N) / (N (N - 1))."""
    n = len(embeddings)
    total = embeddings.astype(np.float64).sum(0)
    return float((total @ total - n) / (n * (n - 1)))


def similarity_offsets(
    encode: EncodeFn, images: np.ndarray | torch.Tensor, fill: float = 0.0, chunk: int = 256
) -> np.ndarray:
    """(9, 9) table O[a, b]: the mean cosine between two different crops of ``images`` (normalised,
    (N, 3, H, W), N >= 2) when both are painted with the union of grade a's and grade b's regions,
    the comparison a query graded a and an entry graded b meet in (the plain crops where the union
    is empty or the whole crop). Costs one pass per crop and distinct union (about 30)."""
    x = torch.as_tensor(images, dtype=torch.float32)
    if len(x) < 2:
        raise ValueError(f"similarity offsets need at least 2 crops, got {len(x)}")
    h, w = x.shape[-2:]
    by_region: dict[bytes, float] = {}
    out = np.zeros((NUM_GRADES, NUM_GRADES), dtype=np.float32)
    for a in range(NUM_GRADES):
        for b in range(a, NUM_GRADES):
            mask = union_mask(h, w, [a, b])
            key = b"" if not mask.any() or mask.all() else mask.tobytes()
            if key not in by_region:
                parts = []
                for s in range(0, len(x), chunk):
                    part = x[s : s + chunk]
                    parts.append(encode(mask_batch(part, [a] * len(part), fill, also=[b] * len(part)))[0])
                by_region[key] = _mean_cross_similarity(np.concatenate(parts))
            out[a, b] = out[b, a] = by_region[key]
    return out
