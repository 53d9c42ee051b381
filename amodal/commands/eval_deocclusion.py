"""Evaluate de-occluders: SSIM / PSNR of occluded and restored crops against the clean ones.

Two protocols, chosen by the first ``--weights`` file:

* a U-Net generator file (``deocclusion_unet16_*.pt``), the PETA protocol:

    amodal eval deocclusion --weights models/weights/deocclusion_unet16_peta_128x64.pt \\
        --data ../shared/datasets/PETA --json runs/deocc_eval.json [--subsets VIPeR] \\
        [--modes silhouette bottom corner] [--attribute-model D.pt] [--backend onnxruntime torch]

* a two-stage file (``deocclusion_two_stage_*.pt``), the pairs protocol (``pair_eval``): every
  ``--weights`` file (two-stage files, the U-Net baseline, the shipped generator) on the same pairs
  with exact targets, on held-out Market-1501 training identities, Market-1501 query crops and
  PETA's VIPeR (with attribute and ReID figures there):

    amodal eval deocclusion --weights models/weights/deocclusion_two_stage_market.pt \\
        models/weights/deocclusion_two_stage_unet_market.pt --data ../shared/datasets/Market-1501 \\
        --peta ../shared/datasets/PETA --json runs/two_stage_eval.json \\
        --attribute-model models/weights/attributes_part_osnet_x0_25.pt

Occlusions are synthesised on the evaluated crops with a fixed seed (ASSETS.md protocol), occluders
drawn from other persons of the same set. With ``--attribute-model`` it also prints the paper's
Tables 3-6 layout: attribute mA / accuracy / precision / recall / F1 on occluded, generated and
clean crops. Data layouts: PETA root (``<subset>/archive/Label.txt``), Market-1501
(``bounding_box_test`` + ``query``; no attribute labels) or any folder of crops.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from amodal.commands import command_parser
from models.backends import create_backend, export_onnx, runtimes_from_names
from models.data.images import image_files
from models.deocclusion.checkpoint import load_generator
from models.deocclusion.data import OcclusionPairs, load_crops, occluder_pool, to_tensor, to_uint8
from models.deocclusion.dataset_setup import load_crop_set
from models.deocclusion.grid import save_grid
from models.deocclusion.image_metrics import batch_ssim_psnr
from models.deocclusion.synthesis import MODES, OcclusionSynthesizer
from models.training import set_threads, write_json

logger = logging.getLogger("eval_deocclusion")


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(__name__, __doc__)
    p.add_argument(
        "--weights",
        required=True,
        nargs="+",
        help="generator or two-stage file(s) (models/weights/deocclusion_*.pt); several: pairs protocol",
    )
    p.add_argument(
        "--data", required=True, help="PETA root, Market-1501 root, or a folder of crops (pairs: Market-1501)"
    )
    p.add_argument("--json", required=True, help="write the metrics here")
    p.add_argument(
        "--subsets", nargs="+", default=["VIPeR"], help="PETA subsets to evaluate (default: VIPeR)"
    )
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="occlusion modes to report")
    p.add_argument("--seed", type=int, default=0, help="synthesis seed (fixed for comparable numbers)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N crops (random, seeded)")
    p.add_argument("--occluder-pool", type=int, default=300, help="crops whose silhouettes are occluders")
    p.add_argument(
        "--segmenter", default=None, help="local ultralytics *-seg model for silhouettes (else GrabCut)"
    )
    p.add_argument(
        "--attribute-model", default=None, help="D's attribute checkpoint: adds Tables 3-6 metrics"
    )
    p.add_argument("--backend", nargs="+", default=["torch"], help="backend preference for the generator")
    p.add_argument("--batch-size", type=int, default=32, help="inference batch size")
    p.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime CPU threads")
    p.add_argument("--grid", default=None, help="also write a sample grid PNG here")
    p.add_argument("--cache-dir", default=None, help="cache decoded crops and silhouettes here")
    pairs = p.add_argument_group("pairs protocol (two-stage files)")
    pairs.add_argument(
        "--sets",
        nargs="+",
        default=["held-out", "query", "viper"],
        choices=["held-out", "query", "viper"],
        help="crop sets: held-out training identities, Market-1501 query, PETA VIPeR",
    )
    pairs.add_argument("--peta", default="../shared/datasets/PETA", help="PETA root (for the viper set)")
    pairs.add_argument(
        "--query-limit", type=int, default=1000, help="Market-1501 query crops (seeded sample)"
    )
    pairs.add_argument(
        "--viper-limit", type=int, default=None, help="VIPeR crops (seeded sample; default all)"
    )
    pairs.add_argument(
        "--reid-weights",
        default="models/weights/oamn_osnet_x0_25_market.pt",
        help="OAMN file for ReID rank-1 on VIPeR (empty: skip)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    return p.parse_args(argv)


def load_eval_crops(args: argparse.Namespace, size: tuple[int, int]):
    """(images uint8, labels or None, person ids, attribute names or None) for the data layout found."""
    root = Path(args.data)
    if not root.is_dir():
        raise SystemExit(f"--data {root} is not a directory")
    if any((root / s / "archive" / "Label.txt").is_file() for s in args.subsets):
        crops = load_crop_set(
            root, args.subsets, size, "peta35", cache_dir=args.cache_dir, limit=args.limit, seed=args.seed
        )
        return crops.images, crops.labels, crops.person_ids, list(crops.names)
    folders = [root / "bounding_box_test", root / "query"]
    if not all(f.is_dir() for f in folders):
        folders = [root]
    paths = image_files(*folders)
    paths = [p for p in paths if not re.match(r"^(-1|0000)_", p.name)]  # Market-1501 junk / distractors
    if not paths:
        raise SystemExit(f"no images found under {root}")
    if args.limit is not None and args.limit < len(paths):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(paths), args.limit, replace=False))
        paths = [paths[i] for i in keep]
    ids = [re.split(r"[_.]", p.name, maxsplit=1)[0] for p in paths]
    return load_crops(paths, size), None, ids, None


def run_generator(backend, occluded: np.ndarray, batch_size: int) -> np.ndarray:
    outs = []
    for start in range(0, len(occluded), batch_size):
        x = to_tensor(occluded[start : start + batch_size]).numpy()
        outs.append(to_uint8(torch.from_numpy(next(iter(backend(x).values())))))
    return np.concatenate(outs)


def attribute_table(frozen, images: dict[str, np.ndarray], labels: np.ndarray, names: list[str]) -> dict:
    if list(frozen.names) != list(names):
        raise SystemExit("the attribute model's attributes differ from the evaluated labels (peta35)")
    return {key: frozen.scores(imgs, labels) for key, imgs in images.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    if is_two_stage_file(args.weights[0]):
        from models.deocclusion.pair_eval import PairEvalSettings, evaluate_pairs

        settings = PairEvalSettings(
            weights=args.weights,
            market=args.data,
            peta=args.peta,
            sets=args.sets,
            seed=args.seed,
            query_limit=args.query_limit,
            viper_limit=args.viper_limit,
            attribute_model=args.attribute_model,
            reid_weights=args.reid_weights or None,
            batch_size=args.batch_size,
            grid=args.grid,
        )
        results = evaluate_pairs(settings)
    else:
        if len(args.weights) > 1:
            raise SystemExit(
                "the PETA protocol evaluates one generator; several --weights need a two-stage file first"
            )
        results = evaluate_synthetic(args)
    write_json(args.json, results)
    logger.info("wrote %s", args.json)
    return 0


def is_two_stage_file(path: str) -> bool:
    from models.deocclusion.two_stage import is_two_stage

    if not Path(path).is_file():
        raise SystemExit(f"--weights {path} does not exist")
    return is_two_stage(torch.load(path, map_location="cpu", weights_only=False))


def evaluate_synthetic(args: argparse.Namespace) -> dict:
    """The PETA protocol: one U-Net generator on silhouette / bottom / corner occlusions."""
    generator, cfg, _ = load_generator(args.weights[0])
    if cfg.num_attributes:
        raise SystemExit(
            "attribute-conditioned ('Entire') generators need attribute inputs; not supported here"
        )
    size = tuple(cfg.image_size)
    images, labels, ids, names = load_eval_crops(args, size)
    logger.info("evaluating %d crops at %dx%d", len(images), *size)
    pool_idx, pool, pool_masks = occluder_pool(
        images, args.occluder_pool, args.seed, cache_dir=args.cache_dir, segmenter=args.segmenter
    )
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = None
        if any(b in ("onnxruntime", "tensorrt") for b in args.backend):
            onnx_path = export_onnx(
                generator,
                torch.zeros(1, 3, *size),
                Path(tmp) / "generator.onnx",
                input_names=["images"],
                output_names=["generated"],
            )
        backend = create_backend(
            runtimes_from_names(args.backend, threads=args.threads),
            onnx_path=onnx_path,
            module=generator,
            device="cpu",
            input_names=["images"],
            output_names=["generated"],
        )
        frozen = None
        if args.attribute_model:
            if labels is None:
                raise SystemExit("--attribute-model needs attribute labels (a PETA layout)")
            from models.deocclusion.attribute_model import load_frozen_attribute_model

            frozen = load_frozen_attribute_model(args.attribute_model)
        results: dict = {
            "weights": str(args.weights[0]),
            "data": str(args.data),
            "subsets": args.subsets,
            "crops": len(images),
            "seed": args.seed,
            "backend": backend.name,
            "image_size": list(size),
            "occluders": len(pool),
            "modes": {},
        }
        for mode in args.modes:
            pairs = OcclusionPairs(
                images,
                pool,
                pool_masks,
                OcclusionSynthesizer(),
                args.seed,
                train=False,
                mode=mode,
                person_ids=ids,
                occluder_ids=[ids[i] for i in pool_idx],
            )
            triples = [pairs.pair(i) for i in range(len(pairs))]
            occluded = np.stack([t[0] for t in triples])
            coverage = float(np.mean([t[2].mean() for t in triples]))
            t0 = time.perf_counter()
            generated = run_generator(backend, occluded, args.batch_size)
            ms = (time.perf_counter() - t0) * 1000 / len(images)
            s_occ, p_occ = batch_ssim_psnr(occluded, images)
            s_gen, p_gen = batch_ssim_psnr(generated, images)
            entry = {
                "ssim_occluded": float(s_occ.mean()),
                "psnr_occluded": float(p_occ[np.isfinite(p_occ)].mean()),
                "ssim_generated": float(s_gen.mean()),
                "psnr_generated": float(p_gen[np.isfinite(p_gen)].mean()),
                "occluded_fraction": coverage,
                "ms_per_crop": ms,
            }
            if frozen is not None:
                entry["attributes"] = attribute_table(
                    frozen, {"occluded": occluded, "generated": generated, "clean": images}, labels, names
                )
            results["modes"][mode] = entry
            print(
                f"{mode:11s} occluded SSIM {entry['ssim_occluded']:.4f} PSNR {entry['psnr_occluded']:.2f} dB"
                f"  ->  generated SSIM {entry['ssim_generated']:.4f} PSNR {entry['psnr_generated']:.2f} dB"
                f"  (occluded {coverage:.0%} of pixels, {ms:.1f} ms/crop)"
            )
            if "attributes" in entry:
                for row, m in entry["attributes"].items():
                    print(f"    {row:9s} " + "  ".join(f"{k} {100 * v:.2f}" for k, v in m.items()))
            if args.grid and mode == args.modes[0]:
                pick = np.random.default_rng(args.seed).choice(
                    len(images), min(10, len(images)), replace=False
                )
                save_grid(args.grid, occluded[pick], generated[pick], images[pick])
    return results


if __name__ == "__main__":
    sys.exit(main())
