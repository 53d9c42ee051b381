"""Train OAMN (Chen et al., ICCV 2021) from a YAML recipe.

    amodal train reid --config configs/reid_oamn_osnet_x0_25_peta.yaml [--set train.iterations=50]

``--resume`` continues from ``<run.out_dir>/last.pt``, as in every ``amodal train`` command; writes
``<run.out_dir>/metrics.json`` and the inference weights ``<run.out_dir>/oamn.pt`` at the end.
Run-level keys (``run.device``, ``run.threads``, ``run.seed``, ``run.out_dir``, cadences) are spelled
as in every other recipe: ``--set run.device=cuda --set run.threads=8``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amodal.commands import prog_of
from models.data.reid_datasets import (
    load_images,
    normalize,
    read_market_folder,
    read_peta_reid,
    relabel,
)
from models.reid.calibration import calibrate, calibrate_visibility
from models.reid.config import OAMNModelConfig, ReIDRecipe
from models.reid.evaluation import encode, holdout_split, validate
from models.reid.grader import decide_grades, occlusion_score
from models.reid.grader_data import (
    RealisticBatches,
    RealisticSet,
    load_body_masks,
    realistic_set,
)
from models.reid.grader_eval import roc_auc, spearman
from models.reid.losses import OAMNLoss, score_loss
from models.reid.oamn import OAMN, OAMNInference, load_oamn, save_oamn_weights
from models.reid.occlusion_augment import augment_batch
from models.reid.sampler import PKSampler
from models.training import (
    Checkpointer,
    pick_device,
    progress,
    seed_everything,
    set_threads,
    training_parser,
    write_json,
)
from pipeline.configfile import load_config

logger = logging.getLogger("train_reid")


def _records(recipe: ReIDRecipe):
    data = recipe.data
    if data.layout == "market":
        records = read_market_folder(data.root)
    else:
        records = read_peta_reid(data.root, data.subsets, data.min_images_per_id)
    if data.max_ids is not None:
        keep = set(sorted({r.pid for r in records})[: data.max_ids])
        records = [r for r in records if r.pid in keep]
    return records


def _train_transform(images: torch.Tensor, flip: bool, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and pad + random crop on a uint8 batch (before occlusion augmentation,
    so the occlusion labels stay exact)."""
    b, _, h, w = images.shape
    out = images.clone()
    if flip:
        flips = torch.rand(b, generator=gen) < 0.5
        out[flips] = out[flips].flip(-1)
    if pad > 0:
        padded = torch.nn.functional.pad(out, (pad, pad, pad, pad))
        ys = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        xs = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        out = torch.stack(
            [padded[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(zip(ys, xs, strict=True))]
        )
    return out


def _optimizer(name: str, params, lr: float, momentum: float, weight_decay: float = 0.0):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the base rate."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _grader_step(
    model: OAMN,
    batches: RealisticBatches,
    size: int,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    memory_format: torch.memory_format,
) -> dict[str, float]:
    """One step of eq. 7 on realistic occlusions with exact labels (the grader's own optimiser, as
    eq. 10's L2). E^I and the mask module run in eval mode without gradient: the grader reads a
    detached g, and this batch must not move the network's BatchNorm statistics."""
    batch = batches.sample(size)
    x = normalize(batch.images).to(device).contiguous(memory_format=memory_format)
    model.eval()
    with torch.no_grad():
        g = model.masked_features(x)
    model.train()
    scores = model.grader(g)
    loss = score_loss(scores, torch.from_numpy(batch.targets).to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    hidden = torch.from_numpy(batch.hidden_share).to(device)
    return {"grader": loss.item(), "visible_err": (scores[:, -1] - (1 - hidden)).abs().mean().item()}


def _load_network(model: OAMN, path: str) -> None:
    """The network of an OAMN checkpoint (not its grader or identity classifier) into ``model``."""
    init, _ = load_oamn(path)
    state = {k: v for k, v in init.state_dict().items() if not k.startswith("grader.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    left = [k for k in missing if not k.startswith(("grader.", "classifier."))]
    if left or unexpected:
        raise ValueError(
            f"{path}: its network does not match the recipe's model: {left[:5]} {unexpected[:5]}"
        )
    logger.info("network from %s (the grader starts fresh)", path)


def _ship_best_network(model: OAMN, best: dict[str, Any], validating: bool) -> None:
    """Load the network of the best validation (keeping the current grader) when it is not the
    last step's. Called before the grader-only phase, so that the grader learns on the masked
    features g of the network that ships (the mask module changes g), or at the end without one."""
    if not validating or best["model"] is None:
        return
    current = {k: v for k, v in model.state_dict().items() if not k.startswith("grader.")}
    if all(torch.equal(v, best["model"][k]) for k, v in current.items()):
        return
    grader = {k: v for k, v in model.state_dict().items() if k.startswith("grader.")}
    model.load_state_dict({**best["model"], **grader})
    logger.info("shipping the network of step %d (best validation score %.2f)", best["step"], best["score"])


def train(recipe: ReIDRecipe, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a recipe; returns the metrics also written to ``<run.out_dir>/metrics.json``.
    The progress bar shows when both ``show_progress`` and ``run.progress`` say so."""
    tc, rc = recipe.train, recipe.run
    seed_everything(rc.seed)
    set_threads(rc.threads)
    device = pick_device(rc.device)
    records, held_out = holdout_split(_records(recipe), recipe.data.holdout_ids, rc.seed)
    labels_np, mapping = relabel(records)
    t0 = time.time()
    images = load_images(records, tuple(recipe.model.input_size))
    held_images = load_images(held_out, tuple(recipe.model.input_size)).to(device)
    held_pids = [r.pid for r in held_out]
    logger.info(
        "loaded %d training images of %d ids (+%d held-out images of %d ids) in %.1fs",
        len(records),
        len(mapping),
        len(held_out),
        recipe.data.holdout_ids,
        time.time() - t0,
    )
    labels = torch.from_numpy(labels_np)
    realistic: RealisticBatches | None = None
    held_real: RealisticSet | None = None
    if tc.grader_batch > 0:
        if recipe.data.masks is None:
            raise ValueError("train.grader_batch > 0 needs data.masks (a folder of parsing maps)")
        masks, usable = load_body_masks(records, recipe.data.masks, tuple(recipe.model.input_size))
        realistic = RealisticBatches(
            images, masks, usable, [r.pid for r in records], rc.seed + 3, tc.occlusion_mix, tc.grader_augment
        )
        if held_out:
            held_masks, held_usable = load_body_masks(
                held_out, recipe.data.masks, tuple(recipe.model.input_size)
            )
            held_real = realistic_set(held_images.cpu(), held_masks, held_usable, held_pids, rc.seed + 4)

    model = OAMN.from_config(recipe.model, num_classes=len(mapping)).to(device).train()
    if tc.init_weights:
        _load_network(model, tc.init_weights)
    if tc.freeze_stages:
        model.freeze_stages(tc.freeze_stages)
    memory_format = torch.channels_last if rc.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    enc_params = model.encoder_parameters()
    groups = [
        {"params": [p for p in enc_params if id(p) in backbone_ids], "lr_mult": tc.backbone_lr_mult},
        {"params": [p for p in enc_params if id(p) not in backbone_ids], "lr_mult": 1.0},
    ]
    opt_main = _optimizer(tc.optimizer, groups, tc.lr, tc.momentum, tc.weight_decay)
    # eq. 10: L2 (grader score loss) is minimised only over the grader, on its own optimiser
    opt_grader = _optimizer(tc.optimizer, model.grader.parameters(), tc.grader_lr, tc.momentum)
    criterion = OAMNLoss.from_config(recipe.loss)
    sampler = PKSampler(labels_np, tc.p, tc.k, seed=rc.seed)
    opt_grader_only = (
        torch.optim.Adam(model.grader.parameters(), lr=tc.grader_only_lr)
        if tc.grader_only_optimizer == "adam"
        else torch.optim.SGD(model.grader.parameters(), lr=tc.grader_only_lr, momentum=tc.momentum)
    )
    aug_rng = np.random.default_rng(rc.seed + 1)
    gen = torch.Generator().manual_seed(rc.seed + 2)

    out_dir = Path(rc.out_dir)
    ckpt = Checkpointer(out_dir)
    history: list[dict[str, float]] = []
    validations: list[dict[str, float]] = []
    best: dict[str, Any] = {"score": -1.0, "step": 0, "model": None}
    start = 0
    state = ckpt.load_last(map_location=device) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt_main.load_state_dict(state["opt_main"])
        opt_grader.load_state_dict(state["opt_grader"])
        if "opt_grader_only" in state:
            opt_grader_only.load_state_dict(state["opt_grader_only"])
        sampler.set_state(state["sampler"])
        if realistic is not None and "realistic_rng" in state:
            realistic.set_state(state["realistic_rng"])
        aug_rng.bit_generator.state = state["aug_rng"]
        gen.set_state(state["gen"])
        history = state["history"]
        validations = state.get("validations", [])
        best = state.get("best", best)
        start = state["step"]
        logger.info("resumed at step %d", start)

    def snapshot(step: int) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "opt_main": opt_main.state_dict(),
            "opt_grader": opt_grader.state_dict(),
            "opt_grader_only": opt_grader_only.state_dict(),
            "sampler": sampler.state(),
            "realistic_rng": realistic.state() if realistic is not None else None,
            "aug_rng": aug_rng.bit_generator.state,
            "gen": gen.get_state(),
            "history": history,
            "validations": validations,
            "best": best,
            "step": step,
            "recipe": recipe.model_dump(mode="json"),
            "num_classes": len(mapping),
        }

    inference = OAMNInference(model)

    def run_validation(step: int) -> None:
        model.eval()
        metrics = validate(inference, held_images, held_pids, seed=rc.seed)[0]
        if held_real is not None:
            _, scores = encode(inference, normalize(held_real.images.to(device)))
            occlusion, hidden = occlusion_score(scores), held_real.hidden_share
            ranks = {"auc": roc_auc(occlusion, hidden > 0.3), "spearman": spearman(occlusion, hidden)}
            metrics.update({f"grader_{k}": float("nan") if v is None else v for k, v in ranks.items()})
        model.train()
        metrics["step"] = step
        validations.append(metrics)
        improved = metrics["score"] > best["score"]
        if improved:
            best.update(
                score=metrics["score"], step=step, model={k: v.clone() for k, v in model.state_dict().items()}
            )
        logger.info(
            "validation at step %d (%d held-out ids): %s%s",
            step,
            recipe.data.holdout_ids,
            " ".join(f"{k}={v:.2f}" for k, v in metrics.items() if k != "step"),
            " (best)" if improved else "",
        )

    validating = bool(held_out) and rc.val_every > 0
    if validating and start == 0:
        run_validation(0)  # the starting point: fine-tuning has to beat it to be shipped
    t_start = time.time()
    window: dict[str, list[float]] = {}
    total = tc.iterations + tc.grader_only_iterations

    def _log_and_checkpoint(step: int, logs: dict[str, float], lr_now: float) -> None:
        for k, v in logs.items():
            window.setdefault(k, []).append(v)
        if (step + 1) % rc.log_every == 0 or step + 1 in (tc.iterations, total):
            row = {k: float(np.mean(v)) for k, v in window.items()}
            row.update(step=step + 1, lr=lr_now, sec_per_iter=(time.time() - t_start) / (step + 1 - start))
            history.append(row)
            window.clear()
            row["phase"] = "grader" if step >= tc.iterations else "joint"
            logger.info(
                "step %d/%d %s",
                step + 1,
                total,
                " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("step", "phase")),
            )
        if validating and ((step + 1) % rc.val_every == 0 or step + 1 == tc.iterations):
            if step < tc.iterations:  # the grader-only phase does not change the embedding
                run_validation(step + 1)
        if (step + 1) % rc.checkpoint_every == 0 or step + 1 in (tc.iterations, total):
            ckpt.save(snapshot(step + 1))

    if start > tc.iterations:  # resumed in the grader-only phase: its network is the one that ships
        _ship_best_network(model, best, validating)
    enabled = show_progress and rc.progress
    for step in progress(range(start, total), total=total - start, desc="oamn", enabled=enabled):
        grader_only = step >= tc.iterations
        if step == tc.iterations and step > 0:
            _ship_best_network(model, best, validating and tc.grader_only_iterations > 0)
        if grader_only and realistic is not None:
            # the grader alone on realistic batches, the network frozen (no corner-patch views needed)
            factor = _lr_factor(step - tc.iterations, tc.grader_only_iterations, 0)
            lr_now = tc.grader_only_lr * factor
            for group in opt_grader_only.param_groups:
                group["lr"] = lr_now
            logs = _grader_step(model, realistic, tc.grader_batch, opt_grader_only, device, memory_format)
            _log_and_checkpoint(step, logs, lr_now)
            continue
        idx = torch.tensor(sampler.next_batch())
        batch = _train_transform(images[idx], tc.flip, tc.pad_crop, gen)
        aug = augment_batch(normalize(batch), aug_rng)  # sec. 3.1: holistic + 4 occluded views
        aug_images = aug.images.to(device).contiguous(memory_format=memory_format)
        target = aug.score_target.to(device)
        if grader_only:
            # eq. 7 alone on the frozen network (eval mode: BatchNorm statistics stay as trained)
            factor = _lr_factor(step - tc.iterations, tc.grader_only_iterations, 0)
            lr_now = tc.grader_only_lr * factor
            for group in opt_grader_only.param_groups:
                group["lr"] = lr_now
            model.eval()
            with torch.no_grad():
                g = model.masked_features(aug_images)
            scores = model.grader(g)
            l_score = score_loss(scores, target)
            opt_grader_only.zero_grad(set_to_none=True)
            (recipe.loss.lambda_score * l_score).backward()
            opt_grader_only.step()
            logs = {"score": l_score.item(), "l2": recipe.loss.lambda_score * l_score.item()}
        else:
            factor = _lr_factor(step, tc.iterations, tc.warmup_iterations)
            lr_now = tc.lr * factor
            for group in opt_main.param_groups:
                group["lr"] = tc.lr * group["lr_mult"] * factor
            for group in opt_grader.param_groups:
                group["lr"] = tc.grader_lr * factor
            y = labels[idx].repeat(5).to(device)
            out = model(aug_images)
            masked = None
            if recipe.loss.lambda_unify > 0:  # holistic g masked like each occluded view (rows n..5n)
                n = len(idx)
                masked = model.higher(
                    model.mask_feature(out.g[:n].repeat(4, 1, 1, 1), aug.grade[n:].tolist())
                )
            terms = criterion(out, y, (aug.location + 1).to(device), aug.half.to(device), target, masked)
            opt_main.zero_grad(set_to_none=True)
            opt_grader.zero_grad(set_to_none=True)
            (terms.l1 + terms.l2).backward()  # g is detached before T: L2 reaches only the grader
            opt_main.step()
            if realistic is None:  # else the grader learns in its own step, on realistic occlusions
                opt_grader.step()
            scores, logs = out.scores, terms.logs
        if realistic is not None:
            logs.update(_grader_step(model, realistic, tc.grader_batch, opt_grader, device, memory_format))
        pred = decide_grades(scores)
        logs["grade_acc"] = float((torch.from_numpy(pred) == aug.grade).float().mean())
        _log_and_checkpoint(step, logs, lr_now)

    model_config = recipe.model.model_dump(mode="json")
    if tc.grader_only_iterations == 0:
        _ship_best_network(model, best, validating)
    model.eval()
    if held_real is not None:
        model_config.update(calibrate_visibility(inference, held_images, held_real, seed=rc.seed))
    elif held_out:
        model_config.update(calibrate(inference, held_images, held_pids, seed=rc.seed))
    thresholds = OAMNModelConfig.model_validate(model_config).thresholds()
    if held_out:
        logger.info("grader thresholds and similarity offsets calibrated on the held-out ids: %s", thresholds)
    weights = save_oamn_weights(
        model.to(memory_format=torch.contiguous_format),
        model_config,
        out_dir / "oamn.pt",
        extra={
            "train_ids": len(mapping),
            "train_images": len(records),
            "held_out_ids": sorted({r.pid for r in held_out}),
            "seed": rc.seed,  # of the held-out occlusions the calibration used
            "iterations": total,
            "shipped_step": best["step"] if validating and best["model"] is not None else tc.iterations,
            "data": recipe.data.model_dump(mode="json"),
        },
    )
    metrics = {
        "recipe": recipe.model_dump(mode="json"),
        "train_images": len(records),
        "train_ids": len(mapping),
        "history": history,
        "validations": validations,
        "best_step": best["step"],
        "grade_thresholds": [thresholds.quarter, thresholds.half],
        "visible_threshold": thresholds.visible,
        "final": history[-1] if history else {},
        "weights": str(weights),
        "wall_s_this_run": time.time() - t_start,
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    return training_parser(prog_of(__name__), __doc__, "configs/reid_*.yaml", "train.iterations=50")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    recipe = load_config(ReIDRecipe, args.config, overrides=args.overrides)
    metrics = train(recipe, resume=args.resume, show_progress=not args.no_progress)
    logger.info("done: %s", metrics["final"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
