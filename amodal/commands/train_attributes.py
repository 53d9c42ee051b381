#!/usr/bin/env python3
"""Train a pedestrian-attribute network from a YAML recipe (configs/attributes_*.yaml).

    amodal train attributes --config configs/attributes_part_osnet.yaml \\
        [--set optim.epochs=2 --set loss.scheme=exp] [--json runs/x/metrics.json]

Resumable: the same command with ``--resume`` continues from ``<run.out_dir>/last.pt``. Each epoch is scored
on the held-out part of the TRAINING data (by person id); ``best.pt`` keeps the best held-out mA and
is a self-describing checkpoint that ``amodal eval attributes --weights`` and the pipeline load.
With ``selection.thresholds`` other than ``fixed``, each epoch also chooses per-attribute decision
thresholds on that held-out part (training identities, never test data) and stores them in the
checkpoint. ``data.sources`` trains on several datasets at once in the shared attribute vocabulary
(e.g. ``configs/attributes_vocab_osnet_market_peta.yaml``); labels a source lacks are masked out.
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
from torch.utils.data import DataLoader

from amodal.commands import prog_of
from models.attributes.groups import attribute_task
from models.attributes.losses import AttributeLoss, positive_ratio
from models.attributes.metrics import attribute_metrics, choose_thresholds, format_metrics
from models.attributes.model import AttributeModelBundle, build_attribute_model
from models.attributes.recipe import (
    AttributeRecipe,
    load_training_records,
    split_holdout,
)
from models.data.attribute_dataset import AttributeImageDataset
from models.data.transforms import AttributeTransform
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

logger = logging.getLogger("train_attributes")


@torch.no_grad()
def predict(
    model: torch.nn.Module, loader: DataLoader, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities and labels over a loader, in order."""
    model.eval()
    probs, labels = [], []
    for x, y, _ in loader:
        probs.append(torch.sigmoid(model(x.to(device))).cpu().numpy())
        labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 1% of the base rate."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train(recipe: AttributeRecipe, json_out: Path | None = None, resume: bool = False) -> dict:
    """Run the recipe (``resume``: from ``<run.out_dir>/last.pt`` when it exists); returns the metrics
    payload also written to JSON."""
    rc, dc, oc = recipe.run, recipe.data, recipe.optim
    set_threads(rc.threads)
    seed_everything(rc.seed)
    device = pick_device(rc.device)
    out_dir = Path(rc.out_dir)
    records, total_images = load_training_records(dc)
    names = list(records.names)
    train_recs, held_recs = split_holdout(records, dc.holdout_fraction, rc.seed)
    logger.info(
        "%d of %d images used: %d training, %d held out (%d attributes); unmapped label tokens: %d",
        len(records),
        total_images,
        len(train_recs),
        len(held_recs),
        len(names),
        sum(records.unmapped.values()),
    )
    size = tuple(dc.input_size)
    train_ds = AttributeImageDataset(
        train_recs, AttributeTransform(size, True, dc.flip_p, dc.crop_pad, dc.jitter), rc.preload, rc.seed
    )
    held_loader = None
    if len(held_recs):
        held_ds = AttributeImageDataset(held_recs, AttributeTransform(size, False), rc.preload, rc.seed)
        held_loader = DataLoader(held_ds, batch_size=max(64, oc.batch_size), shuffle=False)
    ratio = positive_ratio(train_ds.labels)
    criterion = AttributeLoss(recipe.loss.scheme, ratio, [attribute_task(n) for n in names]).to(device)
    model = build_attribute_model(recipe.model, names).to(device)
    backbone_params = list(model.backbone.parameters())
    backbone_ids = {id(p) for p in backbone_params}
    head_params = [p for p in model.parameters() if id(p) not in backbone_ids]
    optimizer = torch.optim.Adam(
        [
            {"params": backbone_params, "lr": oc.lr * oc.backbone_lr_mult},
            {"params": head_params, "lr": oc.lr},
        ],
        weight_decay=oc.weight_decay,
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    steps_per_epoch = math.ceil(len(train_ds) / oc.batch_size)
    if oc.max_iters_per_epoch:
        steps_per_epoch = min(steps_per_epoch, oc.max_iters_per_epoch)
    total_steps = steps_per_epoch * oc.epochs
    bundle = AttributeModelBundle(
        model=recipe.model,
        attribute_names=names,
        input_size=size,
        info={
            "recipe": recipe.model_dump(mode="json"),
            "train_images": len(train_recs),
            "held_out_images": len(held_recs),
            "positive_ratio": ratio.tolist(),
            "vocabulary": bool(dc.sources),
            "sources": dict(records.subset_counts) if dc.sources else None,
            "labelled_training_entries": [int(v) for v in (train_ds.labels >= 0).sum(0)],
            "thresholds_chosen_on": "held-out training identities"
            if recipe.selection.thresholds != "fixed"
            else None,
        },
    )

    ckpt = Checkpointer(out_dir)
    start_epoch, step, best_mA, history = 0, 0, -1.0, []
    state = ckpt.load_last(device) if resume else None
    if state is not None:
        if state.get("bundle", {}).get("attribute_names") != names:
            raise ValueError(f"{ckpt.last_path} was trained on other attributes; use another run.out_dir")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, best_mA, history = (
            state["epoch"] + 1,
            state["step"],
            state["best_mA"],
            state["history"],
        )
        logger.info("resumed at epoch %d (step %d, best held-out mA %.4f)", start_epoch, step, best_mA)

    generator = torch.Generator().manual_seed(rc.seed)
    for epoch in range(start_epoch, oc.epochs):
        model.train()
        train_ds.set_epoch(epoch)
        generator.manual_seed(rc.seed * 1000 + epoch)
        loader = DataLoader(
            train_ds, batch_size=oc.batch_size, shuffle=True, drop_last=True, generator=generator
        )
        t0, running, seen = time.time(), 0.0, 0
        for it, (x, y, _) in enumerate(
            progress(loader, steps_per_epoch, f"epoch {epoch + 1}/{oc.epochs}", rc.progress)
        ):
            if it >= steps_per_epoch:
                break
            for g, base in zip(optimizer.param_groups, base_lrs, strict=True):
                g["lr"] = base * lr_factor(step, total_steps, oc.warmup_iters)
            loss = criterion(model(x.to(device)), y.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1} step {it}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(x)
            seen += len(x)
            step += 1
        entry = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), "seconds": time.time() - t0}
        if held_loader is not None:
            probs, labels = predict(model, held_loader, device)
            m = attribute_metrics(probs, labels, names)
            entry.update({k: m[k] for k in ("mA", "accuracy", "precision", "recall", "f1")})
            logger.info(
                "epoch %d: loss %.4f, held-out %s",
                epoch + 1,
                entry["train_loss"],
                format_metrics(m, per_attribute=False),
            )
            score = m["mA"]
            if recipe.selection.thresholds != "fixed":
                thresholds = choose_thresholds(probs, labels, recipe.selection.thresholds)
                bundle.thresholds = [round(float(t), 4) for t in thresholds]
                tuned = attribute_metrics(probs, labels, names, threshold=thresholds)
                entry["tuned"] = {k: tuned[k] for k in ("mA", "accuracy", "precision", "recall", "f1")}
                entry["thresholds"] = bundle.thresholds
                logger.info(
                    "epoch %d: held-out at thresholds chosen on it (%s; optimistic) %s",
                    epoch + 1,
                    recipe.selection.thresholds,
                    format_metrics(tuned, per_attribute=False),
                )
        else:
            logger.info("epoch %d: loss %.4f", epoch + 1, entry["train_loss"])
            score = -entry["train_loss"]
        history.append(entry)
        is_best = score > best_mA
        best_mA = max(best_mA, score)
        bundle.info["epoch"] = epoch + 1
        bundle.info["held_out"] = {k: entry.get(k) for k in ("mA", "accuracy", "precision", "recall", "f1")}
        ckpt.save(
            {
                "format": "amodal-attributes-v1",
                "bundle": bundle.model_dump(mode="json"),
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "step": step,
                "best_mA": best_mA,
                "history": history,
            },
            best=is_best,
        )
    best_entry = max(history, key=lambda e: e.get("mA", -e["train_loss"])) if history else {}
    payload = {
        "recipe": recipe.model_dump(mode="json"),
        "attributes": names,
        "history": history,
        "best_epoch": best_entry.get("epoch"),
        "best_held_out": best_entry,
        "checkpoint": str(ckpt.best_path),
        "train_images": len(train_recs),
        "held_out_images": len(held_recs),
        "images_before_cap": total_images,
        "unmapped_label_tokens": sum(records.unmapped.values()),
        "sources": dict(records.subset_counts) if dc.sources else None,
        "thresholds": best_entry.get("thresholds"),
    }
    write_json(json_out or out_dir / "metrics.json", payload)
    return payload


def build_parser() -> argparse.ArgumentParser:
    parser = training_parser(
        prog_of(__name__), __doc__, "configs/attributes_*.yaml", "loss.scheme=exp --set run.device=cuda"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="metrics JSON (default <run.out_dir>/metrics.json)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = [*args.overrides, *(["run.progress=false"] if args.no_progress else [])]
    recipe = load_config(AttributeRecipe, args.config, overrides=overrides)
    payload = train(recipe, args.json, resume=args.resume)
    logger.info("best held-out epoch %s: %s", payload["best_epoch"], payload["best_held_out"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
