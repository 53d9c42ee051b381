"""Self-supervised adaptation of the ``visibility`` occlusion grader to one site's own recordings.

The grader learnt occlusions from synthetic composites; a site's cameras differ (light, lenses,
heights, crowds). In tracked video no label is needed to find real occlusions: when the box of a
person nearer the camera (its bottom edge y2 lower in the frame) overlaps another person's box, the
overlap tells on which side that person is hidden and bounds how much (a box is not a silhouette:
the hidden share is at most the covered share). From such pseudo labels the grader alone is
fine-tuned, pulled back towards what synthetic training taught by distillation, and its
``visible_threshold`` recalibrated on clear crops of tracks held out of the fitting.

    covers = box_occlusion(boxes_xyxy, frame_hw)            # per box: covered share, side, truncated
    label = pseudo_label(covers[i])                         # "occluded", "clear" or None (unused)
    chosen = sample_boxes(candidates, track_step=5, max_crops=2000, seed=0)
    crop = crop_box(frame_bgr, box.xyxy, cfg.input_size)     # RGB uint8 at the network input size
    result = adapt_grader(model, cfg, occluded, clear, steps=300)   # model.grader fine-tuned in place
    result.model_config                                     # cfg with the new visible threshold

Pseudo labels: ``occluded`` = covered share >= ``min_covered`` (0.3) and not truncated; ``clear`` =
nothing covered, not truncated and the detector sure of it (confidence >= ``min_confidence``, 0.5);
unused: partly covered and truncated boxes (the frame border may hide part of the person, so their
label is unknown), boxes nearly the same as a box in front (IoU >= ``max_front_iou``, 0.5: a
duplicate detection of one person, or a person hidden whole behind one of the same size; the crop
shows the front person whole either way) and unsure clear boxes (on real footage the detector's
long-lived false positives, a bollard, a patch of road, are low-confidence "people" with nothing in
front of them). ``amodal adapt-grader`` reads the recording and the pipeline's JSONL and writes the
adapted checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.data.reid_datasets import normalize
from models.data.transforms import resize

from .grader import VISIBLE, GradeThresholds, calibrate_visible_threshold, decide_grades, occlusion_score
from .grader_eval import MIN_CROP_HW, pixel_bounds, roc_auc, spearman
from .occlusion_augment import LOCATIONS
from .realistic_occlusion import hidden_location

__all__ = [
    "BORDER_SHARE",
    "BoxCover",
    "Candidate",
    "LabelCounts",
    "SiteCrops",
    "Adaptation",
    "AdaptationError",
    "MAX_FRONT_IOU",
    "MIN_CLEAR_CONFIDENCE",
    "MIN_COVERED",
    "MIN_CROPS",
    "box_occlusion",
    "pseudo_label",
    "label_boxes",
    "sample_boxes",
    "crop_box",
    "split_tracks",
    "grader_features",
    "check_metrics",
    "require_visibility_grader",
    "adapt_grader",
]

logger = logging.getLogger(__name__)

#: a box at least this much covered by boxes in front of it is a pseudo-labelled occlusion
MIN_COVERED = 0.3
#: fewer occluded or clear crops than this and adaptation is refused
MIN_CROPS = 20
#: ranking margin between an occluded and a clear crop's occlusion score
RANK_MARGIN = 0.2
#: margin by which the covered side's score should exceed the others'
LOCATION_MARGIN = 0.1
#: a box this close to the frame edge (share of the frame's height or width) may be cut by it
BORDER_SHARE = 0.015
#: a box this similar (IoU) to a box in front is the same box: a duplicate or a person hidden whole
MAX_FRONT_IOU = 0.5
#: a clear pseudo label needs the detector at least this sure the box is a person
MIN_CLEAR_CONFIDENCE = 0.5
#: weight of the clear crops' pull towards v = 1, s = 0 (some clear crops are hidden by objects)
CLEAR_WEIGHT = 0.2
#: weight of the distillation towards the original grader's outputs
DISTILL_WEIGHT = 0.5

Label = Literal["occluded", "clear"]


class AdaptationError(ValueError):
    """The checkpoint or the footage cannot be used for adaptation (the message says why)."""


@dataclass(frozen=True)
class BoxCover:
    """What the boxes in front of a box say about it: ``covered`` share of its area in [0, 1],
    ``location`` (index in LOCATIONS of the covered side, -1 when nothing is covered),
    ``truncated`` (within the border margin of the frame edge: the border may hide part of it) and
    ``front_iou`` (the largest IoU with a box in front, 0 when none is)."""

    covered: float
    location: int
    truncated: bool
    front_iou: float = 0.0


def box_occlusion(
    boxes_xyxy: np.ndarray | Sequence[Sequence[float]],
    frame_hw: Sequence[int],
    grid: tuple[int, int] = (32, 16),
    border: float = BORDER_SHARE,
) -> list[BoxCover]:
    """Per box of one frame: each box rasterised on a ``grid`` (rows, columns) of cells, a cell
    covered when its centre lies in a box whose bottom y2 is larger (that person is nearer the
    camera, in front); the covered side is ``realistic_occlusion.hidden_location`` of the covered
    cells in the full grid. A box whose edge is within ``border`` of the frame's height (top,
    bottom) or width (left, right) of the frame edge, and at least 2 px, is truncated: a detector's
    box of a person the edge cuts ends a few pixels inside the frame, not on its edge."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) x1, y1, x2, y2, got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes must be finite")
    gh, gw = int(grid[0]), int(grid[1])
    if gh < 1 or gw < 1:
        raise ValueError(f"grid must be positive (rows, columns), got {grid}")
    h, w = float(frame_hw[0]), float(frame_hw[1])
    my, mx = max(2.0, border * h), max(2.0, border * w)
    body = np.ones((gh, gw), dtype=bool)
    rows, cols = (np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw
    out = []
    for x1, y1, x2, y2 in boxes:
        truncated = bool(x1 <= mx or y1 <= my or x2 >= w - mx or y2 >= h - my)
        cy, cx = y1 + rows * (y2 - y1), x1 + cols * (x2 - x1)
        covered = np.zeros((gh, gw), dtype=bool)
        front = boxes[boxes[:, 3] > y2]
        for fx1, fy1, fx2, fy2 in front:
            covered |= ((cy >= fy1) & (cy < fy2))[:, None] & ((cx >= fx1) & (cx < fx2))[None, :]
        share = float(covered.mean())
        location = hidden_location(body, covered) if share > 0 else -1
        out.append(BoxCover(share, location, truncated, _largest_iou((x1, y1, x2, y2), front)))
    return out


def _largest_iou(box: Sequence[float], others: np.ndarray) -> float:
    if len(others) == 0:
        return 0.0
    x1, y1, x2, y2 = box
    iw = np.clip(np.minimum(x2, others[:, 2]) - np.maximum(x1, others[:, 0]), 0.0, None)
    ih = np.clip(np.minimum(y2, others[:, 3]) - np.maximum(y1, others[:, 1]), 0.0, None)
    inter = iw * ih
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = (x2 - x1) * (y2 - y1) + areas - inter
    return float(np.max(np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)))


def pseudo_label(
    cover: BoxCover,
    min_covered: float = MIN_COVERED,
    confidence: float | None = None,
    min_confidence: float = MIN_CLEAR_CONFIDENCE,
    max_front_iou: float = MAX_FRONT_IOU,
) -> Label | None:
    """``occluded`` (covered >= ``min_covered``), ``clear`` (nothing covered and the detector's
    ``confidence`` >= ``min_confidence``; None = not known, not checked) or None: truncated, nearly
    the same as a box in front (IoU >= ``max_front_iou``), partly covered or unsure clear boxes say
    nothing certain."""
    return _label_and_reason(cover, min_covered, confidence, min_confidence, max_front_iou)[0]


def _label_and_reason(
    cover: BoxCover,
    min_covered: float,
    confidence: float | None,
    min_confidence: float,
    max_front_iou: float,
) -> tuple[Label | None, str]:
    """(label, the LabelCounts field the box is counted in)."""
    if cover.truncated:
        return None, "truncated"
    if cover.front_iou >= max_front_iou:
        return None, "same_box"
    if cover.covered >= min_covered:
        return "occluded", "occluded"
    if cover.covered > 0.0:
        return None, "partial"
    if confidence is not None and confidence < min_confidence:
        return None, "unsure"
    return "clear", "clear"


@dataclass(frozen=True)
class Candidate:
    """One pseudo-labelled box: ``key`` says where it comes from (the caller's, e.g. a JSONL line
    number), ``frame`` orders a track's boxes (the step rule)."""

    key: int
    frame: int
    track_id: int
    xyxy: tuple[float, float, float, float]
    covered: float
    location: int
    label: Label


@dataclass
class LabelCounts:
    """Boxes seen and how each was labelled (each box counted once, in this order of precedence)."""

    boxes: int = 0
    small: int = 0  # inside part lower or narrower than MIN_CROP_HW
    truncated: int = 0
    same_box: int = 0  # IoU with a box in front >= max_front_iou
    occluded: int = 0
    clear: int = 0
    partial: int = 0  # 0 < covered < min_covered
    unsure: int = 0  # nothing in front, detector confidence < min_confidence

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def label_boxes(
    key: int,
    frame: int,
    track_ids: Sequence[int],
    boxes_xyxy: np.ndarray,
    frame_hw: Sequence[int],
    counts: LabelCounts,
    min_covered: float = MIN_COVERED,
    grid: tuple[int, int] = (32, 16),
    border: float = BORDER_SHARE,
    *,
    confidences: Sequence[float | None] | None = None,
    min_confidence: float = MIN_CLEAR_CONFIDENCE,
    max_front_iou: float = MAX_FRONT_IOU,
) -> list[Candidate]:
    """The pseudo-labelled boxes of one frame (all its tracked boxes are needed: any may be in front
    of another; ``confidences``, one per box or None when unknown, are the detector's);
    ``counts`` is updated with every box."""
    boxes = np.asarray(boxes_xyxy).reshape(-1, 4)
    covers = box_occlusion(boxes, frame_hw, grid, border)
    if confidences is None:
        confidences = [None] * len(boxes)
    out = []
    for track, box, cover, conf in zip(track_ids, boxes, covers, confidences, strict=True):
        counts.boxes += 1
        x0, y0, x1, y1 = pixel_bounds(box, frame_hw)
        if y1 - y0 < MIN_CROP_HW[0] or x1 - x0 < MIN_CROP_HW[1]:
            counts.small += 1
            continue
        label, reason = _label_and_reason(cover, min_covered, conf, min_confidence, max_front_iou)
        setattr(counts, reason, getattr(counts, reason) + 1)
        if label is None:
            continue
        xyxy = tuple(float(v) for v in box)
        out.append(Candidate(key, frame, int(track), xyxy, cover.covered, cover.location, label))
    return out


def sample_boxes(
    candidates: Sequence[Candidate], track_step: int = 5, max_crops: int = 2000, seed: int = 0
) -> list[Candidate]:
    """At most one box per track every ``track_step`` frames (a track's consecutive frames are
    nearly the same crop; the first usable box of a track is kept, then the next one at least
    ``track_step`` frames later), then at most ``max_crops`` per label drawn with ``seed``.
    Returned in (frame, track) order."""
    if track_step < 1 or max_crops < 1:
        raise ValueError(f"track_step and max_crops must be >= 1, got {track_step}, {max_crops}")
    last: dict[int, int] = {}
    kept: dict[str, list[Candidate]] = {"occluded": [], "clear": []}
    for c in sorted(candidates, key=lambda c: (c.frame, c.track_id)):
        if c.track_id in last and c.frame - last[c.track_id] < track_step:
            continue
        last[c.track_id] = c.frame
        kept[c.label].append(c)
    rng = np.random.default_rng(seed)
    out = []
    for label in ("occluded", "clear"):
        items = kept[label]
        if len(items) > max_crops:
            items = [items[i] for i in np.sort(rng.choice(len(items), max_crops, replace=False))]
        out.extend(items)
    return sorted(out, key=lambda c: (c.frame, c.track_id))


def crop_box(image_bgr: np.ndarray, xyxy: Sequence[float], size_hw: Sequence[int]) -> np.ndarray:
    """The box's part inside the frame, resized to ``size_hw`` as the pipeline's predictors resize
    (``models.data.transforms.resize``) and turned to RGB: uint8 (H, W, 3)."""
    x0, y0, x1, y1 = pixel_bounds(xyxy, image_bgr.shape[:2])
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"box {tuple(xyxy)} lies outside the {image_bgr.shape[1]}x{image_bgr.shape[0]} frame"
        )
    crop = resize(np.ascontiguousarray(image_bgr[y0:y1, x0:x1]), size_hw)
    return np.ascontiguousarray(crop[..., ::-1])


@dataclass
class SiteCrops:
    """Pseudo-labelled crops of one label: ``images`` uint8 (N, 3, H, W) RGB at the network input
    size, ``covered`` share and covered side ``location`` (-1 for clear crops), ``track_id``."""

    images: torch.Tensor
    covered: np.ndarray
    location: np.ndarray
    track_id: np.ndarray

    def __post_init__(self) -> None:
        self.covered = np.asarray(self.covered, dtype=np.float64).reshape(-1)
        self.location = np.asarray(self.location, dtype=np.int64).reshape(-1)
        self.track_id = np.asarray(self.track_id, dtype=np.int64).reshape(-1)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        n = len(self.images)
        if not len(self.covered) == len(self.location) == len(self.track_id) == n:
            raise ValueError(
                f"covered, location and track_id need one entry per image ({n}), got "
                f"{len(self.covered)}, {len(self.location)}, {len(self.track_id)}"
            )

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_list(
        cls, crops: Sequence[np.ndarray], boxes: Sequence[Candidate], size_hw: Sequence[int]
    ) -> SiteCrops:
        """From RGB uint8 (H, W, 3) crops and the candidates they were cut for."""
        h, w = int(size_hw[0]), int(size_hw[1])
        images = torch.zeros((len(crops), 3, h, w), dtype=torch.uint8)
        for i, crop in enumerate(crops):
            images[i] = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
        return cls(
            images,
            np.array([b.covered for b in boxes], dtype=np.float64),
            np.array([b.location for b in boxes], dtype=np.int64),
            np.array([b.track_id for b in boxes], dtype=np.int64),
        )


def split_tracks(
    occluded_tracks: Sequence[int], clear_tracks: Sequence[int], seed: int = 0, check_every: int = 4
) -> frozenset[int]:
    """Track ids held out to check adaptation (never adapted on): the tracks with an occluded crop
    and the other tracks are each shuffled with ``seed`` and every ``check_every``-th goes to the
    check part, so both parts see occlusions when at least two tracks have them (a group of one
    track stays on the adaptation side)."""
    occ = sorted(set(int(t) for t in occluded_tracks))
    rest = sorted(set(int(t) for t in clear_tracks) - set(occ))
    check: set[int] = set()
    for salt, group in enumerate((occ, rest)):
        if len(group) < 2:
            continue
        rng = np.random.default_rng([seed, salt])
        order = rng.permutation(len(group))
        check.update(group[i] for i in order[::check_every])
    return frozenset(check)


@torch.no_grad()
def grader_features(model: nn.Module, images_uint8: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """g = the mask module's output on E^I (the grader's input) for uint8 crops, in eval mode and
    without gradient: computed once, the grader is then trained on the cache."""
    model.eval()
    device = next(model.parameters()).device
    parts = [
        model.masked_features(normalize(images_uint8[i : i + batch_size].to(device)))
        for i in range(0, len(images_uint8), batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


@torch.no_grad()
def _grade(grader: nn.Module, g: torch.Tensor, batch_size: int) -> np.ndarray:
    grader.eval()
    out = [grader(g[i : i + batch_size]) for i in range(0, len(g), batch_size)]
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, VISIBLE + 1), dtype=np.float32)


def check_metrics(
    scores: np.ndarray, occluded: np.ndarray, covered: np.ndarray, location: np.ndarray, thresholds
) -> dict[str, Any]:
    """Grader output (N, 5) judged against pseudo labels: AUC of the occlusion score for occluded vs
    clear, its Spearman correlation with the covered share, the share of clear crops graded occluded
    (``decide_grades`` > 0) and of occluded ones, how often the covered side scores highest, and
    the clear crops' median visible fraction."""
    occluded = np.asarray(occluded, dtype=bool)
    occ = occlusion_score(scores) if len(scores) else np.zeros(0)
    graded = decide_grades(scores, thresholds) > 0 if len(scores) else np.zeros(0, dtype=bool)
    clear = ~occluded

    def share(mask: np.ndarray) -> float | None:
        return float(mask.mean()) if len(mask) else None

    loc = np.asarray(scores)[occluded, : len(LOCATIONS)].argmax(1) if occluded.any() else np.zeros(0)
    return {
        "occluded": int(occluded.sum()),
        "clear": int(clear.sum()),
        "auc": roc_auc(occ, occluded) if len(occ) else None,
        "spearman": spearman(occ, covered) if len(occ) else None,
        "clear_graded_occluded": share(graded[clear]),
        "occluded_graded_occluded": share(graded[occluded]),
        "location_accuracy": share(loc == np.asarray(location)[occluded]),
        "median_visible_clear": float(np.median(np.asarray(scores)[clear, VISIBLE])) if clear.any() else None,
    }


@dataclass
class Adaptation:
    """What ``adapt_grader`` did: the model config with the recalibrated visible threshold and
    reference median, the report, and the per-step losses (one dict of terms per step)."""

    model_config: Any
    report: dict[str, Any]
    losses: list[dict[str, float]] = field(default_factory=list)


def _losses(
    out: torch.Tensor,
    teacher: torch.Tensor,
    n_occ: int,
    covered: torch.Tensor,
    location: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The adaptation terms for one batch: rows ``[:n_occ]`` occluded crops (paired row by row with
    the clear crops after them), ``teacher`` the original grader's outputs on the same rows."""
    s, v = out[:, : len(LOCATIONS)], out[:, VISIBLE]
    occ_a, occ_c = 1.0 - v[:n_occ], 1.0 - v[n_occ:]
    rank = torch.relu(RANK_MARGIN - (occ_a - occ_c)).mean()
    bound = torch.relu((1.0 - covered) - v[:n_occ]).mean()
    s_a = s[:n_occ]
    sp = s_a.gather(1, location[:, None])
    others = torch.ones_like(s_a, dtype=torch.bool).scatter_(1, location[:, None], False)
    loc = torch.relu(s_a - sp + LOCATION_MARGIN)[others].mean()
    target = torch.zeros_like(out[n_occ:])
    target[:, VISIBLE] = 1.0
    clear = ((out[n_occ:] - target) ** 2).mean()
    distill = ((out - teacher) ** 2).mean()
    total = rank + bound + loc + CLEAR_WEIGHT * clear + DISTILL_WEIGHT * distill
    return {"total": total, "rank": rank, "bound": bound, "location": loc, "clear": clear, "distill": distill}


def _mean_terms(rows: list[dict[str, float]]) -> dict[str, float] | None:
    if not rows:
        return None
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def require_visibility_grader(model: nn.Module) -> str:
    """The grader's kind; AdaptationError unless it is ``visibility``."""
    kind = getattr(getattr(model, "grader", None), "kind", None)
    if kind != "visibility":
        raise AdaptationError(
            f"the checkpoint's grader is {kind!r}; only a 'visibility' grader can be adapted (the "
            "paper's softmax grader has no visible fraction to adapt): train one with "
            "model.grader: visibility"
        )
    return kind


def adapt_grader(
    model: nn.Module,
    cfg: Any,
    occluded: SiteCrops,
    clear: SiteCrops,
    steps: int = 300,
    lr: float = 1e-3,
    seed: int = 0,
    pairs: int = 32,
    batch_size: int = 64,
    check_every: int = 4,
    min_crops: int = MIN_CROPS,
    max_false_occluded: float = 0.05,
) -> Adaptation:
    """Fine-tune ``model.grader`` (only its parameters; in place) on pseudo-labelled site crops.

    Per step, ``pairs`` random (occluded A, clear C) pairs of the adaptation tracks:
    (a) ranking hinge relu(0.2 - (occ(A) - occ(C))), occ = 1 - v; (b) the hidden share can not
    exceed the covered one: relu((1 - covered_A) - v_A); (c) the covered side scores highest:
    relu(s^q - s^p + 0.1) for q != p; (d) clear crops towards v = 1, s = 0, weight 0.2; (e) L2 to
    the original grader's outputs, weight 0.5. The grader is in train mode while adapting (its
    BatchNorm sees the site), in eval mode after. Two parts of the tracks are held out of the fitting
    (``split_tracks``, each taking every ``check_every``-th track): the calibration tracks (seed
    ``seed + 1``), whose clear crops recalibrate
    ``visible_threshold`` (``calibrate_visible_threshold``, at most ``max_false_occluded`` graded
    occluded) and set ``grader_reference_median`` to their median v (``grade_thresholds`` stay); and
    the check tracks (``seed``), on which the report compares the grader before and after
    (``check_metrics``); ``before_all_crops`` judges the grader as it came on every crop."""
    kind = require_visibility_grader(model)
    if len(occluded) < min_crops or len(clear) < min_crops:
        raise AdaptationError(
            f"found {len(occluded)} occluded and {len(clear)} clear crops, need at least {min_crops} "
            "of each: record longer footage or lower --min-covered"
        )
    if steps < 0 or pairs < 1:
        raise ValueError(f"steps must be >= 0 and pairs >= 1, got {steps}, {pairs}")
    size = tuple(int(v) for v in cfg.input_size)
    for name, crops in (("occluded", occluded), ("clear", clear)):
        if tuple(crops.images.shape[2:]) != size:
            raise ValueError(f"{name} crops are {tuple(crops.images.shape[2:])}, the network takes {size}")
    if (occluded.location < 0).any():
        raise ValueError("every occluded crop needs its covered side (location >= 0)")

    is_occ = np.concatenate([np.ones(len(occluded), bool), np.zeros(len(clear), bool)])
    covered = np.concatenate([occluded.covered, np.zeros(len(clear))])
    location = np.concatenate([occluded.location, np.full(len(clear), -1)])
    tracks = np.concatenate([occluded.track_id, clear.track_id])
    check_ids = split_tracks(occluded.track_id, clear.track_id, seed, check_every)
    check = np.isin(tracks, sorted(check_ids))
    # The threshold is set on clear crops the grader was not fitted to: fitted ones are pushed to
    # v = 1 by term (d), so their quantile sits above what the site's other whole people score.
    # Stratified like the check tracks: in a crowd most tracks are occluded at some time, and the
    # few never occluded ones are too few to set a threshold on (one track on the crosswalk clip).
    calibrate_ids = split_tracks(tracks[is_occ & ~check], tracks[~check], seed + 1, check_every)
    calibrate = np.isin(tracks, sorted(calibrate_ids))
    adapt_occ = np.flatnonzero(is_occ & ~check & ~calibrate)
    adapt_clear = np.flatnonzero(~is_occ & ~check & ~calibrate)
    calibrate_clear = np.flatnonzero(~is_occ & calibrate)
    for what, rows in (("occluded", adapt_occ), ("clear", adapt_clear)):
        if len(rows) == 0:
            raise AdaptationError(
                f"no {what} crops left to adapt on after holding out tracks "
                f"{sorted(check_ids | calibrate_ids)} to check and calibrate: record longer footage"
            )
    if len(calibrate_clear) == 0:
        raise AdaptationError(
            f"no clear crops to calibrate the visible threshold on (tracks {sorted(calibrate_ids)}): "
            "record longer footage"
        )

    g = grader_features(model, torch.cat([occluded.images, clear.images]), batch_size)
    grader = model.grader
    before = _grade(grader, g, batch_size)
    thresholds_before: GradeThresholds = cfg.thresholds()
    teacher = torch.from_numpy(before).to(g.device)

    params = list(grader.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    cov_t = torch.as_tensor(covered, dtype=torch.float32, device=g.device)
    loc_t = torch.as_tensor(location, dtype=torch.int64, device=g.device)
    losses: list[dict[str, float]] = []
    log_every = max(1, steps // 10)
    grader.train()
    for step in range(steps):
        a = rng.choice(adapt_occ, pairs)
        c = rng.choice(adapt_clear, pairs)
        rows = torch.as_tensor(np.concatenate([a, c]), device=g.device)
        out = grader(g[rows])
        terms = _losses(out, teacher[rows], pairs, cov_t[rows[:pairs]], loc_t[rows[:pairs]])
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        losses.append({k: float(v.detach()) for k, v in terms.items()})
        if step % log_every == 0 or step == steps - 1:
            logger.info(
                "adapt step %d/%d: total %.4f rank %.4f bound %.4f location %.4f clear %.4f distill %.4f",
                step + 1,
                steps,
                *(losses[-1][k] for k in ("total", "rank", "bound", "location", "clear", "distill")),
            )
    grader.eval()
    model.eval()
    after = _grade(grader, g, batch_size)

    v_clear = after[calibrate_clear, VISIBLE]
    visible = calibrate_visible_threshold(v_clear, max_false_occluded)
    median = float(np.median(v_clear))
    new_cfg = cfg.model_copy(update={"visible_threshold": visible, "grader_reference_median": median})
    thresholds_after = new_cfg.thresholds()

    def judged(scores: np.ndarray, thresholds: GradeThresholds) -> dict[str, Any]:
        return check_metrics(scores[check], is_occ[check], covered[check], location[check], thresholds)

    window = min(10, len(losses))
    report = {
        "grader": kind,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "pairs": pairs,
        "crops": {
            "occluded": len(occluded),
            "clear": len(clear),
            "adapt": {"occluded": int(len(adapt_occ)), "clear": int(len(adapt_clear))},
            "calibrate": {"occluded": int((is_occ & calibrate).sum()), "clear": int(len(calibrate_clear))},
            "check": {"occluded": int((is_occ & check).sum()), "clear": int((~is_occ & check).sum())},
        },
        "tracks": {
            "adapt": len(set(tracks.tolist()) - check_ids - calibrate_ids),
            "calibrate": len(calibrate_ids),
            "check": len(check_ids),
        },
        "check_tracks": sorted(check_ids),
        "calibrate_tracks": sorted(calibrate_ids),
        "before": judged(before, thresholds_before),
        "after": judged(after, thresholds_after),
        # nothing was fitted before: every labelled crop of the site judges the grader as shipped
        "before_all_crops": check_metrics(before, is_occ, covered, location, thresholds_before),
        "losses": {"first": _mean_terms(losses[:window]), "last": _mean_terms(losses[-window:])},
        "visible_threshold": {"before": cfg.visible_threshold, "after": visible},
        "grader_reference_median": {"before": cfg.grader_reference_median, "after": median},
        "grade_thresholds": list(cfg.grade_thresholds),
        "max_false_occluded": max_false_occluded,
    }
    return Adaptation(new_cfg, report, losses)
