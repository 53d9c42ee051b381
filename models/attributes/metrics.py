"""Pedestrian-attribute metrics as the PAR papers report them (Li et al. protocol, used by DeepMAR,
Fabbri et al. sec. 4 and MAN-PAR sec. 4.2).

* label-based mean accuracy, MAN-PAR eq. 6: mA = 1/(2M) sum_m (TP_m / P_m + TN_m / N_m);
* example-based accuracy |Y and Yhat| / |Y or Yhat|, precision |Y and Yhat| / |Yhat|, recall
  |Y and Yhat| / |Y|, averaged over samples, and F1 = 2 P R / (P + R) of those averages;
* a per-attribute table (positives, TPR, TNR, balanced accuracy, precision, recall, F1).

All values are fractions in [0, 1]. Partial labels: a label < 0 or NaN is unknown (an attribute the
sample's dataset does not label, RAP's "uncertain", an empty CSV cell) and is left out of every
number: the label-based ones count only labelled entries, and a sample's example-based scores use
only the attributes labelled for that sample (a sample with none is left out, and counted). An
attribute with no labelled entry at all is not scored; the result lists ``scored_attributes`` and
``unscored_attributes``. Conventions for empty denominators: an attribute with no positives (or no
negatives) in the test set contributes only the half of eq. 6 that exists; a sample with no predicted
(or no true) attribute counts precision (recall) as 0, unless both sets are empty, which counts as a
perfect sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["attribute_metrics", "binarize", "choose_thresholds", "format_metrics"]


def binarize(probs_or_preds: np.ndarray, threshold: float | np.ndarray | Sequence[float] = 0.5) -> np.ndarray:
    """0/1 predictions: probabilities are thresholded (>= threshold; one per attribute, or one for
    all), 0/1 arrays pass through."""
    x = np.asarray(probs_or_preds)
    if x.dtype == bool:
        return x.astype(np.int64)
    return (x >= np.asarray(threshold, dtype=np.float64)).astype(np.int64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (an undefined ratio, not a zero)."""
    return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def attribute_metrics(
    probs_or_preds: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    threshold: float | np.ndarray | Sequence[float] = 0.5,
) -> dict[str, Any]:
    """mA, accuracy, precision, recall, F1 and a per-attribute table for (N, A) predictions and labels
    (labels 1 / 0, unknown < 0 or NaN); ``threshold`` is one value or one per attribute."""
    preds = np.asarray(probs_or_preds)
    y = np.asarray(labels, dtype=np.float64)
    if preds.ndim != 2 or preds.shape != y.shape:
        raise ValueError(f"predictions and labels must both be (N, A); got {preds.shape} and {y.shape}")
    if len(names) != y.shape[1]:
        raise ValueError(f"names has {len(names)} entries but there are {y.shape[1]} attributes")
    if y.shape[0] == 0:
        raise ValueError("no samples to evaluate (N = 0)")
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim not in (0, 1) or (thr.ndim == 1 and thr.shape[0] != y.shape[1]):
        raise ValueError(f"threshold must be one value or one per attribute ({y.shape[1]}), got {thr.shape}")
    known = np.isfinite(y) & (y >= 0)
    if not known.any():
        raise ValueError("no labelled entries to evaluate (every label is unknown)")
    yhat = binarize(preds, thr) * known  # an unknown entry is neither a predicted nor a true positive
    pos = (y > 0.5) & known
    neg = (~pos) & known
    tp = (pos & (yhat == 1)).sum(0).astype(np.float64)
    tn = (neg & (yhat == 0)).sum(0).astype(np.float64)
    fp = (neg & (yhat == 1)).sum(0).astype(np.float64)
    n_pos, n_neg = pos.sum(0).astype(np.float64), neg.sum(0).astype(np.float64)
    tpr, tnr = _safe_div(tp, n_pos), _safe_div(tn, n_neg)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # eq. 6 per attribute (one half if the other is empty)
        balanced = np.nanmean(np.stack([tpr, tnr]), axis=0)
    label_mA = float(np.nanmean(balanced))

    # example-based (Li et al. 2016) over each sample's labelled attributes (yhat is 0 elsewhere)
    yb = pos.astype(np.int64)
    rows = known.any(1)  # samples with at least one labelled attribute
    inter = (yb & yhat).sum(1)[rows].astype(np.float64)
    union = (yb | yhat).sum(1)[rows].astype(np.float64)
    n_pred, n_true = yhat.sum(1)[rows].astype(np.float64), yb.sum(1)[rows].astype(np.float64)
    both_empty = union == 0
    acc_i = np.where(both_empty, 1.0, inter / np.maximum(union, 1))
    prec_i = np.where(both_empty, 1.0, np.where(n_pred > 0, inter / np.maximum(n_pred, 1), 0.0))
    rec_i = np.where(both_empty, 1.0, np.where(n_true > 0, inter / np.maximum(n_true, 1), 0.0))
    precision, recall = float(prec_i.mean()), float(rec_i.mean())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    scored = known.any(0)

    attr_prec = _safe_div(tp, tp + fp)
    attr_rec = tpr
    with np.errstate(invalid="ignore", divide="ignore"):
        attr_f1 = np.where((attr_prec + attr_rec) > 0, 2 * attr_prec * attr_rec / (attr_prec + attr_rec), 0.0)
    table = []
    for i, name in enumerate(names):
        table.append(
            {
                "name": str(name),
                "scored": bool(scored[i]),
                "positives": int(n_pos[i]),
                "negatives": int(n_neg[i]),
                "tpr": _num(tpr[i]),
                "tnr": _num(tnr[i]),
                "mA": _num(balanced[i]),
                "accuracy": _num((tp[i] + tn[i]) / max(n_pos[i] + n_neg[i], 1)),
                "precision": _num(attr_prec[i]),
                "recall": _num(attr_rec[i]),
                "f1": _num(attr_f1[i]),
            }
        )
    return {
        "mA": label_mA,
        "accuracy": float(acc_i.mean()),
        "precision": precision,
        "recall": recall,
        "f1": float(f1),
        "num_samples": int(y.shape[0]),
        "num_scored_samples": int(rows.sum()),
        "num_attributes": int(scored.sum()),
        "scored_attributes": [str(n) for n, k in zip(names, scored, strict=True) if k],
        "unscored_attributes": [str(n) for n, k in zip(names, scored, strict=True) if not k],
        "num_labelled_entries": int(known.sum()),
        "threshold": float(thr) if thr.ndim == 0 else [float(t) for t in thr],
        "per_attribute": table,
    }


def choose_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    criterion: str = "balanced_accuracy",
    grid: Sequence[float] | np.ndarray | None = None,
    default: float = 0.5,
) -> np.ndarray:
    """Per attribute, the threshold of ``grid`` (default 0.05, 0.10, ..., 0.95) that maximises
    ``criterion`` (``balanced_accuracy``: (TPR + TNR) / 2, the attribute's term of mA; ``f1``) over its
    labelled entries; ties go to the threshold nearest ``default``. An attribute without a labelled
    positive and a labelled negative keeps ``default``. Choose on held-out TRAINING data only."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"probs and labels must both be (N, A); got {p.shape} and {y.shape}")
    if criterion not in ("balanced_accuracy", "f1"):
        raise ValueError(f"criterion must be 'balanced_accuracy' or 'f1', got {criterion!r}")
    ts = np.round(np.arange(0.05, 0.951, 0.05), 2) if grid is None else np.asarray(grid, np.float64)
    known = np.isfinite(y) & (y >= 0)
    pos, neg = (y > 0.5) & known, (y <= 0.5) & known
    n_pos, n_neg = pos.sum(0), neg.sum(0)
    scores = np.empty((len(ts), p.shape[1]))
    for k, t in enumerate(ts):
        hat = p >= t
        tp, tn = (hat & pos).sum(0), (~hat & neg).sum(0)
        fp, fn = (hat & neg).sum(0), (~hat & pos).sum(0)
        if criterion == "balanced_accuracy":
            scores[k] = 0.5 * (tp / np.maximum(n_pos, 1) + tn / np.maximum(n_neg, 1))
        else:
            scores[k] = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    # best score, ties broken towards the default threshold
    order = np.argsort(np.abs(ts - default), kind="stable")
    best = order[np.argmax(scores[order], axis=0)]
    out = ts[best].astype(np.float32)
    out[(n_pos == 0) | (n_neg == 0)] = default
    return out


def _num(value: float) -> float | None:
    """JSON-friendly: NaN (undefined ratio) becomes None."""
    return None if np.isnan(value) else float(value)


def format_metrics(metrics: dict[str, Any], per_attribute: bool = True) -> str:
    """The table the papers print: summary line in percent, then one line per attribute."""
    lines = [
        "mA {:.2f}  acc {:.2f}  prec {:.2f}  rec {:.2f}  F1 {:.2f}  (N={})".format(
            100 * metrics["mA"],
            100 * metrics["accuracy"],
            100 * metrics["precision"],
            100 * metrics["recall"],
            100 * metrics["f1"],
            metrics["num_samples"],
        )
    ]
    unscored = metrics.get("unscored_attributes") or []
    if unscored:
        lines.append(f"not scored (no labelled entry): {', '.join(unscored)}")
    if per_attribute:
        lines.append(f"{'attribute':<24}{'pos':>6}{'mA':>8}{'TPR':>8}{'TNR':>8}{'F1':>8}")
        for row in (r for r in metrics["per_attribute"] if r.get("scored", True)):

            def pct(v: float | None) -> str:
                return f"{100 * v:8.2f}" if v is not None else f"{'-':>8}"

            lines.append(
                f"{row['name']:<24}{row['positives']:>6}{pct(row['mA'])}{pct(row['tpr'])}"
                f"{pct(row['tnr'])}{pct(row['f1'])}"
            )
    return "\n".join(lines)
