"""Re-calibrate an OAMN checkpoint on the identities it held out in training: the grader's eq. 8
thresholds, the median top grader score per-camera adaptation starts from, and the similarity
offsets of unified matching (``models/reid/calibration.py``). Training does the same at its end;
this brings checkpoints trained before a calibration was added up to date without retraining.

    amodal calibrate-reid --weights models/weights/oamn_osnet_x0_25_peta.pt \\
        --data ../shared/datasets/PETA --out runs/oamn_calibrated.pt [--json calibration.json]
"""

from __future__ import annotations

import argparse
import logging

import torch

from amodal.commands import command_parser
from models.data.reid_datasets import load_images
from models.reid.calibration import calibrate, held_out_records
from models.reid.oamn import OAMNInference, load_oamn_checkpoint, save_oamn_weights
from models.training import write_json

logger = logging.getLogger("calibrate_reid")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__name__, __doc__)
    parser.add_argument("--weights", required=True, help="OAMN checkpoint that lists its held-out ids")
    parser.add_argument("--data", required=True, help="the data root it was trained from")
    parser.add_argument("--out", required=True, help="calibrated checkpoint to write (may be --weights)")
    parser.add_argument("--json", help="also write the calibration as JSON")
    parser.add_argument("--seed", type=int, help="seed of the synthetic occlusions (default: training's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    model, cfg, extra = load_oamn_checkpoint(args.weights)
    try:
        records = held_out_records(extra, args.data, args.weights)
    except ValueError as err:
        parser.error(str(err))
    seed = args.seed if args.seed is not None else int(extra.get("seed", 0))  # training's seed
    found = calibrate(
        OAMNInference(model), load_images(records, tuple(cfg.input_size)), [r.pid for r in records], seed
    )
    logger.info(
        "%d held-out crops: thresholds %s (were %s), reference median %.4f",
        len(records),
        found["grade_thresholds"],
        list(cfg.grade_thresholds),
        found["grader_reference_median"],
    )
    model_config = {**cfg.model_dump(mode="json"), **found}
    extra["calibration"] = {"held_out_crops": len(records), "seed": seed}
    save_oamn_weights(model, model_config, args.out, extra)
    if args.json:
        write_json(args.json, {"weights": args.weights, "out": args.out, **extra["calibration"], **found})
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
