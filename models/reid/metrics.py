"""Single-query CMC and mAP (the Market-1501 protocol, Zheng et al. ICCV 2015; OAMN sec. 4.1).

For every query, gallery entries with the same identity *and* the same camera are excluded; a
query with no remaining true match is skipped (and counted). CMC rank-k is the fraction of queries
whose first true match is within the top k; AP is the area under the query's precision-recall curve.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cmc_map", "confusion_matrix"]


def cmc_map(
    similarity: np.ndarray,
    query_ids: np.ndarray,
    gallery_ids: np.ndarray,
    query_cams: np.ndarray | None = None,
    gallery_cams: np.ndarray | None = None,
    ranks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """``similarity`` (Nq, Ng), higher = more similar. Returns rank-k (in %), mAP (in %) and counts."""
    sim = np.asarray(similarity, dtype=np.float64)
    q_ids, g_ids = np.asarray(query_ids), np.asarray(gallery_ids)
    if sim.shape != (len(q_ids), len(g_ids)):
        raise ValueError(
            f"similarity shape {sim.shape} does not match {len(q_ids)} queries x {len(g_ids)} gallery"
        )
    if (query_cams is None) != (gallery_cams is None):
        raise ValueError("give both query_cams and gallery_cams or neither")
    max_rank = max(ranks)
    hits = np.zeros(max_rank)
    aps = []
    skipped = 0
    for i in range(len(q_ids)):
        keep = np.ones(len(g_ids), dtype=bool)
        if query_cams is not None:
            keep &= ~((g_ids == q_ids[i]) & (np.asarray(gallery_cams) == np.asarray(query_cams)[i]))
        order = np.argsort(-sim[i][keep], kind="stable")
        matches = (g_ids[keep] == q_ids[i])[order]
        if not matches.any():
            skipped += 1
            continue
        first = int(np.argmax(matches))
        if first < max_rank:
            hits[first:] += 1
        cum = np.cumsum(matches)
        precision = cum[matches] / (np.flatnonzero(matches) + 1)
        aps.append(precision.mean())
    n = len(q_ids) - skipped
    if n == 0:
        raise ValueError("no query has a true match in the gallery")
    out = {f"rank{r}": float(100.0 * hits[r - 1] / n) for r in ranks}
    out["mAP"] = 100.0 * float(np.mean(aps))
    out["num_queries"] = n
    out["skipped_queries"] = skipped
    return out


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts, rows = truth, columns = prediction."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(true), np.asarray(pred)), 1)
    return cm
