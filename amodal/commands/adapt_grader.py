#!/usr/bin/env python3
"""Adapt the OAMN ``visibility`` occlusion grader to a site from its own recordings, without labels.

The pipeline's JSONL (``stages/sinks/jsonl.py``: one ``tracks`` line per frame) says where every
tracked person was; a person whose box is overlapped by the box of a person nearer the camera (lower
bottom edge) is hidden on that side, by at most the covered share. Those pseudo labels fine-tune
the grader alone (``models/reid/site_adaptation.py``), its visible threshold is recalibrated on the
clear crops of tracks held out of the fitting, and the adapted checkpoint is written with a before /
after report on other tracks held out of the adaptation, and the grader as it came judged on every
labelled crop (``before_all_crops``: with ``--steps 1`` a way to measure any checkpoint on a site).

    amodal adapt-grader --weights models/weights/oamn_osnet_x0_25_peta.pt \\
        --video recordings/cam1.mp4 --tracks runs/cam1/events.jsonl \\
        --out models/weights/oamn_site_cam1.pt --json runs/cam1/adapt_grader.json
    # a JSONL holding several streams: say which one the recording is
    amodal adapt-grader --weights W --video cam2.mp4 --tracks events.jsonl --stream cam2 \\
        --out W_cam2.pt --steps 500 --min-covered 0.4

Each ``tracks`` line of the stream is matched to the decoded frame nearest its ``pts`` (seconds
from the start of the video stream, as the pipeline's file ingest writes them), within half a frame
interval; lines that match no frame are counted and reported. Per frame, every tracked box is
labelled from the boxes in front of it: ``occluded`` (covered share >= ``--min-covered``),
``clear`` (nothing in front, detector confidence >= ``--min-clear-confidence``) or unused (partly
covered; within 1.5 % of the frame size of its edge; smaller than 8 x 4 px; IoU >=
``--max-front-iou`` with a box in front, a duplicate detection or a person hidden whole; clear but
less confident: a detector's long-lived false positive, a bollard or a patch of road, is such a
box). At most one
crop per track every ``--track-step`` frames (frame numbers: pts x the video's frame rate) and
``--max-crops`` per label (drawn with ``--seed``) are cut from the frames.
Fewer than 20 occluded or 20 clear crops and nothing is adapted.

The output checkpoint has the same network with the adapted grader, the model config's
``visible_threshold`` and ``grader_reference_median`` replaced (``grade_thresholds`` unchanged),
and an ``adaptation`` entry in its ``extra``: the video, the counts, the steps and the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from amodal.commands import command_parser
from models.reid.oamn import load_oamn_checkpoint, save_oamn_weights
from models.reid.site_adaptation import (
    MAX_FRONT_IOU,
    MIN_CLEAR_CONFIDENCE,
    MIN_COVERED,
    MIN_CROPS,
    AdaptationError,
    Candidate,
    LabelCounts,
    SiteCrops,
    adapt_grader,
    crop_box,
    label_boxes,
    require_visibility_grader,
    sample_boxes,
)
from models.training import set_threads, write_json
from models.weights_path import require_file

logger = logging.getLogger("adapt_grader")


class TracksFileError(ValueError):
    """The JSONL cannot be used: the message names the file and the line."""


@dataclass(frozen=True)
class TracksLine:
    """One ``tracks`` line of the chosen stream: its 1-based line number, ``pts`` in seconds (None
    when the pipeline had none), the frame size and the tracked boxes."""

    line: int
    seq: int | None
    pts: float | None
    frame_hw: tuple[int, int]
    track_ids: tuple[int, ...]
    boxes: np.ndarray  # (K, 4) x1, y1, x2, y2
    confidences: tuple[float | None, ...] = ()  # the detector's, None where the line has none


def _parse_tracks(
    record: dict, where: str
) -> tuple[int | None, float | None, tuple[int, int], list, list, list]:
    def bad(what: str) -> TracksFileError:
        return TracksFileError(f"{where}: malformed tracks line: {what}")

    pts = record.get("pts")
    if pts is not None and (isinstance(pts, bool) or not isinstance(pts, int | float)):
        raise bad(f"pts must be seconds or null, got {pts!r}")
    seq = record.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise bad(f"seq must be an integer, got {seq!r}")
    size = record.get("frame_size")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise bad(f"frame_size must be [height, width], got {size!r}")
    tracks = record.get("tracks")
    if not isinstance(tracks, list):
        raise bad(f"tracks must be a list, got {type(tracks).__name__}")
    ids, boxes, confs = [], [], []
    for k, track in enumerate(tracks):
        if not isinstance(track, dict):
            raise bad(f"track {k} is not an object")
        tid, box = track.get("track_id"), track.get("xyxy")
        if isinstance(tid, bool) or not isinstance(tid, int):
            raise bad(f"track {k}: track_id must be an integer, got {tid!r}")
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
            or not np.isfinite(box).all()
        ):
            raise bad(f"track {k}: xyxy must be 4 numbers, got {box!r}")
        conf = track.get("confidence")
        if conf is not None and (
            isinstance(conf, bool) or not isinstance(conf, int | float) or not 0.0 <= conf <= 1.0
        ):
            raise bad(f"track {k}: confidence must be a number in [0, 1] or absent, got {conf!r}")
        ids.append(tid)
        boxes.append([float(v) for v in box])
        confs.append(None if conf is None else float(conf))
    return seq, None if pts is None else float(pts), (size[0], size[1]), ids, boxes, confs


def read_tracks(path: str | Path, stream: str | None = None) -> tuple[str, list[TracksLine], dict[str, int]]:
    """The ``tracks`` lines of one stream of a pipeline JSONL: (stream id, lines, counts). Other
    line types and other streams are skipped; a line repeating the previous seq of the stream (a
    graph that fans in writes a frame twice) is counted as a duplicate and skipped. Without
    ``stream`` the file must hold one stream. TracksFileError names the line of a malformed one."""
    path = Path(path)
    parsed: dict[str, list[TracksLine]] = {}
    counts = {"lines": 0, "other_types": 0, "other_streams": 0, "duplicates": 0}
    with path.open(encoding="utf-8") as handle:
        for n, text in enumerate(handle, 1):
            if not text.strip():
                continue
            counts["lines"] += 1
            where = f"{path}:{n}"
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise TracksFileError(f"{where}: not a JSON line ({err.msg} at column {err.colno})") from err
            if not isinstance(record, dict) or not isinstance(record.get("type"), str):
                raise TracksFileError(f"{where}: not a pipeline event (a JSON object with a 'type')")
            if record["type"] != "tracks":
                counts["other_types"] += 1
                continue
            stream_id = record.get("stream_id")
            if not isinstance(stream_id, str):
                raise TracksFileError(f"{where}: malformed tracks line: stream_id must be a string")
            seq, pts, size, ids, boxes, confs = _parse_tracks(record, where)
            lines = parsed.setdefault(stream_id, [])
            if lines and seq is not None and lines[-1].seq == seq:
                counts["duplicates"] += 1
                continue
            box_array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            lines.append(TracksLine(n, seq, pts, size, tuple(ids), box_array, tuple(confs)))
    if not parsed:
        raise TracksFileError(f"{path}: no 'tracks' lines")
    if stream is None:
        if len(parsed) > 1:
            raise TracksFileError(
                f"{path} holds several streams {sorted(parsed)}: choose the recording's with --stream"
            )
        stream = next(iter(parsed))
    elif stream not in parsed:
        raise TracksFileError(f"{path} has no tracks of stream {stream!r} (streams: {sorted(parsed)})")
    counts["other_streams"] = sum(len(v) for k, v in parsed.items() if k != stream)
    counts["tracks_lines"] = len(parsed[stream])
    return stream, parsed[stream], counts


@dataclass(frozen=True)
class VideoInfo:
    rate: float  # frames per second
    height: int
    width: int


def video_info(path: str | Path) -> VideoInfo:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 25.0)
        return VideoInfo(rate, int(stream.codec_context.height), int(stream.codec_context.width))


def decoded_frames(path: str | Path) -> Iterator[tuple[float, Any]]:
    """(time in seconds from the stream start, PyAV frame) of every frame, in presentation order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        rate = float(stream.average_rate or stream.guessed_rate or 25.0)
        for index, frame in enumerate(container.decode(stream)):
            yield (index / rate if frame.time is None else float(frame.time) - start), frame


def match_lines(
    lines: Sequence[TracksLine], frames: Iterable[tuple[float, Any]], tolerance: float, unmatched: list
) -> Iterator[tuple[Any, list[TracksLine]]]:
    """(frame, the lines nearest it) for each frame some line is matched to, lines and frames taken
    in time order (one frame of look-ahead); a line farther than ``tolerance`` from its nearest
    frame, or without pts, goes to ``unmatched``."""
    unmatched.extend(line for line in lines if line.pts is None)
    pending = sorted((line for line in lines if line.pts is not None), key=lambda line: line.pts)
    i = 0

    def settle(upto: float | None, t: float) -> list[TracksLine]:
        nonlocal i
        group = []
        while i < len(pending) and (upto is None or pending[i].pts <= upto):
            line = pending[i]
            i += 1
            (group if abs(line.pts - t) <= tolerance else unmatched).append(line)
        return group

    prev = None
    for t, frame in frames:
        if prev is not None:
            group = settle((prev[0] + t) / 2.0, prev[0])
            if group:
                yield prev[1], group
        prev = (t, frame)
    if prev is not None:
        group = settle(None, prev[0])
        if group:
            yield prev[1], group
    unmatched.extend(pending[i:])


def cut_crops(
    video: str | Path, lines: Sequence[TracksLine], chosen: Sequence[Candidate], size_hw, rate: float
) -> tuple[list[np.ndarray], list[Candidate], dict[str, int]]:
    """Decode ``video`` once and cut the chosen boxes (``Candidate.key`` = index in ``lines``) from
    the frames their lines match: (RGB crops, their candidates, counts of matched lines)."""
    wanted: dict[int, list[Candidate]] = {}
    for c in chosen:
        wanted.setdefault(c.key, []).append(c)
    index = {line.line: k for k, line in enumerate(lines)}
    crops, boxes, unmatched = [], [], []
    matched = 0
    for frame, group in match_lines(lines, decoded_frames(video), 0.5 / rate + 1e-6, unmatched):
        matched += len(group)
        todo = [c for line in group for c in wanted.get(index[line.line], [])]
        if not todo:
            continue
        image = frame.to_ndarray(format="bgr24")
        for c in todo:
            crops.append(crop_box(image, c.xyxy, size_hw))
            boxes.append(c)
    lost = sum(len(wanted.get(index[line.line], [])) for line in unmatched)
    return crops, boxes, {"matched": matched, "unmatched": len(unmatched), "chosen_unmatched": lost}


def _crops_of(crops: list[np.ndarray], boxes: list[Candidate], label: str, size_hw) -> SiteCrops:
    pick = [i for i, b in enumerate(boxes) if b.label == label]
    return SiteCrops.from_list([crops[i] for i in pick], [boxes[i] for i in pick], size_hw)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__name__, __doc__)
    parser.add_argument("--weights", required=True, help="OAMN checkpoint with a 'visibility' grader")
    parser.add_argument("--video", required=True, help="the site's recording (any format PyAV decodes)")
    parser.add_argument("--tracks", required=True, help="the pipeline's JSONL for that recording")
    parser.add_argument("--out", required=True, help="adapted checkpoint to write")
    parser.add_argument("--json", help="report JSON to write")
    parser.add_argument("--stream", help="stream id of the recording (needed when the JSONL holds several)")
    parser.add_argument("--steps", type=int, default=300, help="adaptation steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the grader")
    parser.add_argument(
        "--track-step", type=int, default=5, help="at most one crop per track every this many frames"
    )
    parser.add_argument("--max-crops", type=int, default=2000, help="at most this many crops per label")
    parser.add_argument(
        "--min-covered",
        type=float,
        default=MIN_COVERED,
        help="a box is an occluded crop when at least this share of it is covered by boxes in front",
    )
    parser.add_argument(
        "--min-clear-confidence",
        type=float,
        default=MIN_CLEAR_CONFIDENCE,
        help="a box with nothing in front is a clear crop only when the detector is at least this confident",
    )
    parser.add_argument(
        "--max-front-iou",
        type=float,
        default=MAX_FRONT_IOU,
        help="a box this similar (IoU) to a box in front is not used: a duplicate, or a person hidden whole",
    )
    parser.add_argument(
        "--min-crops",
        type=int,
        default=MIN_CROPS,
        help="refuse to adapt with fewer occluded or fewer clear crops than this",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the crop draw, track split and pairs")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="crops per batch (features and adaptation steps)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("steps", "track_step", "max_crops", "min_crops", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < args.min_covered <= 1.0:
        parser.error("--min-covered must be in (0, 1]")
    if not 0.0 <= args.min_clear_confidence <= 1.0:
        parser.error("--min-clear-confidence must be in [0, 1]")
    if not 0.0 < args.max_front_iou <= 1.0:
        parser.error("--max-front-iou must be in (0, 1]")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.lr <= 0:
        parser.error("--lr must be > 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    set_threads(args.threads)
    t0 = time.time()
    try:
        weights = require_file(args.weights, "--weights")
        video = require_file(args.video, "--video")
        tracks_path = require_file(args.tracks, "--tracks")
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from err
    model, cfg, extra = load_oamn_checkpoint(weights)
    try:
        require_visibility_grader(model)
    except AdaptationError as err:
        raise SystemExit(f"{args.weights}: {err}") from err
    try:
        stream, lines, line_counts = read_tracks(tracks_path, args.stream)
    except TracksFileError as err:
        raise SystemExit(str(err)) from err
    try:
        info = video_info(video)
    except (av.error.FFmpegError, ValueError) as err:
        raise SystemExit(f"{video}: cannot be read as a video: {err}") from err
    wrong = next((line for line in lines if line.frame_hw != (info.height, info.width)), None)
    if wrong is not None:
        raise SystemExit(
            f"{tracks_path}:{wrong.line}: frame_size {list(wrong.frame_hw)} is not the video's "
            f"[{info.height}, {info.width}]: is {video} the recording of stream {stream!r}?"
        )

    counts = LabelCounts()
    candidates: list[Candidate] = []
    for key, line in enumerate(lines):
        if line.pts is None:
            continue
        frame = round(line.pts * info.rate)
        candidates += label_boxes(
            key,
            frame,
            line.track_ids,
            line.boxes,
            line.frame_hw,
            counts,
            args.min_covered,
            confidences=line.confidences or None,
            min_confidence=args.min_clear_confidence,
            max_front_iou=args.max_front_iou,
        )
    chosen = sample_boxes(candidates, args.track_step, args.max_crops, args.seed)
    sampled = {label: sum(c.label == label for c in chosen) for label in ("occluded", "clear")}
    logger.info(
        "%s stream %r: %d tracks lines, %d boxes: %d occluded, %d clear, %d partly covered, "
        "%d truncated, %d small, %d the same as a box in front, %d clear but unsure; "
        "sampled %d occluded, %d clear",
        tracks_path,
        stream,
        len(lines),
        counts.boxes,
        counts.occluded,
        counts.clear,
        counts.partial,
        counts.truncated,
        counts.small,
        counts.same_box,
        counts.unsure,
        sampled["occluded"],
        sampled["clear"],
    )
    size_hw = tuple(int(v) for v in cfg.input_size)
    crops, boxes, match_counts = cut_crops(video, lines, chosen, size_hw, info.rate)
    line_counts.update(match_counts, no_pts=sum(line.pts is None for line in lines))
    if match_counts["unmatched"]:
        logger.warning(
            "%d of %d tracks lines match no frame of %s within half a frame interval (%d sampled crops lost)",
            match_counts["unmatched"],
            len(lines),
            video,
            match_counts["chosen_unmatched"],
        )
    occluded = _crops_of(crops, boxes, "occluded", size_hw)
    clear = _crops_of(crops, boxes, "clear", size_hw)
    try:
        result = adapt_grader(
            model,
            cfg,
            occluded,
            clear,
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
            batch_size=args.batch_size,
            min_crops=args.min_crops,
        )
    except AdaptationError as err:
        raise SystemExit(f"{video}: {err}") from err
    report = result.report
    for part in ("before", "after"):
        m = report[part]
        logger.info(
            "%s on %d held-out tracks (%d occluded, %d clear crops): AUC %s, Spearman %s, clear graded "
            "occluded %s, occluded graded occluded %s, location %s",
            part,
            report["tracks"]["check"],
            m["occluded"],
            m["clear"],
            _fmt(m["auc"]),
            _fmt(m["spearman"]),
            _fmt(m["clear_graded_occluded"]),
            _fmt(m["occluded_graded_occluded"]),
            _fmt(m["location_accuracy"]),
        )
    m = report["before_all_crops"]
    logger.info(
        "before on all %d occluded and %d clear crops: AUC %s, Spearman %s, clear graded occluded %s",
        m["occluded"],
        m["clear"],
        _fmt(m["auc"]),
        _fmt(m["spearman"]),
        _fmt(m["clear_graded_occluded"]),
    )
    logger.info(
        "visible threshold %s -> %.3f, reference median %s -> %.3f",
        _fmt(report["visible_threshold"]["before"]),
        report["visible_threshold"]["after"],
        _fmt(report["grader_reference_median"]["before"]),
        report["grader_reference_median"]["after"],
    )
    summary = {
        "weights": str(args.weights),
        "video": video.name,
        "tracks": str(tracks_path),
        "stream": stream,
        "out": str(args.out),
        "lines": line_counts,
        "boxes": counts.as_dict(),
        "sampled": sampled,
        "track_step": args.track_step,
        "max_crops": args.max_crops,
        "min_covered": args.min_covered,
        "min_clear_confidence": args.min_clear_confidence,
        "max_front_iou": args.max_front_iou,
        **report,
    }
    extra["adaptation"] = summary
    save_oamn_weights(model, result.model_config.model_dump(mode="json"), args.out, extra)
    logger.info("wrote %s", args.out)
    if args.json:
        write_json(args.json, {**summary, "wall_s": time.time() - t0})
        logger.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
