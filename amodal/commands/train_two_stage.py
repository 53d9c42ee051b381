"""Train one stage of the two-stage de-occlusion (de-occlusion paper sec. 3.2-3.3) on Market-1501
training crops occluded with exact targets (``models/deocclusion/pairs.py``).

    amodal train two-stage --config configs/deocclusion_two_stage_mask.yaml
    amodal train two-stage --config configs/deocclusion_two_stage_content.yaml \\
        [--set optim.max_iters=500 ...] [--resume]

``stage: mask`` trains the mask-completion network and writes ``<out_dir>/masks.pt``;
``stage: content`` trains a content network (``model.content``: ``pga`` or the ``unet`` baseline)
behind the frozen ``model.mask_weights`` and writes ``<out_dir>/two_stage.pt`` (both stages, what
the pipeline loads). Every ``run.val_every`` updates it validates on pairs of held-out training
identities (never the test split): mask IoUs for stage 1, SSIM/PSNR for stage 2 (``best.pt``
keeps the best), and writes a grid. Resumable from ``<out_dir>/last.pt``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
import torch

from amodal.commands import prog_of
from models.deocclusion.data import to_uint8
from models.deocclusion.discriminator import Discriminator
from models.deocclusion.grid import save_grid
from models.deocclusion.image_metrics import batch_ssim_psnr
from models.deocclusion.losses import OSNetFeatures, discriminator_loss, generator_adversarial_loss
from models.deocclusion.mask_completion import mask_templates
from models.deocclusion.pair_data import load_market_parts, rough_masks, split_identities
from models.deocclusion.pair_eval import mask_ious
from models.deocclusion.pairs import KINDS, PairBatch, PairBatches, pair_set
from models.deocclusion.two_stage import (
    TwoStageDeoccluder,
    build_content_net,
    build_mask_net,
    exact_guidance,
    guidance,
    load_mask_net,
    mix_guidance,
    save_two_stage,
)
from models.deocclusion.two_stage_losses import FeatureLosses, hole_l1, mask_losses
from models.deocclusion.two_stage_recipe import TwoStageRecipe
from models.training import (
    Checkpointer,
    budget_spent,
    progress,
    start_run,
    training_parser,
    write_json,
)
from pipeline.configfile import load_config

logger = logging.getLogger("train_two_stage")


def build_parser() -> argparse.ArgumentParser:
    return training_parser(
        prog_of(__name__), __doc__, "configs/deocclusion_two_stage_*.yaml", "optim.max_iters=500"
    )


def to_unit(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1]."""
    return images.to(device).float() / 127.5 - 1.0


@torch.no_grad()
def mask_metrics(masks, pairs: PairBatch, device: torch.device, batch: int = 100) -> dict:
    """Mean IoUs of the modal, amodal, occluder and invisible (amodal minus modal) masks, with no
    initial mask given (the pipeline's default); per kind too."""
    masks.eval()
    preds = {"modal": [], "amodal": [], "occluder": []}
    for start in range(0, len(pairs), batch):
        p = masks(to_unit(pairs.occluded[start : start + batch], device))
        for name in preds:
            preds[name].append((torch.sigmoid(getattr(p, name)) > 0.5)[:, 0].cpu().numpy())
    ious = mask_ious(pairs, {name: np.concatenate(v) for name, v in preds.items()}, body_known=True)
    out = {f"iou_{k}": float(v.mean()) for k, v in ious.items()}
    for kind in KINDS:
        rows = pairs.kinds == kind
        if rows.any():
            out[f"iou_amodal_{kind}"] = float(ious["amodal"][rows].mean())
            out[f"iou_occluder_{kind}"] = float(ious["occluder"][rows].mean())
    out["score"] = (out["iou_amodal"] + out["iou_occluder"]) / 2
    masks.train()
    return out


@torch.no_grad()
def content_metrics(
    model: TwoStageDeoccluder, pairs: PairBatch, device: torch.device, batch: int = 50
) -> tuple[dict, tuple]:
    """SSIM/PSNR of occluded and restored crops against the clean ones, plus a few triplets."""
    model.eval()
    restored = []
    for start in range(0, len(pairs), batch):
        restored.append(to_uint8(model(to_unit(pairs.occluded[start : start + batch], device)).cpu()))
    restored_u8 = np.concatenate(restored)
    occ_u8 = pairs.occluded.permute(0, 2, 3, 1).numpy()
    clean_u8 = pairs.clean.permute(0, 2, 3, 1).numpy()
    s_occ, p_occ = batch_ssim_psnr(occ_u8, clean_u8)
    s_gen, p_gen = batch_ssim_psnr(restored_u8, clean_u8)
    metrics = {
        "ssim_occluded": float(s_occ.mean()),
        "psnr_occluded": float(p_occ[np.isfinite(p_occ)].mean()),
        "ssim_restored": float(s_gen.mean()),
        "psnr_restored": float(p_gen[np.isfinite(p_gen)].mean()),
    }
    metrics["score"] = metrics["ssim_restored"]
    model.content.train()
    return metrics, (occ_u8[:8], restored_u8[:8], clean_u8[:8])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = load_config(TwoStageRecipe, args.config, overrides=args.overrides)
    run, data, opt = recipe.run, recipe.data, recipe.optim
    out_dir, device = start_run(recipe)
    size = tuple(recipe.model.image_size)

    crops = load_market_parts(data.root, data.parsing, size, data.max_train_images, run.seed)
    train, held = split_identities(crops, data.held_out_ids, run.seed)
    weights = [data.kinds.get(k, 0.0) for k in KINDS]
    batches = PairBatches(train.images, train.parts, train.usable, train.pids, run.seed, weights)
    val = pair_set(held.images, held.parts, held.usable, held.pids, run.seed + 1, weights=weights)
    pick = np.sort(
        np.random.default_rng(run.seed).choice(len(val), min(data.val_pairs, len(val)), replace=False)
    )
    val = val.select(pick)
    logger.info("training crops with parts %d, held-out pairs %d", int(train.usable.sum()), len(val))

    cfg = recipe.model
    discriminator = None
    feature_losses = None
    if recipe.stage == "mask":
        templates = mask_templates(
            train.parts[train.usable] > 0, cfg.templates, (size[0] // 4, size[1] // 4), run.seed
        )
        network = build_mask_net(cfg, templates).to(device)
        trained = network
        model = None
    else:
        masks, mask_cfg, _ = load_mask_net(cfg.mask_weights)
        # stage 1's shape comes from its file; the content settings from this recipe
        cfg = mask_cfg.model_copy(
            update={
                k: getattr(recipe.model, k)
                for k in (
                    "content",
                    "content_channels",
                    "attention_scales",
                    "discriminator_channels",
                    "mask_weights",
                )
            }
        )
        for p in masks.parameters():
            p.requires_grad_(False)
        network = build_content_net(cfg)
        model = TwoStageDeoccluder(masks, network).to(device)
        model.masks.eval()
        trained = network
        discriminator = Discriminator(cfg.discriminator_channels, size).to(device)
        feature_losses = FeatureLosses(OSNetFeatures(recipe.loss.osnet_weights)).to(device)
    logger.info(
        "%s network: %.2f M parameters", recipe.stage, sum(p.numel() for p in trained.parameters()) / 1e6
    )

    optimiser = torch.optim.Adam(trained.parameters(), lr=opt.lr, betas=tuple(opt.betas))
    opt_d = (
        torch.optim.Adam(discriminator.parameters(), lr=opt.lr, betas=tuple(opt.betas))
        if discriminator
        else None
    )
    rough_rng = np.random.default_rng(run.seed + 2)
    guide_rng = np.random.default_rng(run.seed + 3)
    ckpt = Checkpointer(out_dir)
    step, best, history, losses = 0, -1.0, [], []
    if args.resume and (state := ckpt.load_last(map_location=device)) is not None:
        trained.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        if discriminator is not None:
            discriminator.load_state_dict(state["discriminator"])
            opt_d.load_state_dict(state["opt_d"])
        step, best, history = state["step"], state["best"], state["history"]
        losses = state.get("losses", [])
        batches.set_state(state["pairs_rng"])
        rough_rng.bit_generator.state = state["rough_rng"]
        if "guide_rng" in state:  # mask-stage checkpoints written before the content stage mixed guidance
            guide_rng.bit_generator.state = state["guide_rng"]
        torch.set_rng_state(state["torch_rng"])

    def save(is_best: bool) -> None:
        state = {
            "network": trained.state_dict(),
            "optimiser": optimiser.state_dict(),
            "step": step,
            "best": best,
            "history": history,
            "losses": losses,
            "pairs_rng": batches.state(),
            "rough_rng": rough_rng.bit_generator.state,
            "guide_rng": guide_rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "recipe": recipe.model_dump(mode="json"),
        }
        if discriminator is not None:
            state.update(discriminator=discriminator.state_dict(), opt_d=opt_d.state_dict())
        ckpt.save(state, best=is_best)

    def validate() -> None:
        nonlocal best
        if recipe.stage == "mask":
            metrics = mask_metrics(network, val, device)
        else:
            metrics, triplets = content_metrics(model, val, device)
            save_grid(out_dir / f"grid_step{step:06d}.png", *triplets)
        metrics.update(step=step, elapsed_s=round(time.time() - start, 1))
        history.append(metrics)
        improved = metrics["score"] > best
        best = max(best, metrics["score"])
        save(is_best=improved)
        logger.info(
            "val step %d: %s%s",
            step,
            " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)),
            " (best)" if improved else "",
        )

    start = time.time()
    first = step
    deadline = start + opt.max_minutes * 60 if opt.max_minutes else None
    trained.train()
    for _ in progress(
        range(step, opt.max_iters),
        total=opt.max_iters - step,
        desc=recipe.stage,
        enabled=run.progress and not args.no_progress,
    ):
        batch = batches.sample(opt.batch_size)
        images = to_unit(batch.occluded, device)
        if recipe.stage == "mask":
            initial, given = rough_masks(
                batch.visible, batch.occluder, batch.kinds, data.initial_mask, rough_rng
            )
            pred = network(
                images, None if initial is None else initial.to(device), torch.from_numpy(given).to(device)
            )
            terms = mask_losses(
                pred,
                batch.visible.to(device),
                batch.occluder.to(device),
                batch.parts.long().to(device),
                recipe.loss.mask_l1,
            )
            loss = sum(terms.values())
        else:
            clean = to_unit(batch.clean, device)
            # stage 1's guidance, or for a share of the crops the exact one (stage 2 learns to
            # restore even where stage 1 still misses the occluder)
            with torch.no_grad():
                predicted = guidance(model.masks, images)
            exact = exact_guidance(
                batch.visible.to(device), batch.occluder.to(device), batch.parts.to(device)
            )
            use_exact = torch.from_numpy(guide_rng.random(len(images)) < data.exact_guidance).to(device)
            out = model.infer(images, given=mix_guidance(predicted, exact, use_exact))
            restored = out["restored"]
            # eq. 7's adversarial pair: D sees real clean crops and detached restored ones
            d_loss = discriminator_loss(discriminator(clean), discriminator(restored.detach()))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            perceptual, style = feature_losses(restored, clean)
            w = recipe.loss
            terms = {
                "adv": w.adversarial * generator_adversarial_loss(discriminator(restored)),
                "hole_l1": w.hole_l1 * hole_l1(restored, clean, out["region"]),
                "perceptual": w.perceptual * perceptual,
                "style": w.style * style,
                "d": d_loss.detach(),
            }
            loss = sum(v for k, v in terms.items() if k != "d")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        if step % run.log_every == 0:
            losses.append({"step": step, "loss": float(loss.item())})
            logger.info(
                "step %d  loss %.4f  %s  (%.2f s/it)",
                step,
                loss.item(),
                " ".join(f"{k} {v.item():.4f}" for k, v in terms.items()),
                (time.time() - start) / max(1, step - first),
            )
        if step % run.val_every == 0:
            validate()
        if budget_spent(step, None, deadline):
            break
    if not history or history[-1]["step"] != step:
        validate()
    best_state = torch.load(
        ckpt.best_path if ckpt.best_path.is_file() else ckpt.last_path, map_location="cpu", weights_only=False
    )
    trained.load_state_dict(best_state["network"])
    extra = {
        "recipe": recipe.model_dump(mode="json"),
        "step": best_state["step"],
        "val": best_state["history"][-1] if best_state["history"] else {},
    }
    if recipe.stage == "mask":
        final = save_two_stage(out_dir / "masks.pt", cfg, network.cpu(), extra=extra)
    else:
        final = save_two_stage(out_dir / "two_stage.pt", cfg, model.masks.cpu(), network.cpu(), extra=extra)
    write_json(
        out_dir / "metrics.json",
        {
            "history": history,
            "losses": losses,
            "best": best,
            "steps": step,
            "wall_s": round(time.time() - start, 1),
            "file": str(final),
        },
    )
    logger.info("done: %d steps in %.1f min; %s", step, (time.time() - start) / 60, final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
