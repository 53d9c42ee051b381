"""Track-level identity matching with an OAMN checkpoint: what aggregating a track's crops
(``models/reid/track_embedding.py``) gains over the paper's single-crop matching, and the
new-identity threshold of the identify stage, chosen on the checkpoint's held-out training identities.

    amodal eval identity --weights models/weights/oamn_osnet_x0_25_peta.pt \\
        --data ../shared/datasets/Market-1501 --json runs/eval_identity.json --threads 1

Tracks. A track is every crop of one identity in one camera. On Market-1501 (``--data``, a root with
``query/`` and ``bounding_box_test/``; junk -1 and distractors 0 skipped) that is the identity's
query image of that camera plus its ``bounding_box_test`` images of that camera: ``--num-ids``
identities seen by at least two cameras, drawn with ``--id-seed``, each track thinned to
``--max-track-len`` crops evenly spaced in frame order. Every track is a query; the gallery is every
track (or crop) of the sampled identities, and the same identity in the same camera is excluded
(the standard protocol), so a query track only finds its identity in other cameras.

Defaults (30 Market identities, id seed 0, tracks of at most 6 crops: 132 tracks, 549 crops; all 80
held-out identities: 160 tracks, 535 crops) take about 9 minutes on one thread of a busy 2-core CPU,
most of it encoding the 9 unification versions of every gallery crop.

Rows (unified matching with grader grades and the checkpoint's offsets, as ``OcclusionGallery``):

* ``crop_to_crop``: the paper: each crop of a query track alone against the gallery crops, rank-1 /
  AP averaged over the track's crops, then over tracks (``crop_to_crop_none``: no unification;
  ``query_crop_to_crop``: only the one crop of ``query/``, the standard Market query);
* ``track_to_crop``: the aggregated query track against the gallery crops (same gallery);
* ``crop_to_track``: each query crop against aggregated gallery tracks;
* ``track_to_track``: both aggregated: a track matched against a gallery of tracks, as the
  identify stage does.

Views: ``holistic`` query crops; ``occluded``: every query crop occluded synthetically (OAMN sec. 3.1
corner patches, type uniform, ``--seed``, as ``amodal eval reid``); ``mixed``: each query crop
occluded with probability ``--mixed-prob`` (the same occluded copies). Gallery crops stay holistic.

Aggregation (``--variant`` or chosen): crop weights (uniform, visible share, sharpness, top-K) x the
track's grade rule. The variant is **chosen on the held-out training identities** (mean of rank-1 and
mAP of ``track_to_track`` over the three views; ``choose_variant``), never on Market; Market reports
every variant too.

New identity. On the held-out PETA identities (the checkpoint's ``held_out_ids``, ``--held-out-data``,
default the checkpoint's data root), each identity's crops (path order, i.e. time or camera order)
are split into two tracks, A and B. Query tracks A (holistic and mixed-occluded) meet a gallery of all
B tracks and vice versa: a *known* trial keeps the query's own identity in the gallery, an *unknown*
trial removes it. ``new_identity_threshold`` maximises the balanced open-set accuracy: the mean of
(known trials whose best match is the right identity and scores >= threshold) and (unknown trials
whose best match scores < threshold). Pairwise same / different similarity quantiles, the pairwise
equal-error and 1 %-false-match thresholds are reported alongside.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from amodal.commands import command_parser
from models.data.reid_datasets import ReIDRecord, load_images, normalize, read_market_folder
from models.reid.calibration import held_out_records
from models.reid.encoder import TorchEncoder
from models.reid.evaluation import synthesize_occlusions
from models.reid.grader import GradeThresholds, decide_grades
from models.reid.metrics import cmc_map
from models.reid.oamn import load_oamn_checkpoint
from models.reid.occlusion_augment import NUM_GRADES
from models.reid.track_embedding import TrackEmbedding, crop_weights, laplacian_sharpness
from models.reid.unification import plain_similarity, unification_versions, unified_similarity
from models.training import write_json

logger = logging.getLogger("eval_identity")

REPO_ROOT = Path(__file__).resolve().parents[1]
VIEWS = ("holistic", "occluded", "mixed")
#: views the new-identity threshold is chosen on (a camera sees mostly whole people, some occluded)
THRESHOLD_VIEWS = ("holistic", "mixed")
#: held-out score points a top-K variant must gain over the best running mean (``choose_variant``)
TOP_K_MARGIN = 1.0
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass(frozen=True)
class Variant:
    """One aggregation: crop weights (``occlusion_power`` None = uniform) and the track grade rule."""

    occlusion_power: float | None = 2.0
    sharpness: bool = True
    top_k: int | None = None
    grade_rule: str = "holistic_share"
    holistic_share: float = 0.5

    @property
    def name(self) -> str:
        if self.occlusion_power is None:
            w = "uniform"
        else:
            w = f"visible^{self.occlusion_power:g}" + ("+sharp" if self.sharpness else "")
        if self.top_k:
            w += f",top{self.top_k}"
        rule = "dominant" if self.grade_rule == "dominant" else f"holistic>={self.holistic_share:g}"
        return f"{w}|{rule}"


def _variants() -> list[Variant]:
    weights = [
        dict(occlusion_power=None, sharpness=False),
        dict(occlusion_power=1.0, sharpness=False),
        dict(occlusion_power=2.0, sharpness=False),
        dict(occlusion_power=2.0, sharpness=True),
        dict(occlusion_power=2.0, sharpness=True, top_k=3),
    ]
    rules = [
        dict(grade_rule="dominant"),
        dict(grade_rule="holistic_share", holistic_share=0.5),
        dict(grade_rule="holistic_share", holistic_share=0.25),
        dict(grade_rule="holistic_share", holistic_share=0.0),
    ]
    return [Variant(**w, **r) for w in weights for r in rules]


VARIANTS = {v.name: v for v in _variants()}


# -- data ---------------------------------------------------------------------------------------
@dataclass
class TrackSet:
    """Crops grouped into tracks: ``crop_track[i]`` is crop i's track; tracks carry id and camera."""

    records: list[ReIDRecord]
    crop_track: np.ndarray
    track_ids: np.ndarray
    track_cams: np.ndarray
    crop_is_query: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def crop_ids(self) -> np.ndarray:
        return self.track_ids[self.crop_track]

    @property
    def crop_cams(self) -> np.ndarray:
        return self.track_cams[self.crop_track]

    def sizes(self) -> dict:
        lengths = np.bincount(self.crop_track, minlength=len(self.track_ids))
        return {
            "num_ids": len(set(self.track_ids.tolist())),
            "num_tracks": len(self.track_ids),
            "num_crops": len(self.records),
            "crops_per_track_mean": float(lengths.mean()),
            "crops_per_track_max": int(lengths.max()),
        }


def _thin(items: list, k: int) -> list:
    """At most ``k`` items, evenly spaced (first and last kept)."""
    if len(items) <= k:
        return items
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))]


def _build(groups: list[tuple[str, int, list[ReIDRecord]]], query_paths: set[str]) -> TrackSet:
    records, crop_track, ids, cams = [], [], [], []
    for t, (pid, cam, recs) in enumerate(groups):
        records += recs
        crop_track += [t] * len(recs)
        ids.append(pid)
        cams.append(cam)
    return TrackSet(
        records,
        np.array(crop_track, dtype=np.int64),
        np.array(ids),
        np.array(cams, dtype=np.int64),
        np.array([r.path in query_paths for r in records], dtype=bool),
    )


def market_tracks(root: str | Path, num_ids: int, id_seed: int, max_track_len: int) -> TrackSet:
    """Tracks = (identity, camera) of Market's ``query/`` + ``bounding_box_test/`` crops, for
    ``num_ids`` identities seen by >= 2 cameras drawn with ``id_seed`` (0 = all)."""
    root = Path(root)
    if not ((root / "query").is_dir() and (root / "bounding_box_test").is_dir()):
        raise FileNotFoundError(f"{root}: not a Market-style root (query/, bounding_box_test/)")
    query = read_market_folder(root / "query")
    gallery = read_market_folder(root / "bounding_box_test")
    by_track: dict[tuple[str, int], list[ReIDRecord]] = {}
    for r in query + gallery:
        by_track.setdefault((r.pid, r.camid), []).append(r)
    cams_of: dict[str, set[int]] = {}
    for pid, cam in by_track:
        cams_of.setdefault(pid, set()).add(cam)
    eligible = sorted((p for p, c in cams_of.items() if len(c) >= 2), key=int)
    if not eligible:
        raise ValueError(f"{root}: no identity is seen by two cameras")
    rng = np.random.default_rng(id_seed)
    chosen = eligible if num_ids <= 0 else sorted(rng.permutation(eligible)[:num_ids].tolist(), key=int)
    groups = [
        (pid, cam, _thin(sorted(by_track[(pid, cam)], key=lambda r: Path(r.path).name), max_track_len))
        for pid in chosen
        for cam in sorted(cams_of[pid])
    ]
    return _build(groups, {r.path for r in query})


def held_out_tracks(
    extra: dict, weights: str, data: str | Path, max_ids: int, max_track_len: int
) -> TrackSet:
    """Two tracks per held-out identity (``extra``, the checkpoint ``weights``' own, lists them) with
    >= 2 crops: the first half of its crops in path order (camera 0) and the second half (camera 1)."""
    records = held_out_records(extra, data, weights)
    by_id: dict[str, list[ReIDRecord]] = {}
    for r in records:
        by_id.setdefault(r.pid, []).append(r)
    pids = [p for p in by_id if len(by_id[p]) >= 2]
    if max_ids > 0:
        pids = pids[:max_ids]
    groups = []
    for pid in pids:
        recs = sorted(by_id[pid], key=lambda r: r.path)
        half = (len(recs) + 1) // 2
        groups.append((pid, 0, _thin(recs[:half], max_track_len)))
        groups.append((pid, 1, _thin(recs[half:], max_track_len)))
    return _build(groups, set())


# -- encoding -----------------------------------------------------------------------------------
@dataclass
class Encoded:
    """One view of a track set's crops: plain embeddings, grades, (9, N, D) versions (rows computed
    as needed), sharpness of the network input."""

    images: torch.Tensor
    plain: np.ndarray
    grades: np.ndarray
    sharpness: np.ndarray
    versions: np.ndarray
    done: set[int] = field(default_factory=set)


def _encode(encoder: TorchEncoder, images_uint8: torch.Tensor, thresholds: GradeThresholds) -> Encoded:
    x = normalize(images_uint8)
    plain, scores = encoder(x)
    sharp = np.array([laplacian_sharpness(im.permute(1, 2, 0).numpy()) for im in images_uint8])
    versions = np.zeros((NUM_GRADES, len(x), plain.shape[1]), dtype=np.float32)
    return Encoded(x, plain, decide_grades(scores, thresholds), sharp, versions)


def _ensure_versions(encoder: TorchEncoder, enc: Encoded, needed: Sequence[int]) -> None:
    missing = sorted({int(k) for k in needed} - enc.done)
    if missing:
        v = unification_versions(encoder, enc.images, enc.grades, enc.plain, missing)
        enc.versions[missing] = v.transpose(1, 0, 2)[missing]
        enc.done.update(missing)


def _mixed(holistic: Encoded, occluded: Encoded, pick: np.ndarray) -> Encoded:
    """Crops ``pick`` from ``occluded``, the rest from ``holistic`` (versions must be computed)."""
    return Encoded(
        holistic.images,  # not re-encoded
        np.where(pick[:, None], occluded.plain, holistic.plain),
        np.where(pick, occluded.grades, holistic.grades),
        np.where(pick, occluded.sharpness, holistic.sharpness),
        np.where(pick[None, :, None], occluded.versions, holistic.versions),
        holistic.done & occluded.done,
    )


def encode_views(
    encoder: TorchEncoder,
    tracks: TrackSet,
    hw: tuple[int, int],
    thresholds: GradeThresholds,
    seed: int,
    mixed_prob: float,
) -> dict[str, Encoded]:
    """``holistic`` (also the gallery), ``occluded`` and ``mixed`` views of the track set's crops,
    with the versions unified matching needs: the gallery (holistic) crops every grade a query has,
    the query crops every grade the gallery has (track grades are among their crops' grades or 0)."""
    raw = load_images(tracks.records, hw)
    holistic = _encode(encoder, raw, thresholds)
    occluded = _encode(encoder, synthesize_occlusions(raw, seed)[0], thresholds)
    gallery_grades = set(holistic.grades.tolist()) | {0}
    _ensure_versions(encoder, holistic, gallery_grades | set(occluded.grades.tolist()))
    _ensure_versions(encoder, occluded, gallery_grades)
    pick = np.random.default_rng([seed, 1]).random(len(raw)) < mixed_prob
    return {"holistic": holistic, "occluded": occluded, "mixed": _mixed(holistic, occluded, pick)}


def crop_heights(records: Sequence[ReIDRecord]) -> np.ndarray:
    """Original crop heights in pixels (the image header only)."""
    out = []
    for r in records:
        with Image.open(r.path) as img:
            out.append(img.size[1])
    return np.array(out, dtype=np.float64)


# -- aggregation and ranking --------------------------------------------------------------------
def aggregate(
    enc: Encoded, crop_track: np.ndarray, num_tracks: int, variant: Variant, heights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(9, T, D) track versions and (T,) track grades by ``variant`` (``TrackEmbedding``)."""
    if variant.occlusion_power is None:
        weights = np.ones(len(enc.grades))
    else:
        weights = crop_weights(
            enc.grades,
            enc.sharpness if variant.sharpness else None,
            heights,
            occlusion_power=variant.occlusion_power,
        )
    dim = enc.plain.shape[1]
    tracks = [
        TrackEmbedding(dim, variant.top_k, variant.grade_rule, variant.holistic_share)  # type: ignore[arg-type]
        for _ in range(num_tracks)
    ]
    for i, t in enumerate(crop_track.tolist()):
        tracks[t].add(enc.versions[:, i], int(enc.grades[i]), float(weights[i]))
    versions = np.stack([t.versions() for t in tracks], axis=1)
    return versions, np.array([t.grade for t in tracks], dtype=np.int64)


def per_query(
    sim: np.ndarray, q_ids: np.ndarray, g_ids: np.ndarray, q_cams: np.ndarray, g_cams: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rank-1 (0 / 100) and AP (%) of each query (``metrics.cmc_map``, same identity and camera
    excluded); NaN for a query without a true match."""
    r1, ap = np.full(len(q_ids), np.nan), np.full(len(q_ids), np.nan)
    for i in range(len(q_ids)):
        keep = ~((g_ids == q_ids[i]) & (g_cams == q_cams[i]))
        if not np.any(g_ids[keep] == q_ids[i]):
            continue
        res = cmc_map(sim[i : i + 1, keep], q_ids[i : i + 1], g_ids[keep], ranks=(1,))
        r1[i], ap[i] = res["rank1"], res["mAP"]
    return r1, ap


def summarise(r1: np.ndarray, ap: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """Mean rank-1 / mAP over queries with a true match; with ``groups`` (the track of each query
    crop), averaged within each track first so that every track weighs the same."""
    ok = np.isfinite(r1)
    if not ok.any():
        raise ValueError("no query has a true match in the gallery")
    out = {"num_queries": int(ok.sum())}
    if groups is None:
        out.update(rank1=float(r1[ok].mean()), mAP=float(ap[ok].mean()))
        return out
    g = groups[ok]
    keys, inv = np.unique(g, return_inverse=True)
    count = np.bincount(inv)
    out.update(
        rank1=float((np.bincount(inv, r1[ok]) / count).mean()),
        mAP=float((np.bincount(inv, ap[ok]) / count).mean()),
        num_tracks=len(keys),
    )
    return out


def _unified(q_v, q_g, g_v, g_g, offsets) -> np.ndarray:
    return unified_similarity(np.ascontiguousarray(q_v), q_g, np.ascontiguousarray(g_v), g_g, offsets)


def retrieval_rows(
    query: Encoded,
    gallery: Encoded,
    tracks: TrackSet,
    variants: Sequence[Variant],
    offsets: np.ndarray | None,
    heights: np.ndarray,
    crop_rows: bool = True,
) -> tuple[dict, dict]:
    """(single-crop rows, {variant: aggregated rows}) for one view: every track a query, the gallery
    every track / crop; same identity in the same camera excluded."""
    c_ids, c_cams, t_ids, t_cams = tracks.crop_ids, tracks.crop_cams, tracks.track_ids, tracks.track_cams
    single: dict = {}
    if crop_rows:
        for name, sim in (
            ("crop_to_crop_none", plain_similarity(query.plain, gallery.plain)),
            (
                "crop_to_crop",
                _unified(query.versions, query.grades, gallery.versions, gallery.grades, offsets),
            ),
        ):
            r1, ap = per_query(sim, c_ids, c_ids, c_cams, c_cams)
            single[name] = summarise(r1, ap, tracks.crop_track)
            if name == "crop_to_crop" and tracks.crop_is_query.any():
                q = tracks.crop_is_query
                single["query_crop_to_crop"] = summarise(r1[q], ap[q])
    n = len(t_ids)
    aggregated: dict = {}
    for v in variants:
        q_v, q_g = aggregate(query, tracks.crop_track, n, v, heights)
        g_v, g_g = aggregate(gallery, tracks.crop_track, n, v, heights)
        rows = {}
        sim = _unified(q_v, q_g, g_v, g_g, offsets)
        rows["track_to_track"] = summarise(*per_query(sim, t_ids, t_ids, t_cams, t_cams))
        if crop_rows:
            sim = _unified(q_v, q_g, gallery.versions, gallery.grades, offsets)
            rows["track_to_crop"] = summarise(*per_query(sim, t_ids, c_ids, t_cams, c_cams))
            sim = _unified(query.versions, query.grades, g_v, g_g, offsets)
            r1, ap = per_query(sim, c_ids, t_ids, c_cams, t_cams)
            rows["crop_to_track"] = summarise(r1, ap, tracks.crop_track)
        rows["graded_occluded_fraction"] = float((q_g > 0).mean())
        aggregated[v.name] = rows
    return single, aggregated


def choose_variant(scores: dict[str, float]) -> str:
    """The variant with the best held-out score, except that a top-K variant must beat the best
    running mean by ``TOP_K_MARGIN`` points: top-K drops crops, and the held-out tracks (a few crops
    each) cannot show what that costs on the long tracks of a live camera."""
    best = max(scores, key=lambda k: scores[k])
    full = [k for k in scores if VARIANTS[k].top_k is None]
    best_full = max(full, key=lambda k: scores[k]) if full else best
    return best if scores[best] > scores[best_full] + TOP_K_MARGIN else best_full


# -- new-identity threshold ---------------------------------------------------------------------
def _quantiles(x: np.ndarray) -> dict:
    return {f"q{int(round(q * 100)):02d}": float(np.quantile(x, q)) for q in QUANTILES} | {
        "mean": float(x.mean()),
        "num": int(len(x)),
    }


def open_set_trials(sim: np.ndarray, q_ids: np.ndarray, g_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per query: best score with its identity in the gallery (``known``), whether that best match is
    its identity (``known_correct``), best score with its identity removed (``unknown``), and the
    pairwise same / different scores."""
    same = q_ids[:, None] == g_ids[None, :]
    best = sim.argmax(1)
    masked = np.where(same, -np.inf, sim)
    return {
        "known": sim.max(1),
        "known_correct": same[np.arange(len(q_ids)), best],
        "unknown": masked.max(1),
        "same": sim[same],
        "different": sim[~same],
    }


def choose_threshold(known: np.ndarray, known_correct: np.ndarray, unknown: np.ndarray) -> dict:
    """The threshold maximising balanced open-set accuracy: mean of the share of known trials
    identified correctly (right identity, score >= t) and of unknown trials declared new (score < t).
    Candidates: every observed score; ties go to the midpoint of the best interval."""
    cands = np.unique(np.concatenate([known, unknown]))
    cands = np.concatenate([cands, [cands[-1] + 1e-6]])
    acc_known = ((known[None, :] >= cands[:, None]) & known_correct[None, :]).mean(1)
    acc_unknown = (unknown[None, :] < cands[:, None]).mean(1)
    balanced = (acc_known + acc_unknown) / 2
    first = int(np.argmax(balanced >= balanced.max() - 1e-12))
    last = first
    while last + 1 < len(cands) and balanced[last + 1] >= balanced.max() - 1e-12:
        last += 1
    # every t in (cands[first - 1], cands[last]] decides alike: take the middle
    lower = cands[first - 1] if first > 0 else cands[first] - 1e-6
    t = float((lower + cands[last]) / 2)
    known_accept = known >= t
    return {
        "threshold": t,
        "balanced_accuracy": float(((known_accept & known_correct).mean() + (unknown < t).mean()) / 2),
        "known_identified": float((known_accept & known_correct).mean()),
        "known_wrong_identity": float((known_accept & ~known_correct).mean()),
        "known_declared_new": float((~known_accept).mean()),
        "unknown_declared_new": float((unknown < t).mean()),
        "unknown_false_match": float((unknown >= t).mean()),
        "num_known_trials": int(len(known)),
        "num_unknown_trials": int(len(unknown)),
    }


def pairwise_thresholds(same: np.ndarray, different: np.ndarray) -> dict:
    """Equal-error threshold (false match rate = false non-match rate over pairs) and the threshold
    with a 1 % false match rate over pairs."""
    cands = np.unique(np.concatenate([same, different]))
    fmr = (different[None, :] >= cands[:, None]).mean(1)
    fnmr = (same[None, :] < cands[:, None]).mean(1)
    i = int(np.argmin(np.abs(fmr - fnmr)))
    return {
        "eer_threshold": float(cands[i]),
        "eer": float((fmr[i] + fnmr[i]) / 2),
        "fmr1_threshold": float(np.quantile(different, 0.99)),
        "fmr1_false_non_match_rate": float((same < np.quantile(different, 0.99)).mean()),
    }


def held_out_threshold(
    views: dict[str, Encoded], tracks: TrackSet, variant: Variant, offsets, heights: np.ndarray
) -> dict:
    """Open-set trials on the held-out tracks (A queries vs B gallery and B vs A; queries in
    ``THRESHOLD_VIEWS``, the gallery holistic) and the threshold they choose."""
    gallery = views["holistic"]
    n = len(tracks.track_ids)
    g_v, g_g = aggregate(gallery, tracks.crop_track, n, variant, heights)
    pooled: dict[str, list[np.ndarray]] = {}
    per_view = {}
    for view in THRESHOLD_VIEWS:
        q_v, q_g = aggregate(views[view], tracks.crop_track, n, variant, heights)
        sim = _unified(q_v, q_g, g_v, g_g, offsets)
        trials: dict[str, list[np.ndarray]] = {}
        for side in (0, 1):  # queries from camera `side` against the gallery of the other camera
            q = np.flatnonzero(tracks.track_cams == side)
            g = np.flatnonzero(tracks.track_cams != side)
            for k, val in open_set_trials(
                sim[np.ix_(q, g)], tracks.track_ids[q], tracks.track_ids[g]
            ).items():
                trials.setdefault(k, []).append(val)
                pooled.setdefault(k, []).append(val)
        t = {k: np.concatenate(v) for k, v in trials.items()}
        per_view[view] = choose_threshold(t["known"], t["known_correct"], t["unknown"])
    t = {k: np.concatenate(v) for k, v in pooled.items()}
    chosen = choose_threshold(t["known"], t["known_correct"], t["unknown"])
    return {
        "chosen": chosen,
        "per_view": per_view,
        "pairwise": pairwise_thresholds(t["same"], t["different"]),
        "same_identity_similarity": _quantiles(t["same"]),
        "different_identity_similarity": _quantiles(t["different"]),
        "best_known_similarity": _quantiles(t["known"]),
        "best_unknown_similarity": _quantiles(t["unknown"]),
        "gallery_tracks_per_trial": int(n // 2),
        "views": list(THRESHOLD_VIEWS),
    }


# -- report -------------------------------------------------------------------------------------
def _fmt(row: dict) -> str:
    return f"{row['rank1']:6.2f} {row['mAP']:6.2f}"


def print_report(results: dict) -> None:
    m, h = results["market"], results["held_out"]
    chosen = results["aggregation"]["variant"]
    print(f"\nMarket-1501 (cross-dataset), {m['sizes']}")
    print(f"aggregation: {chosen} (chosen on held-out PETA)")
    print(f"{'view':9s} {'query -> gallery':34s} {'rank-1':>6s} {'mAP':>6s}")
    for view in VIEWS:
        rows = m["views"][view]
        agg = m["variants"][chosen][view]
        for label, row in (
            ("crop -> crop, no unification", rows["crop_to_crop_none"]),
            ("crop -> crop (paper)", rows["crop_to_crop"]),
            ("track -> crop", agg["track_to_crop"]),
            ("crop -> track", agg["crop_to_track"]),
            ("track -> track", agg["track_to_track"]),
        ):
            print(f"{view:9s} {label:34s} {_fmt(row)}")
    print("\ntrack -> track rank-1 / mAP by aggregation (held-out PETA chose; Market for the record)")
    print(
        f"{'variant':36s} "
        + " ".join(f"{'PETA ' + v[:4]:>13s}" for v in VIEWS)
        + "  "
        + " ".join(f"{'Market ' + v[:4]:>13s}" for v in VIEWS)
    )
    for name in h["variants"]:
        cells = [_fmt(h["variants"][name][v]["track_to_track"]) for v in VIEWS]
        cells += [_fmt(m["variants"][name][v]["track_to_track"]) for v in VIEWS]
        mark = "*" if name == chosen else " "
        print(f"{mark}{name:35s} " + " ".join(cells))
    t = results["new_identity"]
    print(
        f"\nnew identity threshold {results['new_identity_threshold']:.4f} "
        f"({results['new_identity_threshold_rule']})"
    )
    c = t["chosen"]
    print(
        f"  known identified {100 * c['known_identified']:.1f} %, "
        f"declared new {100 * c['known_declared_new']:.1f} %, "
        f"wrong identity {100 * c['known_wrong_identity']:.1f} %; unknown declared new "
        f"{100 * c['unknown_declared_new']:.1f} %"
    )
    for key in ("same_identity_similarity", "different_identity_similarity"):
        q = t[key]
        print(
            f"  {key}: " + ", ".join(f"{k} {v:.3f}" for k, v in q.items() if k != "num") + f" (n={q['num']})"
        )
    print(f"  pairwise: {t['pairwise']}")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__name__, __doc__)
    parser.add_argument("--weights", required=True, help="OAMN checkpoint with held-out identities")
    parser.add_argument("--data", required=True, help="Market-1501-style root (query/, bounding_box_test/)")
    parser.add_argument("--json", required=True, help="metrics JSON to write")
    parser.add_argument(
        "--held-out-data",
        help="PETA root holding the checkpoint's held-out identities (default: the checkpoint's data "
        "root, relative to the repository)",
    )
    parser.add_argument("--num-ids", type=int, default=30, help="Market identities drawn (0 = all)")
    parser.add_argument("--id-seed", type=int, default=0, help="seed of the Market identity draw")
    parser.add_argument("--max-track-len", type=int, default=6, help="crops kept per track, evenly spaced")
    parser.add_argument("--held-out-ids", type=int, default=0, help="first N held-out identities (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic query occlusions")
    parser.add_argument("--mixed-prob", type=float, default=0.5, help="share of occluded crops, mixed view")
    parser.add_argument(
        "--variant", choices=sorted(VARIANTS), help="aggregation to report (default: chosen on held-out)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="crops per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_track_len < 1 or not 0 <= args.mixed_prob <= 1:
        parser.error("--max-track-len must be >= 1 and --mixed-prob in [0, 1]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model, cfg, extra = load_oamn_checkpoint(args.weights)
    encoder = TorchEncoder(model, args.batch_size)
    hw = tuple(cfg.input_size)
    thresholds = cfg.thresholds()
    offsets = None if cfg.similarity_offsets is None else np.asarray(cfg.similarity_offsets, np.float32)
    held_root = args.held_out_data or str(REPO_ROOT / extra.get("data", {}).get("root", ""))
    variants = list(VARIANTS.values())

    # held-out PETA identities: choose the aggregation and the new-identity threshold
    try:
        held = held_out_tracks(extra, args.weights, held_root, args.held_out_ids, args.max_track_len)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    logger.info("held-out PETA: %s", held.sizes())
    held_views = encode_views(encoder, held, hw, thresholds, args.seed, args.mixed_prob)
    held_heights = crop_heights(held.records)
    held_rows: dict = {}
    for view in VIEWS:
        _, agg = retrieval_rows(
            held_views[view], held_views["holistic"], held, variants, offsets, held_heights, crop_rows=False
        )
        for name, rows in agg.items():
            held_rows.setdefault(name, {})[view] = rows
    scores = {
        name: float(
            np.mean([(r[v]["track_to_track"]["rank1"] + r[v]["track_to_track"]["mAP"]) / 2 for v in VIEWS])
        )
        for name, r in held_rows.items()
    }
    chosen = args.variant or choose_variant(scores)
    logger.info("aggregation chosen: %s (held-out score %.2f)", chosen, scores[chosen])
    new_identity = held_out_threshold(held_views, held, VARIANTS[chosen], offsets, held_heights)

    # Market-1501: single-crop vs aggregated matching
    market = market_tracks(args.data, args.num_ids, args.id_seed, args.max_track_len)
    logger.info("Market-1501: %s", market.sizes())
    views = encode_views(encoder, market, hw, thresholds, args.seed, args.mixed_prob)
    heights = crop_heights(market.records)
    market_rows: dict = {"sizes": market.sizes(), "views": {}, "variants": {}}
    for view in VIEWS:
        single, agg = retrieval_rows(views[view], views["holistic"], market, variants, offsets, heights)
        single["graded_occluded_fraction"] = float((views[view].grades > 0).mean())
        market_rows["views"][view] = single
        for name, rows in agg.items():
            market_rows["variants"].setdefault(name, {})[view] = rows
        logger.info("Market %s: crop->crop %s", view, single["crop_to_crop"])

    rule = (
        "maximises balanced open-set accuracy on the checkpoint's held-out PETA training identities "
        "(two tracks per identity; known trials: best match is the right identity and >= threshold; "
        "unknown trials: own identity removed, best match < threshold; "
        f"queries {', '.join(THRESHOLD_VIEWS)}, "
        f"gallery of {new_identity['gallery_tracks_per_trial']} tracks; unified similarity less the "
        "checkpoint's offsets, as OcclusionGallery.match scores)"
    )
    results = {
        "weights": str(args.weights),
        "data": str(args.data),
        "held_out_data": str(held_root),
        "market": market_rows,
        "held_out": {"sizes": held.sizes(), "variants": held_rows, "selection_score": scores},
        "aggregation": {"variant": chosen, **asdict(VARIANTS[chosen])},
        "new_identity": new_identity,
        "new_identity_threshold": new_identity["chosen"]["threshold"],
        "new_identity_threshold_rule": rule,
        "settings": {
            "num_ids": args.num_ids,
            "id_seed": args.id_seed,
            "max_track_len": args.max_track_len,
            "held_out_ids": args.held_out_ids,
            "occlusion_seed": args.seed,
            "mixed_prob": args.mixed_prob,
            "grade_thresholds": [thresholds.quarter, thresholds.half],
            "similarity_offsets": offsets is not None,
        },
        "wall_s": time.time() - t0,
    }
    write_json(args.json, results)
    print_report(results)
    logger.info("wrote %s in %.0f s", args.json, results["wall_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
