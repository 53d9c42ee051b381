"""Occlusion unification (OAMN, Chen et al., ICCV 2021, sec. 3.4): "occlude them all".

Every image (gallery entry or query) has 9 embeddings: holistic and masked with each of the 8
occlusion types. A query graded (p, a) is compared with each gallery entry's (p, a) embedding: the
gallery is occluded like the query. The paper's exception: "we may also occlude the query image
correspondingly if the gallery image already contains occlusion". So for gallery entry j graded
(p_j, a_j) the query side uses the query masked with (p_j, a_j) (its unmasked embedding when the
entry is holistic). Each side then lacks both regions: one really occluded, one masked out, the
same on both sides, which is the unification the paper asks for, and it covers every pair of
grades with the 9 precomputed embeddings.

    sim(q, j) = < Q[grade_j, q], G[grade_q, j] >
"""

from __future__ import annotations

import numpy as np

from .occlusion_augment import NUM_GRADES

__all__ = ["unified_similarity", "plain_similarity"]


def plain_similarity(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """No unification: holistic embeddings only, (Nq, D) x (Ng, D) -> (Nq, Ng)."""
    return np.ascontiguousarray(query, dtype=np.float32) @ np.ascontiguousarray(gallery, dtype=np.float32).T


def unified_similarity(
    query: np.ndarray, query_grades: np.ndarray, gallery: np.ndarray, gallery_grades: np.ndarray
) -> np.ndarray:
    """``query`` (9, Nq, D) and ``gallery`` (9, Ng, D): embeddings per grade (row 0 = unmasked);
    grades are indices 0..8. Returns (Nq, Ng) similarities (embeddings assumed L2-normalised).

    One matrix product per distinct query grade: G[a] (Ng, D) against all 9 masked versions of the
    queries graded a, then the column of each gallery entry's own grade is picked.
    """
    if query.ndim != 3 or gallery.ndim != 3 or query.shape[0] != NUM_GRADES or gallery.shape[0] != NUM_GRADES:
        raise ValueError(f"expected (9, N, D) embeddings, got query {query.shape}, gallery {gallery.shape}")
    qg, gg = np.asarray(query_grades), np.asarray(gallery_grades)
    if len(qg) != query.shape[1] or len(gg) != gallery.shape[1]:
        raise ValueError("one grade per query and per gallery entry is needed")
    nq, ng = query.shape[1], gallery.shape[1]
    out = np.empty((nq, ng), dtype=np.float32)
    cols = np.arange(ng)
    for a in np.unique(qg):
        rows = np.flatnonzero(qg == a)
        # (9 * n_a, D) @ (D, Ng) -> (9, n_a, Ng); pick version gallery_grades[j] for column j
        sims = (query[:, rows].reshape(-1, query.shape[2]) @ gallery[a].T).reshape(NUM_GRADES, len(rows), ng)
        out[rows] = sims[gg, :, cols].T
    return out
