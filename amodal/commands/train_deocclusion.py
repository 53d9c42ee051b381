"""Train the de-occlusion U-Net GAN (de-occlusion paper sec. 3) on crops with synthesised occlusions.

    amodal train deocclusion --config configs/deocclusion_cpu.yaml \\
        [--set optim.epochs=2 ...] [--resume]

Alternating D / G updates with K = 1, Adam(0.5, 0.999), lr 2e-4, batch 20, horizontal flips
(sec. 3.3). Every ``run.val_every`` iterations: SSIM/PSNR on held-out training persons (never the
test subset) and a PNG grid (occluded | generated | ground truth); ``best.pt`` keeps the best SSIM.
Resumable from ``<run.out_dir>/last.pt``; ``optim.max_minutes`` stops cleanly inside a time budget.
Run-level keys are spelled as in every training recipe: ``--set run.device=cuda --set run.threads=8``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from amodal.commands import prog_of
from models.deocclusion.checkpoint import build_generator, save_generator
from models.deocclusion.data import OcclusionPairs, occluder_pool, to_uint8
from models.deocclusion.dataset_setup import load_crop_set, split_holdout
from models.deocclusion.discriminator import Discriminator
from models.deocclusion.grid import save_grid
from models.deocclusion.image_metrics import batch_ssim_psnr
from models.deocclusion.losses import (
    AttributeLoss,
    PerceptualLoss,
    build_feature_network,
    discriminator_loss,
    generator_adversarial_loss,
    pixel_loss,
)
from models.deocclusion.recipe import DeocclusionRecipe
from models.deocclusion.synthesis import OcclusionSynthesizer
from models.training import (
    Checkpointer,
    budget_spent,
    progress,
    start_run,
    training_parser,
    write_json,
)
from pipeline.configfile import load_config

logger = logging.getLogger("train_deocclusion")


def build_parser() -> argparse.ArgumentParser:
    return training_parser(prog_of(__name__), __doc__, "configs/deocclusion_*.yaml", "optim.epochs=3")


@torch.no_grad()
def evaluate_pairs(generator: torch.nn.Module, pairs: OcclusionPairs, device: torch.device, batch: int = 50):
    """Mean SSIM/PSNR of occluded and generated crops against the clean ones, plus a few triplets."""
    generator.eval()
    occ_all, gen_all, clean_all = [], [], []
    for start in range(0, len(pairs), batch):
        items = [pairs[i] for i in range(start, min(start + batch, len(pairs)))]
        occ = torch.stack([it["occluded"] for it in items])
        gen = generator(occ.to(device)).cpu()
        occ_all.append(to_uint8(occ))
        gen_all.append(to_uint8(gen))
        clean_all.append(to_uint8(torch.stack([it["clean"] for it in items])))
    occ_u8, gen_u8, clean_u8 = (np.concatenate(x) for x in (occ_all, gen_all, clean_all))
    s_occ, p_occ = batch_ssim_psnr(occ_u8, clean_u8)
    s_gen, p_gen = batch_ssim_psnr(gen_u8, clean_u8)
    metrics = {
        "ssim_occluded": float(s_occ.mean()),
        "psnr_occluded": float(p_occ[np.isfinite(p_occ)].mean()),
        "ssim_generated": float(s_gen.mean()),
        "psnr_generated": float(p_gen[np.isfinite(p_gen)].mean()),
        "count": len(pairs),
    }
    return metrics, (occ_u8[:8], gen_u8[:8], clean_u8[:8])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = load_config(DeocclusionRecipe, args.config, overrides=args.overrides)
    run = recipe.run
    out_dir, device = start_run(recipe)
    size = tuple(recipe.model.image_size)
    data = recipe.data

    crops = load_crop_set(
        data.root,
        data.train_subsets,
        size,
        data.attributes,
        cache_dir=out_dir / "cache",
        limit=data.max_train_images,
        seed=data.seed,
    )
    train_idx, val_idx = split_holdout(crops, data.val_images, data.seed)
    train_images, train_labels = crops.images[train_idx], crops.labels[train_idx]
    pool_idx, pool, pool_masks = occluder_pool(
        train_images, data.occluder_pool, data.seed, cache_dir=out_dir / "cache", segmenter=data.segmenter
    )
    synth = OcclusionSynthesizer(modes=data.modes)
    train_set = OcclusionPairs(
        train_images, pool, pool_masks, synth, data.seed, labels=train_labels, train=True
    )
    val_set = None
    if len(val_idx):
        val_set = OcclusionPairs(
            crops.images[val_idx],
            pool,
            pool_masks,
            OcclusionSynthesizer(),
            data.seed + 1,
            labels=crops.labels[val_idx],
            train=False,
            mode=data.eval_mode,
        )
    logger.info("train crops %d, held-out %d, occluders %d", len(train_set), len(val_idx), len(pool))

    generator = build_generator(recipe.model).to(device)
    discriminator = Discriminator(recipe.model.discriminator_channels, size).to(device)
    loss_cfg = recipe.loss
    content_loss = None
    if loss_cfg.content == "perceptual" and loss_cfg.lambda_content > 0:
        content_loss = PerceptualLoss(
            build_feature_network(loss_cfg.vgg16_weights, loss_cfg.osnet_weights)
        ).to(device)
    attribute_loss = None
    if loss_cfg.lambda_attribute > 0:
        from models.deocclusion.attribute_model import load_frozen_attribute_model

        frozen = load_frozen_attribute_model(loss_cfg.attribute_model)
        if list(frozen.names) != list(crops.names):
            raise ValueError(
                f"attribute model predicts {len(frozen.names)} attributes that differ from data.attributes"
            )
        known = np.where(train_labels >= 0, train_labels, np.nan)
        pos_ratio = np.nan_to_num(np.nanmean(known, axis=0), nan=0.5)
        attribute_loss = AttributeLoss(frozen.module, pos_ratio, frozen.input_size).to(device)

    opt_cfg = recipe.optim
    opt_g = torch.optim.Adam(generator.parameters(), lr=opt_cfg.lr, betas=tuple(opt_cfg.betas))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=opt_cfg.lr, betas=tuple(opt_cfg.betas))
    ckpt = Checkpointer(out_dir)
    epoch, step, best_ssim, history = 0, 0, -1.0, []
    if args.resume:
        state = ckpt.load_last(map_location=device)
        if state is not None:
            generator.load_state_dict(state["generator"])
            discriminator.load_state_dict(state["discriminator"])
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            epoch, step, best_ssim = state["epoch"], state["step"], state["best_ssim"]
            history = state.get("history", [])
            torch.set_rng_state(state["torch_rng"])

    def save(best: bool) -> None:
        ckpt.save(
            {
                "generator": generator.state_dict(),
                "discriminator": discriminator.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "epoch": epoch,
                "step": step,
                "best_ssim": best_ssim,
                "history": history,
                "torch_rng": torch.get_rng_state(),
                "model": recipe.model.model_dump(mode="json"),
                "recipe": recipe.model_dump(mode="json"),
            },
            best=best,
        )

    def validate() -> None:
        nonlocal best_ssim
        if val_set is None:
            save(best=True)
            return
        metrics, triplets = evaluate_pairs(generator, val_set, device)
        metrics.update(step=step, epoch=epoch, elapsed_s=round(time.time() - start, 1))
        history.append(metrics)
        save_grid(out_dir / f"grid_step{step:06d}.png", *triplets)
        improved = metrics["ssim_generated"] > best_ssim
        best_ssim = max(best_ssim, metrics["ssim_generated"])
        save(best=improved)
        logger.info(
            "val step %d: SSIM %.4f -> %.4f, PSNR %.2f -> %.2f dB%s",
            step,
            metrics["ssim_occluded"],
            metrics["ssim_generated"],
            metrics["psnr_occluded"],
            metrics["psnr_generated"],
            " (best)" if improved else "",
        )
        generator.train()

    start = time.time()
    first_step = step
    deadline = start + opt_cfg.max_minutes * 60 if opt_cfg.max_minutes else None
    max_iters = opt_cfg.max_iters
    stop = False
    generator.train()
    discriminator.train()
    while epoch < opt_cfg.epochs and not stop:
        train_set.set_epoch(epoch)
        gen = torch.Generator().manual_seed(run.seed * 1000 + epoch)
        loader = DataLoader(
            train_set, batch_size=opt_cfg.batch_size, shuffle=True, drop_last=True, generator=gen
        )
        skip = step - epoch * len(loader) if step > epoch * len(loader) else 0  # resume inside an epoch
        for i, batch in enumerate(
            progress(
                loader,
                total=len(loader),
                desc=f"epoch {epoch}",
                enabled=run.progress and not args.no_progress,
            )
        ):
            if i < skip:
                continue
            occ, clean = batch["occluded"].to(device), batch["clean"].to(device)
            # One G forward serves both updates (pix2pix practice): D sees it detached, G through it.
            fake = generator(occ)
            # D update(s), K = 1 (sec. 3.3): real = clean crops, fake = G(occluded) (no input concatenation)
            for _ in range(opt_cfg.disc_steps):
                d_loss = discriminator_loss(discriminator(clean), discriminator(fake.detach()))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            # G update: eq. 3 = L_adv + lambda_1 L_content + lambda_2 L_attr (+ optional pixel anchor)
            terms = {"adv": generator_adversarial_loss(discriminator(fake))}
            if loss_cfg.content == "perceptual" and content_loss is not None:
                terms["content"] = content_loss(fake, clean)
            elif loss_cfg.content in ("mse", "sse"):
                terms["content"] = pixel_loss(fake, clean, loss_cfg.content)
            if attribute_loss is not None:
                terms["attr"] = attribute_loss(fake, batch["labels"].to(device))
            if loss_cfg.lambda_pixel > 0:
                terms["pixel"] = (fake - clean).abs().mean()
            weights = {
                "adv": loss_cfg.lambda_adversarial,
                "content": loss_cfg.lambda_content,
                "attr": loss_cfg.lambda_attribute,
                "pixel": loss_cfg.lambda_pixel,
            }
            g_loss = sum(weights[k] * v for k, v in terms.items())
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            step += 1
            if step % run.log_every == 0:
                logger.info(
                    "step %d epoch %d  D %.4f  G %.4f  %s  (%.2f s/it)",
                    step,
                    epoch,
                    d_loss.item(),
                    g_loss.item(),
                    " ".join(f"{k} {v.item():.4f}" for k, v in terms.items()),
                    (time.time() - start) / max(1, step - first_step),
                )
            if step % run.val_every == 0:
                validate()
            if budget_spent(step, max_iters, deadline):
                stop = True
                break
        else:
            epoch += 1
    if not history or history[-1]["step"] != step:
        validate()
    best_path = ckpt.best_path if ckpt.best_path.is_file() else ckpt.last_path
    best_state = torch.load(best_path, map_location="cpu", weights_only=False)
    generator.load_state_dict(best_state["generator"])
    final = save_generator(
        out_dir / "generator.pt",
        generator.cpu(),
        recipe.model,
        extra={
            "recipe": recipe.model_dump(mode="json"),
            "step": best_state["step"],
            "val": history[-1] if history else {},
        },
    )
    write_json(
        out_dir / "metrics.json",
        {
            "history": history,
            "best_ssim": best_ssim,
            "steps": step,
            "wall_s": round(time.time() - start, 1),
            "generator": str(final),
        },
    )
    logger.info("done: %d steps in %.1f min; generator %s", step, (time.time() - start) / 60, final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
