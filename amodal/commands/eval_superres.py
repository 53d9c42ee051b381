"""Evaluate super-resolution networks: PSNR/SSIM of SR vs plain up-sampling against the HR crop, and
attribute mA on small crops with and without SR (reconstruction paper sec. 4-5, Tab. 2 "lowRAP").

    amodal eval superres --weights models/weights/superres_x4_market.pt \\
        models/weights/superres_x2_market.pt --data ../shared/datasets/Market-1501 --json out.json \\
        [--attribute-model models/weights/attributes_vocab_osnet_x0_25.pt] [--limit 2000 --seed 0]

For every test crop (HR) and every ``--weights`` file (scale r): LR = HR downsampled by r (the
training downsampling, default INTER_AREA), then (a) bilinear (the paper's Tab. 2 baseline) and
bicubic up-sampling back to the HR size, (b) the SR network; PSNR/SSIM of each against HR. With
``--attribute-model`` the attribute classifier is run on HR, on (a) and on (b) (every variant is at
the HR size, and the classifier's own resize to its input size applies to all of them alike) and
mA / accuracy / precision / recall / F1 are reported for each, scored like amodal eval attributes
(its attribute matching and the checkpoint's thresholds).

Data (``--format``, detected when left out):
* ``market``: a Market-1501 root; the test identities' ``--folder`` crops (default ``query``, 750
  identities never trained on), labelled with their identity's attributes in the vocabulary;
* ``peta``: a PETA root; the labelled crops of ``--subset`` (default VIPeR);
* ``folder``: any folder of crops (no attributes).
A PNG grid (LR-bicubic | SR | HR, 10 seeded crops) per scale is written beside the JSON, and the
SR time per crop at batch 1 and 32 is measured on the loaded crops.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from amodal.commands import command_parser
from models.attributes.metrics import attribute_metrics
from models.data.images import image_files
from models.data.transforms import load_rgb, resize
from models.deocclusion.grid import save_grid
from models.deocclusion.image_metrics import psnr, ssim
from models.superres.data import downsample, modcrop, upsample
from models.superres.predictor import SuperResolver
from models.training import set_threads, write_json

logger = logging.getLogger("eval_superres")
BASELINES = ("bilinear", "bicubic")


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(__name__, __doc__)
    p.add_argument(
        "--weights",
        required=True,
        nargs="+",
        help="SR files (models/weights/superres_*.pt or a run's best.pt)",
    )
    p.add_argument(
        "--data", required=True, type=Path, help="Market-1501 root, PETA root or a folder of crops"
    )
    p.add_argument("--json", required=True, type=Path, help="write the metrics here (grids go beside it)")
    p.add_argument("--format", default=None, choices=["market", "peta", "folder"], help="default: detected")
    p.add_argument("--folder", default="query", help="Market-1501 test folder to evaluate (query)")
    p.add_argument("--subset", default="VIPeR", help="PETA subset to evaluate (VIPeR)")
    p.add_argument("--limit", type=int, default=None, help="evaluate N crops (seeded random subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of --limit and of the grid's crops")
    p.add_argument("--downsample", default="area", choices=["area", "bicubic"], help="how LR is made")
    p.add_argument(
        "--attribute-model", type=Path, default=None, help="attribute checkpoint: adds mA with and without SR"
    )
    p.add_argument("--batch-size", type=int, default=32, help="SR and attribute batch size")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    return p.parse_args(argv)


def _naming(names: list[str]) -> str | None:
    from models.data.attribute_vocabulary import mapping_for_names

    mapping = mapping_for_names(names)
    return mapping.dataset if mapping is not None else None


def detect_format(data: Path) -> str:
    if (data / "query").is_dir() and (data / "bounding_box_test").is_dir():
        return "market"
    if any(data.glob("*/archive/Label.txt")):
        return "peta"
    return "folder"


def load_test_records(args: argparse.Namespace, fmt: str, model_names: list[str] | None):
    """(image paths, AttributeRecords or None, the labels' naming) of the evaluated crops."""
    from models.attributes.recipe import load_records
    from models.data.attribute_vocabulary import to_vocabulary

    records, naming = None, None
    if fmt == "market":
        records = load_records("market", args.data, None, "all", split="test")
        records.records = [r for r in records.records if r.subset == args.folder]
        naming = "vocabulary"
    elif fmt == "peta":
        if model_names is not None and _naming(model_names) == "peta":
            records, naming = load_records("peta", args.data, [args.subset], model_names), "peta"
        else:
            records = to_vocabulary(load_records("peta", args.data, [args.subset], "all"), "peta")
            naming = "vocabulary"
    if records is not None:
        if not records.records:
            raise SystemExit(f"no labelled crops found in {args.data} ({fmt}, {args.folder or args.subset})")
        if args.limit is not None and args.limit < len(records.records):
            keep = np.sort(np.random.default_rng(args.seed).choice(len(records), args.limit, replace=False))
            records.records = [records.records[i] for i in keep]
        return [str(r.path) for r in records.records], records, naming
    paths = [str(p) for p in image_files(args.data)]
    if not paths:
        raise SystemExit(f"no images found under {args.data}")
    if args.limit is not None and args.limit < len(paths):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(paths), args.limit, replace=False))
        paths = [paths[i] for i in keep]
    return paths, None, None


def quality(images: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    """Mean PSNR (finite values) and SSIM of ``images`` against ``reference``."""
    p = np.array([psnr(a, b) for a, b in zip(images, reference, strict=True)])
    s = np.array([ssim(a, b) for a, b in zip(images, reference, strict=True)])
    return {"psnr": float(p[np.isfinite(p)].mean()), "ssim": float(s.mean())}


def time_sr(resolver: SuperResolver, lr: list[np.ndarray], batch: int, repeats: int = 3) -> float:
    """Milliseconds per crop of ``resolver.upscale`` at ``batch`` crops a call (best of ``repeats``)."""
    crops = (lr * ((64 // max(len(lr), 1)) + 1))[:64]
    old, resolver.batch_size = resolver.batch_size, batch
    best = float("inf")
    try:
        resolver.upscale(crops[:batch])  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            for k in range(0, len(crops), batch):
                resolver.upscale(crops[k : k + batch])
            best = min(best, (time.perf_counter() - t0) * 1000 / len(crops))
    finally:
        resolver.batch_size = old
    return best


class AttributeScorer:
    """The attribute classifier and the scoring of amodal eval attributes on fixed records."""

    def __init__(self, weights: Path, records, data_naming: str | None, batch_size: int):
        from models.attributes.matching import match_attributes
        from models.attributes.model import load_attribute_model
        from models.attributes.predictor import AttributePredictor

        model, bundle = load_attribute_model(weights)
        self.names = list(bundle.attribute_names)
        model_naming = _naming(self.names)
        self.pairs, self.not_scored = match_attributes(self.names, model_naming, records, data_naming)
        if not self.pairs:
            raise SystemExit(f"the attribute model {weights} and the evaluated labels share no attribute")
        self.model_naming = model_naming
        self.predictor = AttributePredictor(model, bundle, backend_preference=["torch"], device="cpu")
        self.batch_size = batch_size
        out_idx = [p["output"] for p in self.pairs]
        self.out_idx = out_idx
        self.inverted = np.array([p["inverted"] for p in self.pairs])
        self.labels = records.label_matrix()[:, [p["column"] for p in self.pairs]]
        if bundle.thresholds is not None:
            thr = np.asarray(bundle.thresholds, np.float64)[out_idx]
            thr[self.inverted] = 1.0 - thr[self.inverted]
            self.threshold: float | np.ndarray = thr
        else:
            self.threshold = 0.5
        self.input_size = tuple(bundle.input_size)

    def __call__(self, images: list[np.ndarray]) -> dict[str, float]:
        probs = np.concatenate(
            [self.predictor(images[k : k + self.batch_size]) for k in range(0, len(images), self.batch_size)]
        )
        scored = probs[:, self.out_idx]
        scored[:, self.inverted] = 1.0 - scored[:, self.inverted]
        m = attribute_metrics(scored, self.labels, [p["name"] for p in self.pairs], threshold=self.threshold)
        return {k: float(m[k]) for k in ("mA", "accuracy", "precision", "recall", "f1")}


def _grid(path: Path, rows: list[list[np.ndarray]]) -> None:
    size = rows[0][0].shape[:2]
    cols = [np.stack([resize(r[c], size) for r in rows]) for c in range(3)]
    save_grid(path, *cols)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    resolvers = [
        SuperResolver.from_weights(w, key="--weights", batch_size=args.batch_size) for w in args.weights
    ]
    max_scale = max(r.scale for r in resolvers)
    fmt = args.format or detect_format(args.data)
    model_names = None
    if args.attribute_model is not None:
        from models.attributes.model import load_attribute_model

        model_names = list(load_attribute_model(args.attribute_model)[1].attribute_names)
    paths, records, naming = load_test_records(args, fmt, model_names)
    t0 = time.time()
    hr = [modcrop(load_rgb(p), max_scale) for p in paths]  # same HR crop for every scale
    logger.info("%s (%s): %d crops decoded in %.1f s", args.data, fmt, len(hr), time.time() - t0)
    scorer = None
    if args.attribute_model is not None:
        if records is None:
            raise SystemExit("--attribute-model needs attribute labels (--format market or peta)")
        scorer = AttributeScorer(args.attribute_model, records, naming, args.batch_size)
        logger.info(
            "attributes: %d of %d model outputs scored (%s labels)",
            len(scorer.pairs),
            len(scorer.names),
            naming,
        )
    sizes = sorted({c.shape[:2] for c in hr})
    results: dict = {
        "weights": [str(w) for w in args.weights],
        "data": str(args.data),
        "format": fmt,
        "folder": args.folder if fmt == "market" else None,
        "subset": args.subset if fmt == "peta" else None,
        "crops": len(hr),
        "hr_sizes": [list(s) for s in sizes],
        "limit": args.limit,
        "seed": args.seed,
        "downsample": args.downsample,
        "threads": args.threads,
        "scales": {},
    }
    if scorer is not None:
        results["attribute_model"] = str(args.attribute_model)
        results["attribute_input_size"] = list(scorer.input_size)
        results["attributes_scored"] = [p["name"] for p in scorer.pairs]
        results["attributes_not_scored"] = scorer.not_scored
        t0 = time.time()
        results["attributes_hr"] = scorer(hr)
        logger.info("HR attributes: mA %.2f (%.1f s)", 100 * results["attributes_hr"]["mA"], time.time() - t0)
    pick = np.random.default_rng(args.seed).choice(len(hr), min(10, len(hr)), replace=False)
    for resolver, weights in zip(resolvers, args.weights, strict=True):
        r = resolver.scale
        key = f"x{r}"
        lr = [downsample(c, r, args.downsample) for c in hr]
        variants = {m: [upsample(x, c.shape[:2], m) for x, c in zip(lr, hr, strict=True)] for m in BASELINES}
        t0 = time.perf_counter()
        variants["sr"] = resolver.upscale(lr)
        sr_s = time.perf_counter() - t0
        entry: dict = {
            "weights": str(weights),
            "lr_sizes": [list(s) for s in sorted({x.shape[:2] for x in lr})],
        }
        entry["quality"] = {name: quality(images, hr) for name, images in variants.items()}
        entry["ms_per_crop"] = {
            "eval_batch": 1000 * sr_s / len(hr),
            "batch_1": time_sr(resolver, lr, 1),
            "batch_32": time_sr(resolver, lr, 32),
        }
        if scorer is not None:
            entry["attributes"] = {name: scorer(images) for name, images in variants.items()}
        grid = args.json.with_name(f"{args.json.stem}_{key}_grid.png")
        _grid(grid, [[variants["bicubic"][i], variants["sr"][i], hr[i]] for i in pick])
        entry["grid"] = str(grid)
        results["scales"][key] = entry
        q = entry["quality"]
        print(
            f"{key}: PSNR / SSIM vs HR  bilinear {q['bilinear']['psnr']:.2f} / {q['bilinear']['ssim']:.4f}"
            f"  bicubic {q['bicubic']['psnr']:.2f} / {q['bicubic']['ssim']:.4f}"
            f"  SR {q['sr']['psnr']:.2f} / {q['sr']['ssim']:.4f}"
            f"  (SR {entry['ms_per_crop']['batch_1']:.2f} ms/crop at batch 1,"
            f" {entry['ms_per_crop']['batch_32']:.2f} at batch 32)"
        )
        if scorer is not None:
            a = entry["attributes"]
            print(
                f"{key}: attribute mA  HR {100 * results['attributes_hr']['mA']:.2f}"
                + "".join(f"  {n} {100 * a[n]['mA']:.2f}" for n in a)
            )
    write_json(args.json, results)
    logger.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
