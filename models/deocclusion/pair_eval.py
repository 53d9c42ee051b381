"""Evaluation of de-occluders on pairs with exact targets (``pairs.py``): what ``amodal eval deocclusion``
reports for two-stage files, the U-Net baseline and the shipped generator, on the same pairs.

Per set of crops: SSIM / PSNR of the whole crop, of the occluder's region (known exactly for any
crop) and of the hidden body (where the crop's full-body mask is known), occluded vs restored; the
predicted masks' IoUs; attribute metrics and ReID rank-1 / mAP on occluded, restored and clean
crops when the set has labels and cameras.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.timing import call_seconds

from .checkpoint import load_generator
from .data import to_uint8
from .grid import save_columns
from .image_metrics import batch_ssim_psnr, mask_iou, region_ssim_psnr
from .pairs import KINDS, PairBatch
from .two_stage import is_two_stage, two_stage_from

__all__ = ["Restorer", "load_restorer", "restore", "image_table", "mask_ious", "mask_table", "timing"]


@dataclass
class Restorer:
    """A de-occluder as the evaluation sees it: uint8 (N, 3, H, W) in, uint8 (N, H, W, 3) restored
    and, for two-stage files, the predicted masks (each (N, H, W) bool) out."""

    name: str
    image_size: tuple[int, int]
    module: torch.nn.Module
    two_stage: bool
    recipe: dict | None = None  # a two-stage file's training recipe (its held-out identities)

    def __call__(self, occluded: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = occluded.float() / 127.5 - 1.0
        with torch.no_grad():
            if not self.two_stage:
                return to_uint8(self.module(x)), {}
            out = self.module.infer(x)
        masks = {
            "modal": (out["visible"] > 0.5)[:, 0].numpy(),
            "amodal": (out["amodal"] > 0.5)[:, 0].numpy(),
            "occluder": (out["region"] > 0.5)[:, 0].numpy(),
        }
        return to_uint8(out["restored"]), masks


def load_restorer(path: str | Path) -> Restorer:
    """A two-stage file (either content network) or a shipped U-Net generator file."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    name = Path(path).stem
    if is_two_stage(payload):
        model, cfg = two_stage_from(payload, path)
        return Restorer(f"{name} ({cfg.content})", tuple(cfg.image_size), model, True, payload.get("recipe"))
    generator, cfg, _ = load_generator(path)
    if cfg.num_attributes:
        raise ValueError(
            f"{path}: attribute-conditioned generators need attribute inputs; not supported here"
        )
    return Restorer(f"{name} (U-Net, no mask input)", tuple(cfg.image_size), generator, False)


def restore(
    restorer: Restorer, occluded: torch.Tensor, batch: int = 32
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    images, masks = [], {}
    for start in range(0, len(occluded), batch):
        out, m = restorer(occluded[start : start + batch])
        images.append(out)
        for k, v in m.items():
            masks.setdefault(k, []).append(v)
    return np.concatenate(images), {k: np.concatenate(v) for k, v in masks.items()}


def _region_means(images: np.ndarray, clean: np.ndarray, regions: np.ndarray) -> tuple[float, float]:
    values = np.array([region_ssim_psnr(a, b, r) for a, b, r in zip(images, clean, regions, strict=True)])
    s, p = values[:, 0], values[:, 1]
    return float(np.nanmean(s)), float(np.mean(p[np.isfinite(p)]))


def image_table(pairs: PairBatch, restored: np.ndarray, body_known: bool) -> dict:
    """SSIM / PSNR, occluded and restored against clean: whole crop, occluder region, hidden body
    (``body_known``), and the whole crop per occluder kind."""
    occluded = pairs.occluded.permute(0, 2, 3, 1).numpy()
    clean = pairs.clean.permute(0, 2, 3, 1).numpy()
    table: dict = {}
    per_image = {}
    for name, images in (("occluded", occluded), ("restored", restored)):
        s, p = batch_ssim_psnr(images, clean)
        per_image[name] = (s, p)
        table[f"ssim_{name}"] = float(s.mean())
        table[f"psnr_{name}"] = float(p[np.isfinite(p)].mean())
        table[f"region_ssim_{name}"], table[f"region_psnr_{name}"] = _region_means(
            images, clean, pairs.occluder.numpy()
        )
        if body_known:
            table[f"hidden_ssim_{name}"], table[f"hidden_psnr_{name}"] = _region_means(
                images, clean, pairs.hidden.numpy()
            )
    table["occluded_share"] = float(pairs.occluder.float().mean())
    table["kinds"] = {}
    for kind in KINDS:
        rows = pairs.kinds == kind
        if rows.any():
            entry = {"count": int(rows.sum())}
            for name, (s, p) in per_image.items():
                entry[f"ssim_{name}"] = float(s[rows].mean())
                entry[f"psnr_{name}"] = float(p[rows][np.isfinite(p[rows])].mean())
            table["kinds"][kind] = entry
    return table


def mask_ious(pairs: PairBatch, masks: dict[str, np.ndarray], body_known: bool) -> dict[str, np.ndarray]:
    """Per-crop IoUs of predicted masks (each (N, H, W) bool): the occluder always, modal / amodal /
    invisible (amodal minus modal) where the body is known."""
    out = {"occluder": mask_iou(masks["occluder"], pairs.occluder.numpy())}
    if body_known:
        out["modal"] = mask_iou(masks["modal"], pairs.visible.numpy())
        out["amodal"] = mask_iou(masks["amodal"], pairs.amodal.numpy())
        out["invisible"] = mask_iou(masks["amodal"] & ~masks["modal"], pairs.hidden.numpy())
    return out


def mask_table(pairs: PairBatch, masks: dict[str, np.ndarray], body_known: bool) -> dict:
    """Mean ``mask_ious``, keyed ``iou_<mask>``."""
    return {f"iou_{k}": float(v.mean()) for k, v in mask_ious(pairs, masks, body_known).items()}


def timing(
    run: Callable[[torch.Tensor], object], size: tuple[int, int], batches=(1, 32), repeats: int = 5
) -> dict:
    """CPU milliseconds per crop at each batch size (median of ``repeats`` runs after a warm-up)."""
    out = {}
    for b in batches:
        x = torch.randint(0, 256, (b, 3, *size), dtype=torch.uint8)
        times = call_seconds(lambda x=x: run(x), repeats, warmup=1)
        out[f"ms_per_crop_batch{b}"] = 1000 * float(np.median(times)) / b
    return out


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, 3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class PairEvalSettings:
    """What ``evaluate_pairs`` evaluates (``amodal eval deocclusion``'s pairs protocol)."""

    weights: list[str]
    market: str
    peta: str
    sets: list[str]
    seed: int = 0
    query_limit: int = 1000
    viper_limit: int | None = None
    attribute_model: str | None = None
    reid_weights: str | None = None
    batch_size: int = 32
    grid: str | None = None


def _held_out_split(restorers: list[Restorer]) -> tuple[int, int, str]:
    """(held-out identities, seed, parsing folder) of the two-stage files' training runs; they must
    agree, so that every file is evaluated on identities none of them saw."""
    splits = {
        (r.recipe["data"]["held_out_ids"], r.recipe["run"]["seed"], r.recipe["data"]["parsing"])
        for r in restorers
        if r.recipe is not None
    }
    if len(splits) != 1:
        raise ValueError(f"the two-stage files were trained with different held-out splits {sorted(splits)}")
    return splits.pop()


def evaluate_pairs(settings: PairEvalSettings) -> dict:
    """Every restorer on the same pairs of every set; see the module docstring for the figures."""
    from models.data.reid_datasets import load_images, read_market_folder

    from .pair_data import load_market_parts, split_identities
    from .pairs import DEFAULT_WEIGHTS, pair_set

    restorers = [load_restorer(w) for w in settings.weights]
    held_out_ids, split_seed, parsing = _held_out_split(restorers)
    size = restorers[0].image_size
    if any(r.image_size != size for r in restorers):
        raise ValueError(f"the files work at different sizes {[r.image_size for r in restorers]}")

    crops = load_market_parts(settings.market, parsing, size)
    _, held = split_identities(crops, held_out_ids, split_seed)
    occluders = (held.images, held.parts, held.usable, held.pids)  # people no file trained on
    sets: dict[str, tuple[PairBatch, bool, dict]] = {}
    seed = settings.seed + 100  # apart from the training run's validation pairs (run seed + 1)
    if "held-out" in settings.sets:
        sets["held-out"] = (pair_set(held.images, held.parts, held.usable, held.pids, seed), True, {})
    if "query" in settings.sets:
        records = read_market_folder(Path(settings.market) / "query")
        if settings.query_limit < len(records):
            keep = np.sort(
                np.random.default_rng(settings.seed).choice(len(records), settings.query_limit, replace=False)
            )
            records = [records[i] for i in keep]
        images = load_images(records, size)
        zeros = torch.zeros((len(images), *size), dtype=torch.uint8)
        pids = [r.pid for r in records]
        pairs = pair_set(
            images,
            zeros,
            np.ones(len(images), bool),
            pids,
            seed,
            weights=DEFAULT_WEIGHTS,
            occluders=occluders,
            min_hidden_share=0.0,
        )
        sets["query"] = (pairs, False, {})
    if "viper" in settings.sets:
        sets["viper"] = _viper_pairs(settings, size, occluders, seed)

    judges = _Judges.load(settings)
    results: dict = {"weights": list(settings.weights), "seed": settings.seed, "sets": {}}
    grids = {}
    for set_name, (pairs, body_known, extra) in sets.items():
        entry: dict = {"crops": len(pairs), "restorers": {}}
        if extra and judges.reid is not None:  # the clean camera-2 gallery, encoded once per set
            extra["gallery"] = judges.embed(pairs.clean.permute(0, 2, 3, 1).numpy()[extra["cams"] == 2])
        for restorer in restorers:
            restored, masks = restore(restorer, pairs.occluded, settings.batch_size)
            row = image_table(pairs, restored, body_known)
            if masks:
                row["masks"] = mask_table(pairs, masks, body_known)
            if extra:
                row.update(judges.rows(extra, {"restored": restored}))
            entry["restorers"][restorer.name] = row
            grids.setdefault(set_name, []).append(restored[:10])
        if extra:
            reference = {"occluded": pairs.occluded, "clean": pairs.clean}
            entry["reference"] = judges.rows(
                extra, {k: v.permute(0, 2, 3, 1).numpy() for k, v in reference.items()}
            )
        results["sets"][set_name] = entry
        if settings.grid:
            target = Path(settings.grid)
            occluded, clean = (x[:10].permute(0, 2, 3, 1).numpy() for x in (pairs.occluded, pairs.clean))
            save_columns(
                target.with_name(f"{target.stem}_{set_name}{target.suffix or '.png'}"),
                [occluded, *grids[set_name], clean],
            )
    results["timing"] = {r.name: timing(lambda x, r=r: r(x), size) for r in restorers}
    return results


def _viper_pairs(settings: PairEvalSettings, size, occluders, seed) -> tuple[PairBatch, bool, dict]:
    """VIPeR's crops (PETA-35 labels, cameras from the names) occluded by held-out Market people."""
    from models.data.reid_datasets import _peta_camera

    from .dataset_setup import load_crop_set
    from .pairs import pair_set

    crops = load_crop_set(
        settings.peta, ["VIPeR"], size, "peta35", limit=settings.viper_limit, seed=settings.seed
    )
    images = torch.from_numpy(crops.images).permute(0, 3, 1, 2).contiguous()
    zeros = torch.zeros((len(images), *size), dtype=torch.uint8)
    pairs = pair_set(
        images,
        zeros,
        np.ones(len(images), bool),
        crops.person_ids,
        seed,
        occluders=occluders,
        min_hidden_share=0.0,
    )
    cams = np.array([_peta_camera("VIPeR", Path(p).stem) for p in crops.paths])
    extra = {
        "labels": crops.labels,
        "names": list(crops.names),
        "pids": np.array(crops.person_ids),
        "cams": cams,
    }
    return pairs, False, extra


@dataclass
class _Judges:
    """The frozen attribute classifier and ReID network that score restored crops (loaded once)."""

    attributes: Any = None  # FrozenAttributeModel
    reid: Any = None  # (OAMN, its model config)

    @classmethod
    def load(cls, settings: PairEvalSettings) -> _Judges:
        from models.reid.oamn import load_oamn

        from .attribute_model import load_frozen_attribute_model

        attributes = (
            load_frozen_attribute_model(settings.attribute_model) if settings.attribute_model else None
        )
        return cls(attributes, load_oamn(settings.reid_weights) if settings.reid_weights else None)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """L2-normalised plain embeddings of RGB uint8 crops (N, H, W, 3)."""
        import torch.nn.functional as F

        from models.data.reid_datasets import normalize

        model, cfg = self.reid
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        if tuple(x.shape[2:]) != tuple(cfg.input_size):
            x = (
                F.interpolate(x.float(), size=tuple(cfg.input_size), mode="bilinear", align_corners=False)
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        with torch.no_grad():
            return torch.cat(
                [F.normalize(model(normalize(x[s : s + 64])).embedding, dim=1) for s in range(0, len(x), 64)]
            ).numpy()

    def rows(self, extra: dict, images: dict[str, np.ndarray]) -> dict:
        """Attribute metrics, and VIPeR's ReID protocol (camera-1 crops against the clean camera-2
        gallery, rank-1 / mAP of the plain embedding), for each named set of RGB uint8 crops."""
        from models.reid.metrics import cmc_map

        out: dict = {}
        if self.attributes is not None:
            if list(self.attributes.names) != extra["names"]:
                raise ValueError(
                    "the attribute model predicts other attributes than the evaluated labels (peta35)"
                )
            out["attributes"] = {k: self.attributes.scores(v, extra["labels"]) for k, v in images.items()}
        if self.reid is not None:
            q, g = extra["cams"] == 1, extra["cams"] == 2
            out["reid"] = {}
            for k, v in images.items():
                m = cmc_map(self.embed(v[q]) @ extra["gallery"].T, extra["pids"][q], extra["pids"][g])
                out["reid"][k] = {"rank1": m["rank1"], "mAP": m["mAP"]}
        return out
