"""Pieces every training program (``amodal train ...``) shares: seeding, device choice, resumable
checkpoints, a progress bar and the metrics JSON.

Each ``amodal train ...`` program owns its loop; this module owns only what would otherwise be written
three times.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

__all__ = [
    "seed_everything",
    "pick_device",
    "Checkpointer",
    "progress",
    "write_json",
    "set_threads",
    "training_parser",
    "start_run",
    "budget_spent",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a recipe run twice samples the same batches."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads (``None`` keeps torch's default: one per core)."""
    if threads:
        torch.set_num_threads(threads)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device: cpu")
    return device


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=float)
        handle.write("\n")
    os.replace(tmp, path)


class Checkpointer:
    """Save and resume training state in ``out_dir``: ``last.pt`` every epoch, ``best.pt`` on improvement.

    A checkpoint holds model, optimisers, epoch, step, the recipe and any extra state; writes go
    through a temporary file so a killed run never leaves a truncated checkpoint behind.
    """

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def save(self, state: dict[str, Any], best: bool = False) -> Path:
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix="ckpt", suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, self.last_path)
        if best:
            torch.save(state, self.best_path)
        return self.last_path

    def load_last(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The state saved by the last ``save`` or None when starting fresh."""
        if not self.last_path.is_file():
            return None
        logger.info("resuming from %s", self.last_path)
        return torch.load(self.last_path, map_location=map_location, weights_only=False)


def progress(
    iterable: Iterable[T], total: int | None = None, desc: str = "", enabled: bool = True
) -> Iterator[T]:
    """A tqdm progress bar (rate and ETA) that can be switched off for logs and tests."""
    if not enabled:
        yield from iterable
        return
    yield from tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False)


def training_parser(prog: str, doc: str | None, recipes: str, example: str) -> argparse.ArgumentParser:
    """The command line every training program takes: ``--config`` (a recipe matching ``recipes``),
    ``--set key=value`` overrides (``example``), ``--resume`` and ``--no-progress``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help=f"YAML recipe ({recipes})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help=f"override, e.g. {example}"
    )
    parser.add_argument("--resume", action="store_true", help="continue from <run.out_dir>/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    return parser


def start_run(recipe: Any) -> tuple[Path, torch.device]:
    """What every training program does first with its recipe's ``run:`` section: create the output
    folder and write the resolved recipe there, seed, set the threads, pick the device."""
    run = recipe.run
    out_dir = Path(run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recipe.json").write_text(recipe.model_dump_json(indent=2))
    seed_everything(run.seed)
    set_threads(run.threads)
    return out_dir, pick_device(run.device)


def budget_spent(step: int, max_iters: int | None, deadline: float | None) -> str | None:
    """Why a training loop stops after ``step`` updates (``"max_iters"`` or ``"time budget"``, logged),
    or None while neither limit is reached; ``deadline`` is a ``time.time()`` value."""
    import time

    if max_iters and step >= max_iters:
        reason = "max_iters"
    elif deadline and time.time() > deadline:
        reason = "time budget"
    else:
        return None
    logger.info("stopping at step %d (%s)", step, reason)
    return reason
