"""Evaluate a ReID model: single-query CMC rank-1/5/10 and mAP, on holistic queries and on queries
occluded synthetically (OAMN sec. 3.1 corner patches, fixed seeds, averaged over five), each without
and with occlusion unification (OAMN sec. 3.4), plus the grader's location / area confusion matrices.

    # trained OAMN (weights from amodal train reid or models/weights/)
    amodal eval reid --weights models/weights/oamn_osnet_x0_25_peta.pt \\
        --data ../shared/datasets/PETA --json runs/eval_oamn.json
    # a plain backbone (e.g. the shared torchreid weights, untrained here): global-pooled features
    amodal eval reid --weights ../shared/models/osnet_x0_25_msmt17.pth --backbone osnet_x0_25 \\
        --input-size 256 128 --data ../shared/datasets/PETA --json runs/eval_backbone.json

``--data`` is a PETA root (query = ``--subset`` camera ``--query-cam``, gallery = camera
``--gallery-cam``; default VIPeR 1 -> 2, the ASSETS.md protocol), one subset's ``archive`` folder,
or a Market-1501-style root with ``query/`` and ``bounding_box_test/``.

Unification needs grades: ``grader`` rows use the model's own grader on queries and gallery (what
the pipeline does); ``oracle`` rows use the known synthetic occlusion of each query and treat the
gallery as holistic (an upper bound, and the only option for a model without a grader). Both
mask in pixels by the rule of ``models/reid/unification.py``: each image's own region and the other
image's are painted with the mean colour on both sides.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from amodal.commands import command_parser
from models.backbones import create_backbone
from models.data.reid_datasets import (
    ReIDRecord,
    evaluation_split,
    load_images,
    normalize,
    read_market_folder,
)
from models.reid.calibration import held_out_records
from models.reid.evaluation import (
    encode,
    held_out_split,
    synthesize_occlusions,
    synthesize_person_occlusions,
)
from models.reid.grader import GradeThresholds, adapt_thresholds, decide_grades, visible_fraction
from models.reid.grader_data import load_body_masks
from models.reid.metrics import cmc_map, confusion_matrix
from models.reid.oamn import load_oamn_checkpoint
from models.reid.occlusion_augment import AREAS, LOCATIONS, grade_from_index
from models.reid.unification import (
    plain_similarity,
    unification_versions,
    unified_similarity,
)
from models.training import write_json

logger = logging.getLogger("eval_reid")


class _BackboneModel(torch.nn.Module):
    """A plain backbone: global-pooled features (``forward_head``), no grader."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return F.normalize(self.backbone.forward_head(self.backbone.forward_features(x)), dim=1), None


class _OAMNModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return F.normalize(out.embedding, dim=1), out.scores


def _versions(
    model, images: torch.Tensor, batch: int, own: np.ndarray, plain: np.ndarray, versions=None, base=None
) -> np.ndarray:
    """(9, N, D) unification versions (``unification_versions``: version k masks grade k's region
    and the image's own grade ``own``'s, in pixels). ``base`` = (versions, grades) of the same
    images: those graded alike are copied instead of encoded again."""

    def encode_fn(x):
        return encode(model, x, batch)

    if base is None:
        return unification_versions(encode_fn, images, own, plain, versions).transpose(1, 0, 2)
    out = base[0].copy()
    differ = np.flatnonzero(own != base[1])
    if len(differ):
        out[:, differ] = unification_versions(
            encode_fn, images[differ], own[differ], plain[differ], versions
        ).transpose(1, 0, 2)
    return out


def _location_area(grades: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Location class 0 = none, 1..4 = top/bottom/left/right; area class 0 = 0, 1 = 1/4, 2 = 1/2."""
    loc = np.array([0 if g == 0 else 1 + LOCATIONS.index(grade_from_index(int(g))[0]) for g in grades])
    area = np.array([0 if g == 0 else 1 + AREAS.index(grade_from_index(int(g))[1]) for g in grades])
    return loc, area


def grader_report(true: np.ndarray, pred: np.ndarray) -> dict:
    tl, ta = _location_area(true)
    pl, pa = _location_area(pred)
    return {
        "grade_accuracy": float((true == pred).mean()),
        "location_accuracy": float((tl == pl).mean()),
        "area_accuracy": float((ta == pa).mean()),
        "location_labels": ["none", *LOCATIONS],
        "location_confusion": confusion_matrix(tl, pl, 5).tolist(),
        "area_labels": ["0", "1/4", "1/2"],
        "area_confusion": confusion_matrix(ta, pa, 3).tolist(),
        "num": int(len(true)),
    }


def _mean_rows(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _log_rows(name: str, rows: dict) -> None:
    short = {
        k: v if not isinstance(v, dict) else {m: round(v[m], 2) for m in ("rank1", "rank5", "rank10", "mAP")}
        for k, v in rows.items()
    }
    logger.info("%s: %s", name, short)


def evaluate(
    model: torch.nn.Module,
    input_hw: tuple[int, int],
    query: list[ReIDRecord],
    gallery: list[ReIDRecord],
    seeds: tuple[int, ...] = (0,),
    batch: int = 64,
    thresholds: GradeThresholds | None = None,
    offsets: np.ndarray | None = None,
    reference_median: float | None = None,
    occlude=synthesize_occlusions,
    unify: bool = True,
    extra_occlusions: dict | None = None,
) -> dict:
    """Rows per query view (holistic, each occlusion seed): ``none``, ``unified_oracle`` and, with a
    grader, ``unified_grader`` (its grades, minus ``offsets`` when given), ``unified_grader_raw``
    (the same without offsets, when offsets are given) and ``unified_grader_adapted`` (thresholds
    adapted to each camera from its own holistic crops, ``grader.adapt_thresholds``, when
    ``reference_median`` is given: the gallery from the gallery crops, the queries from the
    holistic queries). ``occlude(images_uint8, seed) -> (images, true grades)`` makes the occluded
    queries; ``unify=False`` gives the ``none`` rows only (no masked versions: much faster).
    ``extra_occlusions`` ({name: occlude}) adds query sets of other occlusion kinds against the same
    gallery versions, reported as ``<name>`` (mean over the seeds), ``<name>_seedN`` and
    ``grader_<name>``."""
    q_ids = np.array([r.pid for r in query])
    g_ids = np.array([r.pid for r in gallery])
    q_cams = np.array([r.camid for r in query])
    g_cams = np.array([r.camid for r in gallery])

    def ranked(sims: np.ndarray) -> dict:
        return cmc_map(sims, q_ids, g_ids, q_cams, g_cams)

    q_raw = load_images(query, input_hw)
    g_img = normalize(load_images(gallery, input_hw))
    t0 = time.time()
    g_plain, g_scores = encode(model, g_img, batch)
    holistic_gallery = np.zeros(len(gallery), dtype=np.int64)
    g_oracle = _versions(model, g_img, batch, holistic_gallery, g_plain) if unify else None
    views = [("holistic", normalize(q_raw), np.zeros(len(query), dtype=np.int64))]
    kinds = {"occluded": occlude, **(extra_occlusions or {})}
    for kind, occlude_fn in kinds.items():
        for seed in dict.fromkeys(seeds):
            occluded, true_grades = occlude_fn(q_raw, seed)
            views.append((f"{kind}_seed{seed}", normalize(occluded), true_grades))
    has_grader = g_scores is not None
    results: dict = {
        "num_query": len(query),
        "num_gallery": len(gallery),
        "input_size": list(input_hw),
        "occlusion_seeds": list(dict.fromkeys(seeds)),
    }
    if has_grader:
        results["gallery_visible_fraction_median"] = float(np.median(visible_fraction(g_scores)))
    adapted = reference_median is not None and has_grader and unify
    if has_grader and unify:
        g_pred = decide_grades(g_scores, thresholds)
        g_graded = _versions(model, g_img, batch, g_pred, g_plain, base=(g_oracle, holistic_gallery))
        results["gallery_graded_occluded_fraction"] = float((g_pred > 0).mean())
    if adapted:
        g_thresholds = adapt_thresholds(thresholds, reference_median, g_scores)
        g_pred_a = decide_grades(g_scores, g_thresholds)
        g_graded_a = _versions(model, g_img, batch, g_pred_a, g_plain, base=(g_graded, g_pred))
        q_thresholds = adapt_thresholds(thresholds, reference_median, encode(model, views[0][1], batch)[1])
        results["adapted_thresholds"] = {
            "gallery": [g_thresholds.quarter, g_thresholds.half],
            "query": [q_thresholds.quarter, q_thresholds.half],
        }
        results["gallery_graded_occluded_fraction_adapted"] = float((g_pred_a > 0).mean())
    grader_true, grader_pred = [], []
    for name, images, true_grades in views:
        q_plain, q_scores = encode(model, images, batch)
        rows = {"none": ranked(plain_similarity(q_plain, g_plain))}
        if has_grader:
            grader_true.append(true_grades)
            grader_pred.append(decide_grades(q_scores, thresholds))
        if not unify:
            results[name] = rows
            _log_rows(name, rows)
            continue
        # oracle: the known synthetic grade for each query, the gallery taken as holistic
        q_oracle = _versions(model, images, batch, true_grades, q_plain, versions=[0])
        rows["unified_oracle"] = ranked(unified_similarity(q_oracle, true_grades, g_oracle, holistic_gallery))
        if has_grader:
            q_pred = decide_grades(q_scores, thresholds)
            q_graded = _versions(model, images, batch, q_pred, q_plain, versions=np.unique(g_pred))
            rows["unified_grader"] = ranked(unified_similarity(q_graded, q_pred, g_graded, g_pred, offsets))
            if offsets is not None:
                rows["unified_grader_raw"] = ranked(unified_similarity(q_graded, q_pred, g_graded, g_pred))
            rows["query_graded_occluded_fraction"] = float((q_pred > 0).mean())
        if adapted:
            q_pred_a = decide_grades(q_scores, q_thresholds)
            q_adapted = _versions(model, images, batch, q_pred_a, q_plain, versions=np.unique(g_pred_a))
            rows["unified_grader_adapted"] = ranked(
                unified_similarity(q_adapted, q_pred_a, g_graded_a, g_pred_a, offsets)
            )
            rows["query_graded_occluded_fraction_adapted"] = float((q_pred_a > 0).mean())
        results[name] = rows
        _log_rows(name, rows)
    # each kind's occluded rows averaged over the seeds (one seed: its rows)
    names = [name for name, _, _ in views]
    for kind in kinds:
        picked = [i for i, name in enumerate(names) if name.startswith(f"{kind}_seed")]
        by_seed = [results[names[i]] for i in picked]
        results[kind] = {
            k: _mean_rows([r[k] for r in by_seed])
            if isinstance(by_seed[0][k], dict)
            else float(np.mean([r[k] for r in by_seed]))
            for k in by_seed[0]
        }
        _log_rows(f"{kind}, mean of {len(by_seed)} seeds", results[kind])
        if has_grader:
            true = [grader_true[0]] + [grader_true[i] for i in picked]
            pred = [grader_pred[0]] + [grader_pred[i] for i in picked]
            results["grader" if kind == "occluded" else f"grader_{kind}"] = {
                "occluded_queries": grader_report(np.concatenate(true[1:]), np.concatenate(pred[1:])),
                "holistic_and_occluded_queries": grader_report(np.concatenate(true), np.concatenate(pred)),
            }
    results["encode_wall_s"] = time.time() - t0
    return results


def _held_out_records(extra: dict, weights: str, data: str) -> tuple[list[ReIDRecord], list[ReIDRecord]]:
    try:
        return held_out_split(held_out_records(extra, data, weights))
    except ValueError as err:
        raise SystemExit(str(err)) from err


#: occluders drawn once (seed 0) from the occluder folder
OCCLUDER_POOL = 500


def _person_occluder(folder: str, masks_dir: str, hw: tuple[int, int]):
    """``occlude(images, seed)`` pasting people of ``folder`` (with a usable parsing map) in front."""
    records = read_market_folder(folder)
    masks, usable = load_body_masks(records, masks_dir, hw)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.permutation(np.flatnonzero(usable))[:OCCLUDER_POOL])
    people = load_images([records[i] for i in pick], hw)
    bodies = masks[torch.from_numpy(pick)]
    return lambda images, seed: synthesize_person_occlusions(images, people, bodies, seed)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__name__, __doc__)
    parser.add_argument(
        "--weights", required=True, help="OAMN checkpoint, or backbone weights with --backbone"
    )
    parser.add_argument(
        "--data", required=True, help="PETA root, a subset's archive/ folder or a Market-style root"
    )
    parser.add_argument("--json", required=True, help="metrics JSON to write")
    parser.add_argument("--backbone", help="evaluate a plain backbone of this name with --weights")
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="input size for --backbone (an OAMN checkpoint carries its own)",
    )
    parser.add_argument("--subset", default="VIPeR", help="PETA subset to evaluate on")
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="evaluate on the training identities the checkpoint held out (data.holdout_ids) instead "
        "of --subset: the split that chose its training step and thresholds; each identity's first "
        "image is the query",
    )
    parser.add_argument("--query-cam", type=int, default=1, help="PETA: camera of the queries")
    parser.add_argument("--gallery-cam", type=int, default=2, help="PETA: camera of the gallery")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2, 3, 4],
        help="seeds of the synthetic query occlusions: one occluded query set per seed, reported per "
        "seed ('occluded_seedN') and averaged ('occluded'); one seed's rank-1 moves by about 2 points",
    )
    parser.add_argument(
        "--thresholds",
        nargs=2,
        type=float,
        metavar=("QUARTER", "HALF"),
        help="grader decision thresholds of eq. 8 (default: the checkpoint's, calibrated at training "
        "time on held-out training ids; the paper's 0.5 0.75 for older checkpoints)",
    )
    parser.add_argument(
        "--no-offsets",
        action="store_true",
        help="match without the checkpoint's similarity offsets (the paper's raw similarities)",
    )
    parser.add_argument(
        "--occlusion",
        choices=["corner", "person"],
        nargs="+",
        default=["corner"],
        help="synthetic query occlusion kinds, each against the same gallery: OAMN's corner patches "
        "(sec. 3.1; rows 'occluded') and/or another person pasted in front "
        "(models.reid.realistic_occlusion; rows 'person_occluded'; needs --occluders and --occluder-masks)",
    )
    parser.add_argument("--occluders", help="folder of person crops to paste in front (e.g. Market train)")
    parser.add_argument("--occluder-masks", help="their parsing maps (<stem>.png, 0 = background)")
    parser.add_argument(
        "--no-unification", action="store_true", help="plain matching rows only (no masked versions)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="crops per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    offsets, reference_median, extra = None, None, {}
    if args.backbone:
        if not args.input_size:
            parser.error("--backbone needs --input-size H W")
        model: torch.nn.Module = _BackboneModel(create_backbone(args.backbone, weights=args.weights)).eval()
        hw = tuple(args.input_size)
        desc = {"model": "backbone", "backbone": args.backbone}
        thresholds = GradeThresholds(*(args.thresholds or (0.5, 0.75)))
    else:
        oamn, cfg, extra = load_oamn_checkpoint(args.weights)
        model = _OAMNModel(oamn).eval()
        hw = tuple(cfg.input_size)
        if args.input_size and tuple(args.input_size) != hw:
            parser.error(f"{args.weights} was trained at {hw}; --input-size cannot change it")
        desc = {"model": "oamn", "backbone": cfg.backbone}
        thresholds = GradeThresholds(*args.thresholds) if args.thresholds else cfg.thresholds()
        if cfg.similarity_offsets is not None and not args.no_offsets:
            offsets = np.asarray(cfg.similarity_offsets, dtype=np.float32)
        if not args.thresholds:  # the reference median belongs to the calibrated thresholds
            reference_median = cfg.grader_reference_median
    if args.held_out:
        if args.backbone:
            parser.error("--held-out needs an OAMN checkpoint (it lists the identities held out)")
        query, gallery = _held_out_records(extra, args.weights, args.data)
        desc["split"] = "held-out training identities"
    else:
        query, gallery = evaluation_split(args.data, args.subset, args.query_cam, args.gallery_cam)
        desc["split"] = f"{args.subset} camera {args.query_cam} -> {args.gallery_cam}"
    kinds = {}
    if "person" in args.occlusion:
        if not (args.occluders and args.occluder_masks):
            parser.error("--occlusion person needs --occluders and --occluder-masks")
        kinds["person_occluded"] = _person_occluder(args.occluders, args.occluder_masks, hw)
        desc["person_occlusion"] = f"people from {args.occluders} pasted in front"
    if "corner" in args.occlusion:
        occlude = synthesize_occlusions
    else:  # person only: its rows under 'occluded'
        occlude = kinds.pop("person_occluded")
        desc["occlusion"] = desc.pop("person_occlusion")
    results = evaluate(
        model,
        hw,
        query,
        gallery,
        tuple(args.seeds),
        args.batch_size,
        thresholds,
        offsets,
        reference_median,
        occlude,
        not args.no_unification,
        kinds,
    )
    results.update(
        desc,
        data=str(args.data),
        weights=str(args.weights),
        grade_thresholds=[thresholds.quarter, thresholds.half],
        similarity_offsets=offsets is not None,
        grader_reference_median=reference_median,
    )
    write_json(args.json, results)
    logger.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
