#!/usr/bin/env python3
"""Evaluate the OAMN occlusion grader on real footage: MOTChallenge sequences whose ground truth
annotates each person's visible fraction (MOT17, MOT20). Per sequence and over all boxes pooled:
ROC AUC of the occlusion score for visibility < 0.7, its Spearman correlation with 1 - visibility,
the 3 x 3 confusion of the grade decision's area (holistic, 1/4, 1/2) against the hidden share, and
the operating point (share of occluded boxes graded occluded, share of the others graded occluded).

    amodal eval grader --weights models/weights/oamn_osnet_x0_25_market.pt \\
        --data ../shared/datasets/MOT17/train --json runs/eval_grader_mot17.json \\
        --frame-step 10 --max-boxes-per-seq 1000
    # one sequence, persons on vehicles and static persons too, other thresholds
    amodal eval grader --weights W --data ../shared/datasets/MOT20/train/MOT20-01 \\
        --json runs/g.json --classes 1 2 7 --thresholds 0.6 0.8

``--data`` holds sequences (``SEQ/img1/000001.jpg``, ``SEQ/gt/gt.txt``; ``seqinfo.ini``'s imDir and
imExt are honoured) or is one sequence. Rows with conf 0 ("do not consider") are left out; boxes
are clipped to the frame, as a detector's would be, and skipped when less than 8 px high or 4 px
wide. MOT17's per-detector copies of a sequence (-DPM, -FRCNN, -SDP) are evaluated once. The
crops are resized to the checkpoint's input size; the scores come from ``ReidPredictor``, the
occlusion score is 1 - the predicted visible fraction (``grader.occlusion_score``), the grades come
from ``ReidPredictor.grades`` (the checkpoint's thresholds unless ``--thresholds`` /
``--grade-visible``). Every section also reports ``inside_frame``, its boxes wholly inside the frame:
the grader counts a cut at the frame edge as hidden (a person cut by the edge is partly unseen, and
the pipeline crops that way too); sources disagree on whether MOTChallenge's visibility does, and
inside the frame the two definitions cannot differ.

``--held-out MASKS`` evaluates on synthetic but exactly labelled occlusion instead: ``--data`` is
the training folder the checkpoint was trained on (e.g. Market-1501's ``bounding_box_train``),
MASKS its parsing maps; the identities the checkpoint held out in training are occluded
realistically (people in front, static objects, frame-border cuts, or nothing; ``--seed``), and
the report is per occlusion kind instead of per sequence.

    amodal eval grader --weights models/weights/oamn_osnet_x0_25_market.pt \\
        --data ../shared/datasets/Market-1501/bounding_box_train \\
        --held-out ../shared/datasets/Market-1501/bounding_box_train_parsing --json runs/g_held_out.json
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace

from amodal.commands import command_parser
from models.backends import BackendConfig, runtimes_from_names
from models.data.reid_datasets import load_images, normalize
from models.reid.calibration import held_out_records
from models.reid.grader import GradeThresholds
from models.reid.grader_data import held_out_report, load_body_masks, realistic_set
from models.reid.grader_eval import (
    DEFAULT_CLASSES,
    MIN_CROP_HW,
    VISIBILITY_THRESHOLD,
    MotDataError,
    evaluation_report,
    find_sequences,
    read_ground_truth,
    score_sequence,
    select_boxes,
)
from models.reid.oamn import oamn_extra
from models.reid.predictor import ReidPredictor
from models.training import set_threads, write_json

logger = logging.getLogger("eval_grader")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _log_table(report: dict) -> None:
    header = (
        f"{'sequence':<20} {'boxes':>6} {'skipped':>7} {'occl':>6} {'AUC':>6} {'rho':>6} "
        f"{'acc':>6} {'found':>6} {'false':>6}"
    )
    lines = [header]
    inside = report["overall"]["inside_frame"]
    rows = [*report["sequences"].items(), ("overall", report["overall"]), ("overall, inside frame", inside)]
    for name, m in rows:
        lines.append(
            f"{name[:20]:<20} {m['boxes']:>6d} {m.get('skipped_small', 0):>7d} {m['positives']:>6d} "
            f"{_fmt(m['auc']):>6} {_fmt(m['spearman']):>6} {_fmt(m['area_accuracy']):>6} "
            f"{_fmt(m['occluded_found']):>6} {_fmt(m['false_alarm']):>6}"
        )
    logger.info(
        "grader on annotated visibility (occl = boxes with visibility < threshold; found / false = "
        "share of occluded / of visible boxes graded occluded):\n%s",
        "\n".join(lines),
    )


def _held_out(args: argparse.Namespace, predictor: ReidPredictor, thresholds: GradeThresholds) -> dict:
    """``--held-out``: the checkpoint's held-out identities, occluded realistically (``--seed``)."""
    extra = oamn_extra(predictor.weights)
    try:
        records = held_out_records(extra, args.data, str(predictor.weights))
    except ValueError as err:
        raise SystemExit(str(err)) from err
    hw = predictor.input_size
    masks, usable = load_body_masks(records, args.held_out, hw)
    pids = [r.pid for r in records]
    held = realistic_set(load_images(records, hw), masks, usable, pids, args.seed)
    scores = predictor.encode(normalize(held.images).numpy())[1]
    report = held_out_report(scores, predictor.grades(scores, thresholds), held, args.visibility_threshold)
    for name, row in [("overall", report["overall"]), *report["kinds"].items()]:
        logger.info(
            "%-9s boxes %5d  AUC %s  Spearman %s  area accuracy %s",
            name,
            row["boxes"],
            _fmt(row["auc"]),
            _fmt(row["spearman"]),
            _fmt(row["area_accuracy"]),
        )
    report.update(held_out_ids=len(set(pids)), seed=args.seed, data=str(args.data), masks=str(args.held_out))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__name__, __doc__)
    parser.add_argument("--weights", required=True, help="OAMN checkpoint (a path or a models/weights/ name)")
    parser.add_argument(
        "--data", required=True, help="directory of MOTChallenge sequences, or one sequence directory"
    )
    parser.add_argument("--json", required=True, help="metrics JSON to write")
    parser.add_argument("--frame-step", type=int, default=1, help="evaluate every Nth frame (1, 1+N, ...)")
    parser.add_argument(
        "--max-boxes-per-seq",
        type=int,
        default=None,
        help="at most this many boxes per sequence, drawn with --seed (after --frame-step)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-boxes-per-seq draw")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per forward pass")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime CPU threads")
    parser.add_argument(
        "--classes",
        nargs="+",
        type=int,
        default=list(DEFAULT_CLASSES),
        help="MOTChallenge classes to evaluate: 1 pedestrian (default), 2 person on vehicle, 7 static person",
    )
    parser.add_argument(
        "--visibility-threshold",
        type=float,
        default=VISIBILITY_THRESHOLD,
        help="boxes below this annotated visibility are the occluded class of AUC and operating point",
    )
    parser.add_argument(
        "--thresholds",
        nargs=2,
        type=float,
        metavar=("QUARTER", "HALF"),
        help="grade decision thresholds on the top location score (default: the checkpoint's)",
    )
    parser.add_argument(
        "--grade-visible",
        type=float,
        metavar="V",
        help="'visibility' grader: grade a crop holistic when its predicted visible fraction is at "
        "least V (default: the checkpoint's; the annotated threshold is --visibility-threshold)",
    )
    parser.add_argument(
        "--min-size",
        nargs=2,
        type=int,
        default=list(MIN_CROP_HW),
        metavar=("H", "W"),
        help="skip boxes whose part inside the frame is smaller than this",
    )
    parser.add_argument(
        "--keep-detector-copies", action="store_true", help="evaluate MOT17's -DPM/-FRCNN/-SDP copies each"
    )
    parser.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime", "tensorrt"],
        help="runtime of the model",
    )
    parser.add_argument(
        "--onnx", default=None, help="ONNX file for onnxruntime / tensorrt (default: auto export)"
    )
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument(
        "--held-out",
        metavar="MASKS",
        help="parsing-map folder: evaluate on the checkpoint's held-out training identities of --data, "
        "occluded synthetically with exact labels, instead of MOTChallenge sequences",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("frame_step", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_boxes_per_seq is not None and args.max_boxes_per_seq < 1:
        parser.error("--max-boxes-per-seq must be >= 1")
    if not 0.0 < args.visibility_threshold <= 1.0:
        parser.error("--visibility-threshold must be in (0, 1]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    set_threads(args.threads)
    if args.thresholds:
        try:
            GradeThresholds(*args.thresholds)
        except ValueError as err:
            parser.error(f"--thresholds: {err}")
    if args.grade_visible is not None and not 0.0 <= args.grade_visible <= 1.0:
        parser.error("--grade-visible must be in [0, 1]")
    backend = BackendConfig(
        preference=runtimes_from_names([args.backend], threads=args.threads),
        device=args.device,
        max_batch=args.batch_size,
    )
    onnx = args.onnx or (None if args.backend == "torch" else "auto")
    try:
        predictor = ReidPredictor(args.weights, backend=backend, onnx=onnx, key="--weights")
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from err
    thresholds = predictor.thresholds  # the checkpoint's, with what the command line replaces
    if args.thresholds:
        thresholds = replace(thresholds, quarter=args.thresholds[0], half=args.thresholds[1])
    if args.grade_visible is not None:
        thresholds = replace(thresholds, visible=args.grade_visible)

    def predict(crops):
        return predictor(crops)[1]

    def grade(scores):
        return predictor.grades(scores, thresholds)

    t0 = time.time()
    if args.held_out:
        report = _held_out(args, predictor, thresholds)
        report.update(
            weights=str(predictor.weights), grade_visible=thresholds.visible, wall_s=time.time() - t0
        )
        write_json(args.json, report)
        logger.info("wrote %s", args.json)
        return 0
    try:
        sequences = find_sequences(args.data, keep_detector_copies=args.keep_detector_copies)
    except MotDataError as err:
        raise SystemExit(str(err)) from err
    scored = []
    for seq in sequences:
        try:
            gt = read_ground_truth(seq.gt_path, args.classes)
            chosen = select_boxes(gt, args.frame_step, args.max_boxes_per_seq, args.seed)
            result = score_sequence(
                seq, chosen, predict, grade, predictor.input_size, args.batch_size, args.min_size, len(gt)
            )
        except MotDataError as err:
            raise SystemExit(str(err)) from err
        logger.info(
            "%s: %d boxes scored of %d considered (%d skipped as too small)",
            seq.name,
            len(result.grades),
            len(gt),
            result.counts["skipped_small"],
        )
        scored.append(result)
    report = evaluation_report(scored, args.visibility_threshold)
    _log_table(report)
    report.update(
        weights=str(predictor.weights),
        data=str(args.data),
        input_size=list(predictor.input_size),
        backend=predictor.backend_name,
        grader=predictor.model_config.grader,
        grade_thresholds=[thresholds.quarter, thresholds.half],
        grade_visible=thresholds.visible,
        score_columns=next((int(r.scores.shape[1]) for r in scored if len(r.scores)), None),
        visibility_threshold=args.visibility_threshold,
        classes=list(args.classes),
        frame_step=args.frame_step,
        max_boxes_per_seq=args.max_boxes_per_seq,
        seed=args.seed,
        min_size=list(args.min_size),
        wall_s=time.time() - t0,
    )
    write_json(args.json, report)
    logger.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
