#!/usr/bin/env python3
"""Evaluate an attribute checkpoint: mA, accuracy, precision, recall, F1 and a per-attribute table.

    amodal eval attributes --weights models/weights/attributes_part_osnet_x0_25.pt \\
        --data ../shared/datasets/PETA --subsets VIPeR --json runs/eval_viper.json \\
        [--occlusion bottom --occlusion-range 0.5 0.8 --seed 0] [--backend onnxruntime --onnx x.onnx]

``--occlusion bottom`` is Fabbri et al.'s occRAP protocol (sec. 4): the bottom 50-80% of every test
crop covered by the upper body of another test person, drawn with a fixed seed; ``--occlusion oamn``
uses the OAMN corner patches (models.reid.occlusion_augment) on the bottom half instead.
``--data`` is a PETA root (``--format peta``), a Market-1501 root (``--format market``: the test
identities' crops, query + gallery, distractors and junk left out), a CSV/JSON file, or a RAP / PA-100K
root.

Cross-dataset: a model and a dataset named in the same terms (a PETA model on PETA, a CSV model on
its own CSV) are compared attribute by attribute under their own names. Otherwise both go through
the shared vocabulary (``models.data.attribute_vocabulary``): only the attributes the model's
outputs and the dataset's labels share are scored (an output whose mapping is ``inverted``, e.g. a
PA-100K ``Female`` output for ``personalMale``, is scored as 1 - p). The log and the JSON say which
attributes were scored and which could not be, and why. The shipped PETA-35 checkpoints work on
PETA as before, and on Market-1501 (``--format market``) for the attributes PETA-35 shares with it.

Thresholds: ``--threshold`` for every attribute, else the per-attribute thresholds stored in the
checkpoint (chosen on held-out training identities), else 0.5.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from amodal.commands import command_parser
from models.attributes.matching import match_attributes
from models.attributes.metrics import attribute_metrics, format_metrics
from models.attributes.model import load_attribute_model
from models.attributes.predictor import AttributePredictor
from models.attributes.recipe import load_records
from models.data.attribute_vocabulary import (
    MAPPINGS,
    mapping_for_names,
    to_vocabulary,
)
from models.data.peta_attributes import PETA_35_ATTRIBUTES, AttributeRecords
from models.data.transforms import load_rgb, occlude_bottom, resize
from models.training import set_threads, write_json

logger = logging.getLogger("eval_attributes")


def occlude_images(
    images: list[np.ndarray], person_ids: list[str], mode: str, lo: float, hi: float, seed: int
) -> list[np.ndarray]:
    """Deterministic synthetic occlusion of every image by another person's image."""
    rng = np.random.default_rng(seed)
    out = []
    n = len(images)
    for i, image in enumerate(images):
        j = int(rng.integers(n))
        while n > 1 and person_ids[j] == person_ids[i]:
            j = int(rng.integers(n))
        if mode == "bottom":
            out.append(occlude_bottom(image, images[j], float(rng.uniform(lo, hi))))
        else:
            from models.reid.occlusion_augment import occlude

            out.append(np.asarray(occlude(image, images[j], "bottom", 0.5, rng).image, dtype=np.uint8))
    return out


def _naming(names: list[str]) -> str | None:
    """Which table names these attributes: 'vocabulary', 'peta', 'pa100k', 'rap'; None = own names."""
    mapping = mapping_for_names(names)
    return mapping.dataset if mapping is not None else None


def _load_dataset(args: argparse.Namespace, model_naming: str | None) -> tuple[AttributeRecords, str | None]:
    """The test records, labelled natively when the model is named in the dataset's terms, else in
    the vocabulary; and the naming of the returned labels."""
    fmt = args.format
    if fmt == "market":
        return load_records("market", args.data, None, "all", split="test"), "vocabulary"
    if fmt == "peta":
        subsets = args.subsets or None
        if model_naming == "peta":
            return None, "peta"  # read with the model's own names (below)
        return to_vocabulary(load_records("peta", args.data, subsets, "all"), "peta"), "vocabulary"
    native = load_records(fmt, args.data, None, "all", split="test")
    naming = fmt if fmt in ("rap", "pa100k") else _naming(list(native.names))
    if naming == model_naming or naming is None or model_naming is None:
        return native, naming
    return to_vocabulary(native, naming), "vocabulary"


def _wanted(pair: dict, wanted: set[str]) -> bool:
    return pair["name"] in wanted or (pair["vocabulary"] is not None and pair["vocabulary"] in wanted)


def evaluate(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    model, bundle = load_attribute_model(args.weights)
    names = list(bundle.attribute_names)
    model_naming = _naming(names)
    records, data_naming = _load_dataset(args, model_naming)
    if records is None:  # PETA model on PETA: read with the model's own attribute names
        records = load_records("peta", args.data, args.subsets or None, names)
    pairs, not_scored = match_attributes(names, model_naming, records, data_naming)
    if args.attributes:
        wanted = set(args.attributes)
        if "peta35" in wanted:  # PETA-35 by its PETA names and by their vocabulary names
            wanted |= set(PETA_35_ATTRIBUTES) | set(MAPPINGS["peta"].labelled(PETA_35_ATTRIBUTES))
        not_scored["left_out_by_--attributes"] = [p["name"] for p in pairs if not _wanted(p, wanted)]
        pairs = [p for p in pairs if _wanted(p, wanted)]
    logger.info(
        "model attributes named by %s, data by %s: %d of %d model attributes can be scored",
        model_naming or "their own names",
        data_naming or "their own names",
        len(pairs),
        len(names),
    )
    for why, which in not_scored.items():
        if which:
            logger.info("not scored (%s): %s", why.replace("_", " "), ", ".join(which))
    if not pairs:
        raise ValueError(
            f"the model's attributes ({model_naming or 'own names'}) and the {args.format} labels "
            f"({data_naming or 'own names'}) share no attribute"
        )
    h, w = bundle.input_size
    t0 = time.time()
    images = [resize(load_rgb(str(r.path)), (h, w)) for r in records]
    logger.info("loaded %d test images in %.1f s", len(images), time.time() - t0)
    if args.occlusion != "none":
        images = occlude_images(
            images,
            [r.person_id for r in records],
            args.occlusion,
            args.occlusion_range[0],
            args.occlusion_range[1],
            args.seed,
        )
    predictor = AttributePredictor(
        model, bundle, backend_preference=[args.backend], onnx_path=args.onnx, device=args.device
    )
    t0 = time.time()
    probs = np.concatenate(
        [predictor(images[k : k + args.batch_size]) for k in range(0, len(images), args.batch_size)]
    )
    elapsed = time.time() - t0
    out_idx = [p["output"] for p in pairs]
    inverted = np.array([p["inverted"] for p in pairs])
    scored_probs = probs[:, out_idx]
    scored_probs[:, inverted] = 1.0 - scored_probs[:, inverted]
    labels = records.label_matrix()[:, [p["column"] for p in pairs]]
    if args.threshold is not None:
        threshold: float | np.ndarray = args.threshold
    elif bundle.thresholds is not None:
        threshold = np.asarray(bundle.thresholds, np.float64)[out_idx]
        threshold[inverted] = 1.0 - threshold[inverted]
        logger.info("using the checkpoint's per-attribute thresholds")
    else:
        threshold = 0.5
    metrics = attribute_metrics(scored_probs, labels, [p["name"] for p in pairs], threshold=threshold)
    unlabelled = metrics["unscored_attributes"]
    if unlabelled:
        logger.info("not scored (no labelled image in this data): %s", ", ".join(unlabelled))
    logger.info(
        "scored %d attributes: %s", len(metrics["scored_attributes"]), ", ".join(metrics["scored_attributes"])
    )
    print(format_metrics(metrics, per_attribute=not args.quiet))
    payload = {
        "weights": str(args.weights),
        "data": str(args.data),
        "format": args.format,
        "subsets": args.subsets if args.format == "peta" else None,
        "occlusion": args.occlusion,
        "occlusion_range": list(args.occlusion_range) if args.occlusion == "bottom" else None,
        "seed": args.seed,
        "backend": predictor.backend.name,
        "input_size": [h, w],
        "inference_seconds": elapsed,
        "ms_per_crop": 1000 * elapsed / max(len(images), 1),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "model_naming": model_naming,
        "data_naming": data_naming,
        "attribute_matches": [
            {k: p[k] for k in ("name", "vocabulary", "inverted")} | {"data": records.names[p["column"]]}
            for p in pairs
        ],
        "not_scored": not_scored | {"no_labelled_image": unlabelled},
        **metrics,
    }
    write_json(args.json, payload)
    return payload


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__name__, __doc__)
    parser.add_argument("--weights", required=True, type=Path, help="attribute checkpoint (.pt)")
    parser.add_argument(
        "--data", required=True, type=Path, help="PETA / Market-1501 / RAP / PA-100K root, or a CSV/JSON file"
    )
    parser.add_argument("--json", required=True, type=Path, help="where to write the metrics JSON")
    parser.add_argument(
        "--format",
        default="peta",
        choices=["peta", "market", "pa100k", "rap", "csv", "json"],
        help="layout of --data",
    )
    parser.add_argument("--subsets", nargs="*", default=["VIPeR"], help="PETA subsets to evaluate on")
    parser.add_argument(
        "--attributes",
        nargs="*",
        default=None,
        help="score only these attributes (model or vocabulary names; 'peta35' = the PETA-35 under "
        "either name), e.g. to compare a vocabulary model with a PETA-35 one on the same attributes",
    )
    parser.add_argument(
        "--occlusion",
        default="none",
        choices=["none", "bottom", "oamn"],
        help="synthetic occlusion of the test crops by another person's crop: bottom (a --occlusion-range "
        "share of the height) or oamn (OAMN's occluder on the bottom half)",
    )
    parser.add_argument(
        "--occlusion-range",
        nargs=2,
        type=float,
        default=[0.5, 0.8],
        metavar=("LO", "HI"),
        help="--occlusion bottom: share of the height covered, drawn uniformly in [LO, HI]",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic occlusion")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="probability threshold for a positive, every attribute (default: the checkpoint's "
        "per-attribute thresholds, else 0.5)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="crops per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime", "tensorrt"],
        help="runtime of the model",
    )
    parser.add_argument("--onnx", type=Path, default=None, help="ONNX file for onnxruntime / tensorrt")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lo, hi = args.occlusion_range
    if not 0 < lo <= hi < 1:
        parser.error(f"--occlusion-range must satisfy 0 < LO <= HI < 1, got {lo} {hi}")
    evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
