"""The occlusion grader judged on real footage with annotated visibility (MOTChallenge layout).

MOT17 / MOT20 ground truth gives every box the visible fraction of its person (occluders included:
other people, objects; whether the frame edge counts is told both ways by the sources, so the
boxes wholly inside the frame are reported apart as well). A grader that works ranks boxes by how
occluded they are: its occlusion score (``grader.occlusion_score``, higher = more occluded) should
separate visibility < 0.7 from the rest (ROC AUC), follow 1 - visibility (Spearman), and its grade
decision's area (holistic, 1/4, 1/2) should match the hidden share of the box.

    sequences = find_sequences("../shared/datasets/MOT17/train")
    gt = select_boxes(read_ground_truth(sequences[0].gt_path), frame_step=10, max_boxes=500)
    scored = score_sequence(sequences[0], gt, predict, grade, size_hw=(256, 128))
    report = evaluation_report([scored])     # {"sequences": {name: {...}}, "overall": {...}}

Layout: ``DATA/SEQ/img1/000001.jpg ...`` and ``DATA/SEQ/gt/gt.txt``, lines ``frame, id, left, top,
width, height, conf, class, visibility`` (1-based pixel coordinates; ``conf`` 0 = "do not consider";
class 1 pedestrian, 2 person on vehicle, 7 static person). ``seqinfo.ini``'s ``imDir`` and
``imExt`` are honoured when present. MOT15-style files (no class / visibility columns, or world
coordinates of -1 in their place) are refused with the file and line named.
"""

from __future__ import annotations

import configparser
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import rankdata

from models.data.transforms import resize

from .grader import occlusion_score
from .metrics import confusion_matrix
from .occlusion_augment import AREAS, NUM_GRADES, grade_from_index

__all__ = [
    "AREA_LABELS",
    "DEFAULT_CLASSES",
    "GT_COLUMNS",
    "MIN_CROP_HW",
    "VISIBILITY_THRESHOLD",
    "CropBatch",
    "GroundTruth",
    "MotDataError",
    "MotSequence",
    "SequenceScores",
    "area_class_from_grades",
    "area_class_from_visibility",
    "clip_box",
    "pixel_bounds",
    "crop_box",
    "evaluation_report",
    "find_sequences",
    "grader_metrics",
    "iter_crop_batches",
    "load_sequence",
    "occlusion_score",
    "read_frame",
    "read_ground_truth",
    "roc_auc",
    "score_sequence",
    "select_boxes",
    "spearman",
]

logger = logging.getLogger(__name__)

#: the columns a MOT17 / MOT20 gt.txt line holds, in order
GT_COLUMNS = ("frame", "id", "left", "top", "width", "height", "conf", "class", "visibility")
#: MOTChallenge class of a pedestrian (2 = person on vehicle, 7 = static person)
DEFAULT_CLASSES = (1,)
#: boxes below this visibility are the positive ("occluded") class of the AUC and operating point
VISIBILITY_THRESHOLD = 0.7
#: clipped boxes smaller than this (height, width) in pixels are skipped
MIN_CROP_HW = (8, 4)
#: the grade decision's area classes, in confusion-matrix order
AREA_LABELS = ("holistic", "1/4", "1/2")
#: hidden-share bounds between the area classes: h < 1/8 holistic, h < 3/8 a quarter, else a half
_AREA_BOUNDS = (1 / 8, 3 / 8)
#: MOT17 ships every sequence once per public detector with the same frames and ground truth
_MOT17_DETECTOR_SUFFIX = re.compile(r"-(DPM|FRCNN|SDP)$")


class MotDataError(ValueError):
    """The data is not MOTChallenge ground truth this evaluation can use; the message names the file."""


# --------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class MotSequence:
    """One sequence directory: its frames ``image_dir / f"{frame:06d}{image_ext}"`` and ``gt/gt.txt``."""

    name: str
    root: Path
    image_dir: Path
    image_ext: str = ".jpg"
    frame_rate: float | None = None
    #: (height, width) from seqinfo.ini; None when it does not say
    image_hw: tuple[int, int] | None = None

    @property
    def gt_path(self) -> Path:
        return self.root / "gt" / "gt.txt"

    def frame_path(self, frame: int) -> Path:
        return self.image_dir / f"{int(frame):06d}{self.image_ext}"


def load_sequence(root: str | Path) -> MotSequence:
    """The sequence in ``root`` (``img1/`` and ``gt/gt.txt``, or where ``seqinfo.ini`` points)."""
    root = Path(root)
    info: dict[str, str] = {}
    ini = root / "seqinfo.ini"
    if ini.is_file():
        parser = configparser.ConfigParser()
        try:
            parser.read(ini)
        except configparser.Error as err:
            raise MotDataError(f"{ini}: not a readable seqinfo.ini ({err})") from err
        if parser.has_section("Sequence"):
            info = {k.lower(): v.strip() for k, v in parser.items("Sequence")}
    ext = info.get("imext", ".jpg")
    ext = ext if ext.startswith(".") else f".{ext}"

    def number(key: str) -> float | None:
        try:
            return float(info[key]) if key in info else None
        except ValueError as err:
            raise MotDataError(f"{ini}: {key} = {info[key]!r} is not a number") from err

    height, width = number("imheight"), number("imwidth")
    return MotSequence(
        name=root.name,
        root=root,
        image_dir=root / info.get("imdir", "img1"),
        image_ext=ext,
        frame_rate=number("framerate"),
        image_hw=(int(height), int(width)) if height and width else None,
    )


def find_sequences(data: str | Path, keep_detector_copies: bool = False) -> list[MotSequence]:
    """The sequences under ``data`` (its sub-directories holding ``gt/gt.txt``), or ``data`` itself
    when it is one sequence; sorted by name. MOT17's per-detector copies of one sequence
    (``-DPM``, ``-FRCNN``, ``-SDP``: the same frames and ground truth) count once unless
    ``keep_detector_copies``. MotDataError when there is none."""
    data = Path(data)
    if not data.is_dir():
        raise MotDataError(f"MOTChallenge data directory not found: {data}")
    if (data / "gt" / "gt.txt").is_file():
        return [load_sequence(data)]
    roots = sorted(p for p in data.iterdir() if p.is_dir() and (p / "gt" / "gt.txt").is_file())
    without_gt = sorted(
        p.name for p in data.iterdir() if p.is_dir() and (p / "img1").is_dir() and p not in roots
    )
    if without_gt:
        logger.warning("%s: no gt/gt.txt in %s (test sequences?): not evaluated", data, ", ".join(without_gt))
    if not keep_detector_copies:
        seen: dict[str, str] = {}
        kept = []
        for p in roots:
            base = _MOT17_DETECTOR_SUFFIX.sub("", p.name)
            if base in seen:
                logger.info("%s: same frames and ground truth as %s; evaluated once", p.name, seen[base])
                continue
            seen[base] = p.name
            kept.append(p)
        roots = kept
    if not roots:
        raise MotDataError(
            f"no MOTChallenge sequences in {data}: expected SEQ/gt/gt.txt and SEQ/img1/ below it, "
            "or a sequence directory itself"
        )
    return [load_sequence(p) for p in roots]


@dataclass(frozen=True)
class GroundTruth:
    """The boxes of one gt.txt that are evaluated, one row each, plus what reading left out."""

    frames: np.ndarray  # (N,) int64, 1-based
    ids: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (N, 4) float64 left, top, width, height in MOT's 1-based pixels
    visibility: np.ndarray  # (N,) float64 in [0, 1]
    classes: np.ndarray  # (N,) int64
    #: non-empty lines of the file
    rows: int = 0
    #: rows with conf 0 (MOT's "do not consider" flag), left out
    not_considered: int = 0
    #: considered rows of classes not asked for, left out
    other_class: int = 0

    def __post_init__(self) -> None:
        n = len(self.frames)
        for name in ("ids", "visibility", "classes"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {getattr(self, name).shape}")
        if self.boxes.shape != (n, 4):
            raise ValueError(f"boxes must have shape ({n}, 4), got {self.boxes.shape}")

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, index: np.ndarray) -> GroundTruth:
        """These rows only (the file's counts stay)."""
        return GroundTruth(
            self.frames[index],
            self.ids[index],
            self.boxes[index],
            self.visibility[index],
            self.classes[index],
            self.rows,
            self.not_considered,
            self.other_class,
        )


def read_ground_truth(path: str | Path, classes: Sequence[int] = DEFAULT_CLASSES) -> GroundTruth:
    """The considered boxes (conf != 0) of ``classes`` in a MOT17 / MOT20 gt.txt. MotDataError naming
    the file and line for a line without the visibility column (MOT15/16 style), a value that is not
    a number, or a visibility outside [0, 1]."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise MotDataError(f"cannot read ground truth {path}: {err}") from err
    values = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        parts = text.split(",")
        if len(parts) < len(GT_COLUMNS):
            raise MotDataError(
                f"{path}:{number}: {len(parts)} columns, expected {len(GT_COLUMNS)} "
                f"({', '.join(GT_COLUMNS)}); MOT15/16-style ground truth without a visibility column "
                "cannot grade occlusion"
            )
        try:
            values.append([float(p) for p in parts[: len(GT_COLUMNS)]])
        except ValueError as err:
            raise MotDataError(f"{path}:{number}: not a number in {text!r}") from err
        vis = values[-1][8]
        if not 0.0 <= vis <= 1.0:
            raise MotDataError(
                f"{path}:{number}: visibility {vis:g} is not in [0, 1] (MOT15-style world coordinates "
                "in the class / visibility columns?)"
            )
    table = np.asarray(values, dtype=np.float64).reshape(-1, len(GT_COLUMNS))
    considered = table[:, 6] != 0
    wanted = np.isin(table[:, 7].astype(np.int64), np.asarray(list(classes), dtype=np.int64))
    keep = considered & wanted
    t = table[keep]
    return GroundTruth(
        frames=t[:, 0].astype(np.int64),
        ids=t[:, 1].astype(np.int64),
        boxes=t[:, 2:6].copy(),
        visibility=t[:, 8].copy(),
        classes=t[:, 7].astype(np.int64),
        rows=len(table),
        not_considered=int((~considered).sum()),
        other_class=int((considered & ~wanted).sum()),
    )


def select_boxes(
    gt: GroundTruth, frame_step: int = 1, max_boxes: int | None = None, seed: int = 0
) -> GroundTruth:
    """The boxes of every ``frame_step``-th frame (frames 1, 1 + step, ...), then at most
    ``max_boxes`` of them drawn without replacement by ``seed`` (the same draw every run), in file
    order."""
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    if max_boxes is not None and max_boxes < 1:
        raise ValueError(f"max_boxes must be >= 1 or None, got {max_boxes}")
    index = np.flatnonzero((gt.frames - 1) % frame_step == 0)
    if max_boxes is not None and len(index) > max_boxes:
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(index, size=max_boxes, replace=False))
    return gt.subset(index)


def pixel_bounds(xyxy: Sequence[float], image_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """A box's 0-based pixel bounds ``(x0, y0, x1, y1)`` (rounded, end exclusive) clipped to the
    image; empty (x1 <= x0 or y1 <= y0) when it lies outside."""
    h, w = int(image_hw[0]), int(image_hw[1])
    x0, y0, x1, y1 = (round(float(v)) for v in xyxy)
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def clip_box(box_ltwh: Sequence[float], image_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """A MOT box (1-based left, top, width, height) as ``pixel_bounds`` in the image."""
    left, top, width, height = (float(v) for v in box_ltwh)
    return pixel_bounds((left - 1.0, top - 1.0, left - 1.0 + width, top - 1.0 + height), image_hw)


def _is_clipped(box_ltwh: Sequence[float], image_hw: Sequence[int]) -> bool:
    left, top, width, height = (float(v) for v in box_ltwh)
    x0, y0 = round(left - 1.0), round(top - 1.0)
    x1, y1 = round(left - 1.0 + width), round(top - 1.0 + height)
    return x0 < 0 or y0 < 0 or x1 > int(image_hw[1]) or y1 > int(image_hw[0])


def crop_box(
    image: np.ndarray, box_ltwh: Sequence[float], min_hw: Sequence[int] = MIN_CROP_HW
) -> np.ndarray | None:
    """The part of the box inside ``image`` (as a detector's clipped box would crop it), or None when
    that part is lower than ``min_hw[0]`` or narrower than ``min_hw[1]`` pixels."""
    x0, y0, x1, y1 = clip_box(box_ltwh, image.shape[:2])
    if y1 - y0 < int(min_hw[0]) or x1 - x0 < int(min_hw[1]):
        return None
    return image[y0:y1, x0:x1]


def read_frame(sequence: MotSequence, frame: int) -> np.ndarray:
    """BGR uint8 frame ``frame`` (1-based) of ``sequence``; MotDataError naming the file when it is
    missing or cannot be decoded."""
    path = sequence.frame_path(frame)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    if image is None:
        what = "cannot be decoded" if path.is_file() else "is missing"
        raise MotDataError(f"{sequence.name}: frame {frame} {what}: {path}")
    return image


@dataclass(frozen=True)
class CropBatch:
    """Up to a batch of crops, each resized to the network's input size, with their rows in the
    ``GroundTruth`` they came from; ``skipped`` / ``clipped``: rows read since the previous batch that
    were too small after clipping (not in ``crops``) / that were clipped to the frame (in ``crops``)."""

    rows: np.ndarray  # (n,) int64
    crops: np.ndarray  # (n, H, W, 3) uint8 BGR
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    clipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def iter_crop_batches(
    sequence: MotSequence,
    gt: GroundTruth,
    size_hw: Sequence[int],
    batch_size: int = 64,
    min_hw: Sequence[int] = MIN_CROP_HW,
) -> Iterator[CropBatch]:
    """The boxes of ``gt`` cropped from ``sequence``'s frames (each frame read once, in frame order)
    and resized to ``size_hw``, ``batch_size`` at a time; the last batch may be shorter or hold only
    skipped rows. Every row of ``gt`` ends up in exactly one batch's ``rows`` or ``skipped``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    h, w = int(size_hw[0]), int(size_hw[1])
    order = np.argsort(gt.frames, kind="stable")
    rows: list[int] = []
    crops: list[np.ndarray] = []
    skipped: list[int] = []
    clipped: list[int] = []

    def flush() -> CropBatch:
        batch = CropBatch(
            np.asarray(rows, dtype=np.int64),
            np.stack(crops) if crops else np.zeros((0, h, w, 3), dtype=np.uint8),
            np.asarray(skipped, dtype=np.int64),
            np.asarray(clipped, dtype=np.int64),
        )
        for pending in (rows, crops, skipped, clipped):
            pending.clear()
        return batch

    frame, image = None, None
    for i in order:
        if gt.frames[i] != frame:
            frame = int(gt.frames[i])
            image = read_frame(sequence, frame)
        crop = crop_box(image, gt.boxes[i], min_hw)
        if crop is None:
            skipped.append(int(i))
            continue
        if _is_clipped(gt.boxes[i], image.shape[:2]):
            clipped.append(int(i))
        rows.append(int(i))
        crops.append(resize(np.ascontiguousarray(crop), (h, w)))
        if len(rows) == batch_size:
            yield flush()
    if rows or skipped:
        yield flush()


# --------------------------------------------------------------------------------------- metrics


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for the ``positive`` class: the Mann-Whitney probability that a random
    positive scores above a random negative, ties counting a half (average ranks); None when either
    class is empty."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.asarray(positive, dtype=bool).ravel()
    if s.shape != pos.shape:
        raise ValueError(f"scores and positive must have the same length, got {s.shape} and {pos.shape}")
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s, method="average")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation (Pearson correlation of average ranks, so ties are handled); None
    for fewer than two values or when either side is constant."""
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        return None
    ra = rankdata(a, method="average")
    rb = rankdata(b, method="average")
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    if denom == 0.0:
        return None
    return float(np.clip((ra * rb).sum() / denom, -1.0, 1.0))


def area_class_from_visibility(visibility: np.ndarray) -> np.ndarray:
    """(N,) int64 index into ``AREA_LABELS`` from the hidden share h = 1 - visibility: h < 1/8
    holistic, h < 3/8 a quarter, else a half (the nearest of the grader's areas 0, 1/4, 1/2)."""
    hidden = 1.0 - np.asarray(visibility, dtype=np.float64)
    return np.searchsorted(np.asarray(_AREA_BOUNDS), hidden, side="right").astype(np.int64)


_GRADE_AREA_CLASS = np.array(
    [
        0 if grade_from_index(g)[1] == 0 else 1 + AREAS.index(grade_from_index(g)[1])
        for g in range(NUM_GRADES)
    ],
    dtype=np.int64,
)


def area_class_from_grades(grades: np.ndarray) -> np.ndarray:
    """(N,) int64 index into ``AREA_LABELS`` of the area of each grade (``grade_from_index``)."""
    g = np.asarray(grades, dtype=np.int64)
    if g.size and (g.min() < 0 or g.max() >= NUM_GRADES):
        raise ValueError(f"grades must be in [0, {NUM_GRADES - 1}], got {g.min()}..{g.max()}")
    return _GRADE_AREA_CLASS[g]


def _share(mask: np.ndarray, within: np.ndarray) -> float | None:
    return float(mask[within].mean()) if within.any() else None


def grader_metrics(
    occlusion: np.ndarray,
    grades: np.ndarray,
    visibility: np.ndarray,
    visibility_threshold: float = VISIBILITY_THRESHOLD,
) -> dict:
    """How well occlusion scores (higher = more occluded) and grades (0 holistic, 1..8) of N boxes
    follow their annotated ``visibility``: AUC for visibility < ``visibility_threshold``, Spearman
    with 1 - visibility, the 3 x 3 area confusion (rows truth, columns prediction) with per-class
    recall and accuracy, and the operating point of the grade decision (share of the occluded boxes
    graded occluded, share of the others graded occluded). Undefined values are None."""
    occ = np.asarray(occlusion, dtype=np.float64).ravel()
    g = np.asarray(grades, dtype=np.int64).ravel()
    vis = np.asarray(visibility, dtype=np.float64).ravel()
    if not len(occ) == len(g) == len(vis):
        raise ValueError(
            f"occlusion, grades and visibility differ in length: {len(occ)}, {len(g)}, {len(vis)}"
        )
    positive = vis < visibility_threshold
    graded_occluded = g > 0
    true_cls = area_class_from_visibility(vis)
    pred_cls = area_class_from_grades(g)
    cm = confusion_matrix(true_cls, pred_cls, len(AREA_LABELS))
    row_sums = cm.sum(1)
    return {
        "boxes": int(len(vis)),
        "positives": int(positive.sum()),
        "negatives": int((~positive).sum()),
        "auc": roc_auc(occ, positive),
        "spearman": spearman(occ, 1.0 - vis),
        "area_labels": list(AREA_LABELS),
        "area_confusion": cm.tolist(),
        "area_recall": {
            label: (float(cm[i, i] / row_sums[i]) if row_sums[i] else None)
            for i, label in enumerate(AREA_LABELS)
        },
        "area_accuracy": float(np.trace(cm) / cm.sum()) if cm.sum() else None,
        "occluded_found": _share(graded_occluded, positive),
        "false_alarm": _share(graded_occluded, ~positive),
        "graded_occluded": float(graded_occluded.mean()) if len(g) else None,
        "mean_occlusion_score": {
            "occluded": float(occ[positive].mean()) if positive.any() else None,
            "visible": float(occ[~positive].mean()) if (~positive).any() else None,
        },
    }


# --------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class SequenceScores:
    """The grader's output on the boxes of one sequence that were scored, and the box counts."""

    name: str
    visibility: np.ndarray  # (M,) annotated visibility of the scored boxes
    scores: np.ndarray  # (M, K) grader scores
    occlusion: np.ndarray  # (M,) occlusion_score(scores)
    grades: np.ndarray  # (M,) int64
    counts: dict[str, int]
    clipped: np.ndarray  # (M,) bool: the box reaches past the frame edge (its inside part was scored)


def score_sequence(
    sequence: MotSequence,
    gt: GroundTruth,
    predict: Callable[[np.ndarray], np.ndarray],
    grade: Callable[[np.ndarray], np.ndarray],
    size_hw: Sequence[int],
    batch_size: int = 64,
    min_hw: Sequence[int] = MIN_CROP_HW,
    candidates: int | None = None,
) -> SequenceScores:
    """Run the grader over ``gt``'s boxes of ``sequence``. ``predict``: BGR uint8 crops (n, H, W, 3)
    of ``size_hw`` -> grader scores (n, K); ``grade``: scores -> (n,) grade indices.
    ``candidates``: the boxes ``gt`` was selected from (``select_boxes``), for the counts."""
    rows, scores, skipped, clipped = [], [], 0, []
    for batch in iter_crop_batches(sequence, gt, size_hw, batch_size, min_hw):
        skipped += len(batch.skipped)
        clipped.append(batch.clipped)
        if len(batch.rows):
            rows.append(batch.rows)
            scores.append(np.asarray(predict(batch.crops), dtype=np.float32))
    index = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    s = np.concatenate(scores) if scores else np.zeros((0, 4), dtype=np.float32)
    if len(s) != len(index):
        raise ValueError(f"predict returned {len(s)} score rows for {len(index)} crops")
    grades = np.asarray(grade(s), dtype=np.int64) if len(s) else np.zeros(0, dtype=np.int64)
    occlusion = np.asarray(occlusion_score(s), dtype=np.float64) if len(s) else np.zeros(0)
    counts = {
        "gt_rows": gt.rows,
        "not_considered": gt.not_considered,
        "other_class": gt.other_class,
        "candidates": len(gt) if candidates is None else int(candidates),
        "selected": len(gt),
        "frames": int(len(np.unique(gt.frames))),
        "skipped_small": skipped,
        "clipped": int(sum(len(c) for c in clipped)),
    }
    at_edge = np.isin(index, np.concatenate(clipped)) if clipped else np.zeros(len(index), dtype=bool)
    return SequenceScores(sequence.name, gt.visibility[index], s, occlusion, grades, counts, at_edge)


def evaluation_report(
    results: Sequence[SequenceScores], visibility_threshold: float = VISIBILITY_THRESHOLD
) -> dict:
    """``{"sequences": {name: metrics}, "overall": metrics}``: ``grader_metrics`` plus the box
    counts of each sequence, and of all sequences' boxes pooled. Each section also holds
    ``inside_frame``: the metrics of its boxes that lie wholly inside the frame. The grader counts a
    cut at the frame edge as hidden (the pipeline's crops are cut there too); if the annotation
    does not (the sources disagree on MOTChallenge's), a clipped box of visibility 1 is an honest
    disagreement. Inside the frame the two definitions cannot differ."""

    def section(visibility, occlusion, grades, counts, clipped) -> dict:
        inside = ~clipped
        return {
            **counts,
            **grader_metrics(occlusion, grades, visibility, visibility_threshold),
            "inside_frame": grader_metrics(
                occlusion[inside], grades[inside], visibility[inside], visibility_threshold
            ),
        }

    sequences = {r.name: section(r.visibility, r.occlusion, r.grades, r.counts, r.clipped) for r in results}
    keys = results[0].counts.keys() if results else ()
    overall = section(
        np.concatenate([r.visibility for r in results]) if results else np.zeros(0),
        np.concatenate([r.occlusion for r in results]) if results else np.zeros(0),
        np.concatenate([r.grades for r in results]) if results else np.zeros(0, dtype=np.int64),
        {k: int(sum(r.counts[k] for r in results)) for k in keys},
        np.concatenate([r.clipped for r in results]) if results else np.zeros(0, dtype=bool),
    )
    overall["num_sequences"] = len(results)
    return {"sequences": sequences, "overall": overall}
