"""OAMN occlusion grader T (Chen et al., ICCV 2021, sec. 3.4) and its threshold decision (eq. 8).

Two kinds, both reading the detached masked feature g (no gradient reaches the encoder or the
mask module) and both returning (B, 5): the four location scores s = (s^t, s^b, s^l, s^r) and the
person's visible fraction v in column ``VISIBLE``.

- ``softmax`` (the paper): one fully connected layer + softmax over the four locations on g
  pooled to a small grid, trained towards s^p = 2 * a_aug (eq. 7). The paper has no "no occlusion"
  output: a softmax cannot say "nowhere", so a holistic crop is best fitted by s = 1/4 everywhere
  and recognised only by thresholds. Its v is read off the top score (see ``_softmax_visible``).
- ``visibility`` (ours, issue 12): a small convolutional head (g's spatial layout matters: a person
  pasted in front changes features *somewhere*), sigmoid outputs trained towards s^p = min(1, 2h)
  at the hidden side and 0 elsewhere (eq. 7's targets, with h the exact hidden share of the
  full-body mask) and v = 1 - h. A holistic crop's target is s = 0, v = 1: it is recognised as such.

Decision (eq. 8): location p = argmax s; area a = 0 if s^p < quarter, 1/4 if s^p < half, else 1/2.
For the ``visibility`` kind the holistic decision is v >= ``visible`` instead of s^p < quarter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .occlusion_augment import AREAS, LOCATIONS

__all__ = [
    "GRADER_KINDS",
    "VISIBLE",
    "OcclusionGrader",
    "GradeThresholds",
    "decide_grades",
    "occlusion_score",
    "visible_fraction",
    "calibrate_thresholds",
    "calibrate_visible_threshold",
    "adapt_thresholds",
]

GRADER_KINDS = ("softmax", "visibility")
#: column of the grader output holding the visible fraction v
VISIBLE = len(LOCATIONS)


def _softmax_visible(s: torch.Tensor) -> torch.Tensor:
    """v of the paper's grader: eq. 7 fits s^p = 2a over a floor of 1/4 (holistic), so the hidden
    share is a = (s^p - 1/4) / (3/4) / 2, clipped to [0, 1/2]."""
    top = s.max(1).values
    return 1.0 - ((top - 0.25) / 0.75).clamp(0.0, 1.0) / 2.0


class OcclusionGrader(nn.Module):
    """``forward(g) -> (B, 5)``: four location scores and the visible fraction; detaches its input
    (the paper's stop-gradient)."""

    def __init__(self, in_channels: int, pool_hw: tuple[int, int] = (8, 4), kind: str = "visibility"):
        super().__init__()
        if kind not in GRADER_KINDS:
            raise ValueError(f"grader kind must be one of {GRADER_KINDS}, got {kind!r}")
        self.kind = kind
        self.pool = nn.AdaptiveAvgPool2d(pool_hw)
        cells = pool_hw[0] * pool_hw[1]
        if kind == "softmax":
            self.fc = nn.Linear(in_channels * cells, len(LOCATIONS))
            return
        width = 64
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(
            nn.Linear(width * cells, 128), nn.ReLU(inplace=True), nn.Linear(128, len(LOCATIONS) + 1)
        )

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        g = g.detach()
        if self.kind == "softmax":
            s = torch.softmax(self.fc(self.pool(g).flatten(1)), dim=1)
            return torch.cat([s, _softmax_visible(s)[:, None]], dim=1)
        return torch.sigmoid(self.head(self.pool(self.conv(g)).flatten(1)))


def _locations(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[1] not in (len(LOCATIONS), len(LOCATIONS) + 1):
        raise ValueError(f"grader scores must be (B, {len(LOCATIONS)}) or (B, {VISIBLE + 1}), got {s.shape}")
    return s[:, : len(LOCATIONS)]


def visible_fraction(scores: np.ndarray) -> np.ndarray:
    """(B,) visible fraction of each crop's person from grader output (B, 5); a legacy (B, 4)
    softmax output gets the paper grader's estimate."""
    s = np.asarray(scores, dtype=np.float32)
    if s.ndim == 2 and s.shape[1] == len(LOCATIONS):
        return _softmax_visible(torch.from_numpy(_locations(s).copy())).numpy()
    _locations(s)
    return s[:, VISIBLE]


def occlusion_score(scores: np.ndarray) -> np.ndarray:
    """(B,) how occluded each crop is, 1 - visible fraction: the score to rank or route on."""
    return 1.0 - visible_fraction(scores)


@dataclass(frozen=True)
class GradeThresholds:
    """Eq. 8 thresholds on s^p: below ``quarter`` -> holistic, below ``half`` -> 1/4, else 1/2.
    With ``visible`` set (the ``visibility`` grader), holistic means v >= ``visible`` instead."""

    quarter: float = 0.5
    half: float = 0.75
    visible: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.quarter <= self.half <= 1.0:
            raise ValueError(
                f"grade thresholds must satisfy 0 <= quarter <= half <= 1, "
                f"got quarter={self.quarter}, half={self.half}"
            )
        if self.visible is not None and not 0.0 <= self.visible <= 1.0:
            raise ValueError(f"the visible-fraction threshold must be in [0, 1], got {self.visible}")


def decide_grades(scores: np.ndarray | torch.Tensor, thresholds: GradeThresholds | None = None) -> np.ndarray:
    """Grade indices (``occlusion_augment.grade_index``: 0 holistic, 1..8 location x area) for
    grader output (B, 5) (or a legacy (B, 4)), by eq. 8."""
    thresholds = thresholds or GradeThresholds()
    raw = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    s = _locations(raw)
    loc = s.argmax(1)
    top = s[np.arange(len(s)), loc]
    if thresholds.visible is not None and raw.shape[1] > VISIBLE:
        occluded = raw[:, VISIBLE] < thresholds.visible  # the visibility grader says "holistic" itself
    else:
        occluded = top >= thresholds.quarter
    half = occluded & (top >= thresholds.half)
    # grade_index(LOCATIONS[loc], AREAS[half]) for the occluded rows, 0 for the others
    out = np.where(occluded, 1 + loc * len(AREAS) + half.astype(np.int64), 0).astype(np.int64)
    return out


def calibrate_thresholds(
    holistic_scores: np.ndarray,
    occluded_scores: np.ndarray,
    occluded_grades: np.ndarray,
    max_false_occluded: float = 0.05,
) -> GradeThresholds:
    """Eq. 8 thresholds fitted on held-out crops (never the test set).

    The softmax cannot output the all-zero target of a holistic crop, so on real data holistic
    crops often reach s^p >= 0.5 and get graded occluded; unification then masks crops that were
    whole and loses rank-1. ``quarter`` is therefore raised (never lowered below the paper's 0.5)
    until at most ``max_false_occluded`` of the holistic crops are graded occluded; ``half`` is then
    the value in [quarter, 1] that grades the occluded crops' area best (ties: nearest the paper's 0.75).
    """
    top_h = _locations(holistic_scores).max(1)
    quarter = float(max(0.5, np.quantile(top_h, 1.0 - max_false_occluded)))
    quarter = min(quarter, 1.0)
    truth = np.asarray(occluded_grades)
    best, best_acc = max(quarter, 0.75), -1.0
    for half in sorted(np.linspace(quarter, 1.0, 41), key=lambda h: abs(h - 0.75)):
        acc = float((decide_grades(occluded_scores, GradeThresholds(quarter, float(half))) == truth).mean())
        if acc > best_acc:
            best, best_acc = float(half), acc
    return GradeThresholds(quarter, best)


def calibrate_visible_threshold(
    holistic_visible: np.ndarray, max_false_occluded: float = 0.05, floor: float = 0.5
) -> float:
    """The ``visible`` threshold of the ``visibility`` grader from held-out whole crops (never the
    test set): the value below which at most ``max_false_occluded`` of them fall (a whole crop graded
    occluded is masked by unification and loses rank-1), never below ``floor``."""
    v = np.asarray(holistic_visible, dtype=np.float64)
    if v.size == 0:
        raise ValueError("calibrating the visible threshold needs at least one holistic crop")
    return float(np.clip(np.quantile(v, max_false_occluded), floor, 1.0))


def adapt_thresholds(
    thresholds: GradeThresholds, reference_median: float, camera_scores: np.ndarray
) -> GradeThresholds:
    """``thresholds`` for one camera from the grader output of its own crops (``camera_scores``,
    unlabelled) and ``reference_median``, the same statistic on the held-out crops the thresholds
    were calibrated on. The ``visibility`` grader moves ``visible`` by the difference between the
    median visible fraction of the camera's crops and the reference; the paper's grader moves
    ``quarter`` by the difference of the median top score (never below 0.5; ``half`` is raised to
    ``quarter`` if needed).

    On an unseen camera the grader's scores drift (top-score median 0.356 on held-out PETA, 0.362
    on MIT, 0.39 on VIPeR for the paper's grader), so fixed thresholds grade more whole crops as
    occluded (5 %, 8 %, 13-16 %). The median is used because most crops of a camera are whole: it
    stays put when some are occluded, where a quantile of the camera's crops would chase the
    occlusions (on MIT with 20 % of the crops occluded, the 95th percentile moved ``quarter`` to
    0.85 and found 27 % of the occlusions; the median to 0.54 and found 76 %, with 5 % false occluded).
    """
    s = np.asarray(camera_scores)
    if len(s) == 0:
        raise ValueError("adapting grade thresholds needs at least one crop of the camera")
    if thresholds.visible is not None and s.shape[1] > VISIBLE:
        visible = float(
            np.clip(thresholds.visible + float(np.median(s[:, VISIBLE])) - reference_median, 0, 1)
        )
        return GradeThresholds(thresholds.quarter, thresholds.half, visible)
    top = _locations(s).max(1)
    quarter = float(min(1.0, max(0.5, thresholds.quarter + float(np.median(top)) - reference_median)))
    return GradeThresholds(quarter, max(quarter, thresholds.half))
