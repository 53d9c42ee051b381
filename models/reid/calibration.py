"""Calibrate a trained OAMN on held-out crops (never the test set): the grader's eq. 8 thresholds,
the median top grader score that per-camera adaptation starts from, and the similarity offsets of
unified matching. ``amodal train reid`` runs it at the end of training and
``amodal calibrate-reid`` on an existing checkpoint; the results go into the model config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from models.data.reid_datasets import ReIDRecord, normalize, read_market_folder, read_peta_reid

from .evaluation import Model, encode, validate
from .grader import GradeThresholds, calibrate_thresholds, calibrate_visible_threshold, decide_grades
from .grader_data import RealisticSet
from .grader_eval import area_class_from_grades, area_class_from_visibility
from .unification import similarity_offsets

__all__ = ["calibrate", "calibrate_visibility", "held_out_records", "OFFSET_CROPS"]

#: crops the similarity offsets are measured on (each costs about 30 passes)
OFFSET_CROPS = 256


def _offsets(model: Model, images_uint8: torch.Tensor, seed: int, batch: int) -> list:
    """Similarity offsets measured on a ``seed``-drawn sample of ``OFFSET_CROPS`` crops."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(images_uint8))[:OFFSET_CROPS])
    offsets = similarity_offsets(lambda x: encode(model, x, batch), normalize(images_uint8[pick]))
    return np.round(offsets.astype(np.float64), 6).tolist()


def calibrate(
    model: Model, images_uint8: torch.Tensor, pids: Sequence[str], seed: int = 0, batch: int = 64
) -> dict:
    """Model-config entries for ``model`` from held-out crops (uint8 (N, 3, H, W)) and their ids:
    ``grade_thresholds``, ``grader_reference_median`` and ``similarity_offsets``. The thresholds use
    the crops and their synthetic occlusions with ``seed`` (``evaluation.validate``); the offsets a
    ``seed``-drawn sample of ``OFFSET_CROPS`` crops."""
    _, scores_h, scores_o, grades_o = validate(model, images_uint8, pids, seed=seed, batch=batch)
    thresholds = calibrate_thresholds(scores_h, scores_o, grades_o)
    offsets = _offsets(model, images_uint8, seed, batch)
    return {
        "grade_thresholds": [thresholds.quarter, thresholds.half],
        "grader_reference_median": float(np.median(scores_h[:, :4].max(1))),
        "similarity_offsets": offsets,
    }


def calibrate_visibility(
    model: Model,
    images_uint8: torch.Tensor,
    realistic: RealisticSet,
    seed: int = 0,
    batch: int = 64,
    max_false_occluded: float = 0.05,
) -> dict:
    """Model-config entries for a ``visibility`` grader from held-out crops (never the test set):
    ``visible_threshold`` lets at most ``max_false_occluded`` of the whole crops of ``realistic``
    be graded occluded; ``grade_thresholds``' ``half`` is the one that grades the occluded crops'
    area best; ``grader_reference_median`` is the whole crops' median visible fraction; the
    similarity offsets as in ``calibrate``."""
    _, scores = encode(model, normalize(realistic.images), batch)
    v = scores[:, -1]
    hidden = realistic.hidden_share
    whole = hidden < 0.125
    visible = calibrate_visible_threshold(v[whole], max_false_occluded)
    truth = area_class_from_visibility(1.0 - hidden)
    occluded = truth > 0
    best, best_acc = 0.75, -1.0
    for half in sorted(np.linspace(0.3, 1.0, 29), key=lambda x: abs(x - 0.75)):
        grades = decide_grades(scores[occluded], GradeThresholds(min(0.5, half), float(half), visible))
        area = area_class_from_grades(grades)
        acc = float((area == truth[occluded]).mean()) if occluded.any() else 0.0
        if acc > best_acc:
            best, best_acc = float(half), acc
    offsets = _offsets(model, images_uint8, seed, batch)
    return {
        "grade_thresholds": [min(0.5, best), best],
        "visible_threshold": visible,
        "grader_reference_median": float(np.median(v[whole])),
        "similarity_offsets": offsets,
    }


def held_out_records(extra: Mapping, data: str | Path, source: str = "the checkpoint") -> list[ReIDRecord]:
    """The records of the identities an OAMN checkpoint held out in training, from its ``extra``
    (``held_out_ids``, ``data``), read from ``data`` in the checkpoint's data layout, in the order
    training read them. ``source`` names the checkpoint in errors."""
    held = set(extra.get("held_out_ids") or [])
    if not held:
        raise ValueError(f"{source} lists no held-out identities (trained without data.holdout_ids)")
    layout = extra["data"].get("layout", "peta")
    records = (
        read_market_folder(data) if layout == "market" else read_peta_reid(data, extra["data"]["subsets"])
    )
    records = [r for r in records if r.pid in held]
    if not records:
        raise ValueError(f"none of the {len(held)} identities {source} held out are in {data}")
    return records
