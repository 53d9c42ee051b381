"""Train the super-resolution network G^S (reconstruction paper sec. 3.3) on Market-1501 training crops.

    amodal train superres --config configs/superres_x4_market.yaml \\
        [--set optim.max_iters=200 ...] [--resume] [--no-progress]

LR inputs are the HR crops downsampled by ``model.scale`` (sec. 3.3 / lowRAP); content loss L1, MSE
or the paper's SSE, plus an optional adversarial term through D^S (``loss.lambda_adversarial``,
paper: 1; off by default on a CPU budget). ``data.val_identities`` training identities are held out
for model selection: every ``run.val_every`` iterations PSNR/SSIM of SR and bicubic against HR on
them, a PNG grid (bicubic | SR | HR), and ``best.pt`` keeps the best SR PSNR (never the test split).
Resumable from ``<run.out_dir>/last.pt``: a resumed run replays exactly the batches an uninterrupted
one would see. ``optim.max_minutes`` stops cleanly inside a time budget. The selected network is
written to ``<run.out_dir>/superres.pt`` (the format ``models/weights/superres_*.pt`` ship in).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amodal.commands import prog_of
from models.deocclusion.discriminator import Discriminator
from models.deocclusion.grid import save_grid
from models.deocclusion.image_metrics import batch_ssim_psnr
from models.deocclusion.losses import discriminator_loss, generator_adversarial_loss
from models.superres.checkpoint import build_network, save_superres
from models.superres.data import (
    SRPairs,
    downsample,
    load_market_crops,
    split_identities,
    to_tensor,
    to_uint8,
    upsample,
)
from models.superres.recipe import SuperResRecipe
from models.training import (
    Checkpointer,
    budget_spent,
    progress,
    start_run,
    training_parser,
    write_json,
)
from pipeline.configfile import load_config

logger = logging.getLogger("train_superres")


def build_parser() -> argparse.ArgumentParser:
    return training_parser(prog_of(__name__), __doc__, "configs/superres_*.yaml", "optim.max_iters=200")


def content_loss(sr: torch.Tensor, hr: torch.Tensor, kind: str) -> torch.Tensor:
    """Pixel loss; ``sse`` is sec. 3.3's Loss_SSE (sum of squared errors per image, batch mean)."""
    if kind == "l1":
        return (sr - hr).abs().mean()
    if kind == "mse":
        return F.mse_loss(sr, hr)
    if kind == "sse":
        return (sr - hr).pow(2).flatten(1).sum(1).mean()
    raise ValueError(f"loss.content must be l1, mse or sse, got {kind!r}")


def learning_rate(step: int, recipe: SuperResRecipe) -> float:
    """Constant, or cosine from ``optim.lr`` to ``optim.lr_min`` over ``optim.max_iters``."""
    opt = recipe.optim
    if opt.schedule == "constant" or not opt.max_iters:
        return opt.lr
    t = min(step / opt.max_iters, 1.0)
    return opt.lr_min + 0.5 * (opt.lr - opt.lr_min) * (1.0 + math.cos(math.pi * t))


@torch.no_grad()
def super_resolve(net: torch.nn.Module, lr: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    """(N, h, w, 3) uint8 LR crops -> (N, r*h, r*w, 3) uint8 SR crops."""
    net.eval()
    out = [to_uint8(net(to_tensor(lr[i : i + batch]).to(device))) for i in range(0, len(lr), batch)]
    return np.concatenate(out)


class Validator:
    """SR and bicubic PSNR/SSIM (and the content loss) on fixed held-out pairs; bicubic computed once."""

    def __init__(self, hr: np.ndarray, scale: int, method: str, kind: str, device: torch.device):
        self.hr, self.kind, self.device = hr, kind, device
        self.lr = np.stack([downsample(h, scale, method) for h in hr])
        self.bicubic = np.stack([upsample(x, hr.shape[1:3]) for x in self.lr])
        s, p = batch_ssim_psnr(self.bicubic, hr)
        self.baseline = {"ssim_bicubic": float(s.mean()), "psnr_bicubic": float(p[np.isfinite(p)].mean())}

    def __call__(self, net: torch.nn.Module) -> tuple[dict, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        sr = super_resolve(net, self.lr, self.device)
        s, p = batch_ssim_psnr(sr, self.hr)
        loss = content_loss(to_tensor(sr), to_tensor(self.hr), self.kind).item()
        metrics = {
            **self.baseline,
            "ssim_sr": float(s.mean()),
            "psnr_sr": float(p[np.isfinite(p)].mean()),
            "val_loss": loss,
            "count": len(self.hr),
        }
        return metrics, (self.bicubic[:8], sr[:8], self.hr[:8])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = load_config(SuperResRecipe, args.config, overrides=args.overrides)
    run, data, opt_cfg, loss_cfg = recipe.run, recipe.data, recipe.optim, recipe.loss
    out_dir, device = start_run(recipe)
    scale = recipe.model.scale
    size = tuple(data.image_size)

    t0 = time.time()
    images, records = load_market_crops(
        Path(data.root) / data.train_folder, size, limit=data.max_train_images, seed=data.seed
    )
    logger.info("decoded %d crops in %.1f s", len(images), time.time() - t0)
    pids = [r.pid for r in records]
    if data.val_identities:
        train_idx, val_idx = split_identities(pids, data.val_identities, data.seed)
    else:
        train_idx, val_idx = np.arange(len(images)), np.arange(0)
    if data.val_max_images is not None and len(val_idx) > data.val_max_images:
        pick = np.random.default_rng(data.seed).choice(len(val_idx), data.val_max_images, replace=False)
        val_idx = val_idx[np.sort(pick)]
    train_set = SRPairs(
        images[train_idx], scale, data.seed, data.downsample, data.patch_size, data.flip, train=True
    )
    validator = (
        Validator(images[val_idx], scale, data.downsample, loss_cfg.content, device) if len(val_idx) else None
    )
    logger.info(
        "train crops %d (%d ids), held-out crops scored %d (%d ids held out)",
        len(train_set),
        len({pids[i] for i in train_idx}),
        len(val_idx),
        data.val_identities,
    )

    net = build_network(recipe.model).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=opt_cfg.lr, betas=tuple(opt_cfg.betas))
    discriminator = opt_d = None
    if loss_cfg.lambda_adversarial > 0:  # D^S (sec. 3.3), on [-1, 1] images like D^R
        hr_size = tuple(data.patch_size or data.image_size)
        discriminator = Discriminator(loss_cfg.discriminator_channels, hr_size).to(device)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=opt_cfg.lr, betas=tuple(opt_cfg.betas))
    logger.info("network: %d parameters", sum(p.numel() for p in net.parameters()))

    ckpt = Checkpointer(out_dir)
    epoch, step, best_psnr, history, losses = 0, 0, -math.inf, [], []
    resumed = False
    if args.resume:
        state = ckpt.load_last(map_location=device)
        if state is not None:
            net.load_state_dict(state["net"])
            optimizer.load_state_dict(state["optimizer"])
            if discriminator is not None:
                discriminator.load_state_dict(state["discriminator"])
                opt_d.load_state_dict(state["opt_d"])
            epoch, step, best_psnr = state["epoch"], state["step"], state["best_psnr"]
            history = state.get("history", [])
            torch.set_rng_state(state["torch_rng"])
            resumed = True

    def save(best: bool) -> None:
        state = {
            "net": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
            "best_psnr": best_psnr,
            "history": history,
            "torch_rng": torch.get_rng_state(),
            "model": recipe.model.model_dump(mode="json"),
            "recipe": recipe.model_dump(mode="json"),
        }
        if discriminator is not None:
            state["discriminator"] = discriminator.state_dict()
            state["opt_d"] = opt_d.state_dict()
        ckpt.save(state, best=best)

    def validate() -> None:
        nonlocal best_psnr, losses
        train_loss = float(np.mean(losses)) if losses else None
        losses = []
        if validator is None:
            history.append({"step": step, "epoch": epoch, "train_loss": train_loss})
            save(best=True)
            return
        metrics, triplets = validator(net)
        metrics.update(step=step, epoch=epoch, train_loss=train_loss, elapsed_s=round(time.time() - start, 1))
        history.append(metrics)
        save_grid(out_dir / f"grid_step{step:06d}.png", *triplets)
        improved = metrics["psnr_sr"] > best_psnr
        best_psnr = max(best_psnr, metrics["psnr_sr"])
        save(best=improved)
        logger.info(
            "val step %d: bicubic PSNR %.2f dB SSIM %.4f -> SR PSNR %.2f dB SSIM %.4f (loss %.5f)%s",
            step,
            metrics["psnr_bicubic"],
            metrics["ssim_bicubic"],
            metrics["psnr_sr"],
            metrics["ssim_sr"],
            metrics["val_loss"],
            " (best)" if improved else "",
        )
        net.train()

    start = time.time()
    if not resumed:
        validate()  # step 0: the untrained net is bicubic up-sampling (the baseline)
    first_step = step
    deadline = start + opt_cfg.max_minutes * 60 if opt_cfg.max_minutes else None
    max_iters = opt_cfg.max_iters
    batches_per_epoch = len(train_set) // opt_cfg.batch_size
    if batches_per_epoch == 0:
        raise ValueError(
            f"{len(train_set)} training crops are fewer than optim.batch_size {opt_cfg.batch_size}"
        )
    stop = (max_iters is not None and step >= max_iters) or (
        opt_cfg.epochs is not None and epoch >= opt_cfg.epochs
    )
    net.train()
    while not stop:
        train_set.set_epoch(epoch)
        gen = torch.Generator().manual_seed(run.seed * 1000 + epoch)
        order = torch.randperm(len(train_set), generator=gen)[: batches_per_epoch * opt_cfg.batch_size]
        order = order.view(batches_per_epoch, opt_cfg.batch_size)
        skip = max(0, step - epoch * batches_per_epoch)  # resume inside an epoch: same batches as before
        for i in progress(
            range(skip, batches_per_epoch),
            total=batches_per_epoch - skip,
            desc=f"epoch {epoch}",
            enabled=run.progress and not args.no_progress,
        ):
            items = [train_set[int(j)] for j in order[i]]
            lr_img = torch.stack([it["lr"] for it in items]).to(device)
            hr_img = torch.stack([it["hr"] for it in items]).to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, recipe)
            sr = net(lr_img)
            terms = {"content": content_loss(sr, hr_img, loss_cfg.content)}
            if discriminator is not None:
                # D^S update (K = 1, as for D^R, sec. 4), then G^S's adversarial term (eq. 4 / 6 form)
                for group in opt_d.param_groups:
                    group["lr"] = learning_rate(step, recipe)
                d_loss = discriminator_loss(discriminator(hr_img * 2 - 1), discriminator(sr.detach() * 2 - 1))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                terms["adv"] = generator_adversarial_loss(discriminator(sr * 2 - 1))
            loss = terms["content"] + loss_cfg.lambda_adversarial * terms.get("adv", 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(terms["content"].item()))
            step += 1
            if step % run.log_every == 0:
                logger.info(
                    "step %d epoch %d  loss %.5f  %s  lr %.2e  (%.3f s/it)",
                    step,
                    epoch,
                    loss.item(),
                    " ".join(f"{k} {v.item():.5f}" for k, v in terms.items()),
                    learning_rate(step - 1, recipe),
                    (time.time() - start) / max(1, step - first_step),
                )
            if step % run.val_every == 0:
                validate()
            if budget_spent(step, max_iters, deadline):
                stop = True
                break
        else:
            epoch += 1
            if opt_cfg.epochs is not None and epoch >= opt_cfg.epochs:
                stop = True
    if not history or history[-1]["step"] != step:
        validate()
    best_path = ckpt.best_path if ckpt.best_path.is_file() else ckpt.last_path
    best_state = torch.load(best_path, map_location="cpu", weights_only=False)
    net.load_state_dict(best_state["net"])
    selected = next((h for h in history if h["step"] == best_state["step"]), {})
    final = save_superres(
        out_dir / "superres.pt",
        net.cpu(),
        recipe.model,
        extra={"recipe": recipe.model_dump(mode="json"), "step": best_state["step"], "val": selected},
    )
    write_json(
        out_dir / "metrics.json",
        {
            "history": history,
            "best_psnr": best_psnr,
            "selected_step": best_state["step"],
            "steps": step,
            "wall_s": round(time.time() - start, 1),
            "superres": str(final),
        },
    )
    logger.info(
        "done: %d steps in %.1f min; selected step %d; network %s",
        step,
        (time.time() - start) / 60,
        best_state["step"],
        final,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
