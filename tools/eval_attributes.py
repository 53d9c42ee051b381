#!/usr/bin/env python3
"""Evaluate an attribute checkpoint: mA, accuracy, precision, recall, F1 and a per-attribute table.

    python tools/eval_attributes.py --weights models/weights/attributes_part_osnet_x0_25.pt \
        --data ../shared/datasets/PETA --subsets VIPeR --json runs/eval_viper.json \
        [--occlusion bottom --occlusion-range 0.5 0.8 --seed 0] [--backend onnxruntime --onnx x.onnx]

``--occlusion bottom`` is Fabbri et al.'s occRAP protocol (sec. 4): the bottom 50-80% of every test
crop covered by the upper body of another test person, drawn with a fixed seed; ``--occlusion oamn``
uses the OAMN corner patches (models.reid.occlusion_augment) on the bottom half instead.
``--data`` is a PETA root (``--format peta``), a CSV/JSON file, or a RAP / PA-100K root.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from models.attributes.metrics import attribute_metrics, format_metrics  # noqa: E402
from models.attributes.model import load_attribute_model  # noqa: E402
from models.attributes.predictor import AttributePredictor  # noqa: E402
from models.attributes.recipe import load_records  # noqa: E402
from models.data.peta_attributes import PETA_ALL_ATTRIBUTES  # noqa: E402
from models.data.transforms import load_rgb, occlude_bottom, resize  # noqa: E402
from models.training import set_threads, write_json  # noqa: E402

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


def evaluate(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    model, bundle = load_attribute_model(args.weights)
    names = list(bundle.attribute_names)
    if args.format == "peta":
        attrs = names if all(n in PETA_ALL_ATTRIBUTES for n in names) else "peta35"
        records = load_records("peta", args.data, args.subsets or None, attrs)
    else:
        records = load_records(args.format, args.data, None, names, split="test")
    if list(records.names) != names:
        raise ValueError(f"dataset attributes {list(records.names)[:5]}... do not match the model's")
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
    labels = records.label_matrix()
    metrics = attribute_metrics(probs, labels, names, threshold=args.threshold)
    print(format_metrics(metrics, per_attribute=not args.quiet))
    payload = {
        "weights": str(args.weights),
        "data": str(args.data),
        "format": args.format,
        "subsets": args.subsets,
        "occlusion": args.occlusion,
        "occlusion_range": list(args.occlusion_range) if args.occlusion == "bottom" else None,
        "seed": args.seed,
        "backend": predictor.backend.name,
        "input_size": [h, w],
        "inference_seconds": elapsed,
        "ms_per_crop": 1000 * elapsed / max(len(images), 1),
        "batch_size": args.batch_size,
        "threads": args.threads,
        **metrics,
    }
    write_json(args.json, payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, type=Path, help="attribute checkpoint (.pt)")
    parser.add_argument(
        "--data", required=True, type=Path, help="PETA root, CSV/JSON file or RAP/PA-100K root"
    )
    parser.add_argument("--json", required=True, type=Path, help="where to write the metrics JSON")
    parser.add_argument("--format", default="peta", choices=["peta", "csv", "json", "rap", "pa100k"])
    parser.add_argument("--subsets", nargs="*", default=["VIPeR"], help="PETA subsets to evaluate on")
    parser.add_argument("--occlusion", default="none", choices=["none", "bottom", "oamn"])
    parser.add_argument("--occlusion-range", nargs=2, type=float, default=[0.5, 0.8], metavar=("LO", "HI"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic occlusion")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold for a positive")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "tensorrt"])
    parser.add_argument("--onnx", type=Path, default=None, help="ONNX file for onnxruntime / tensorrt")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lo, hi = args.occlusion_range
    if not 0 < lo <= hi < 1:
        parser.error(f"--occlusion-range must satisfy 0 < LO <= HI < 1, got {lo} {hi}")
    evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
