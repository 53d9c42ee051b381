"""The ``run:`` section every training recipe shares: where the run writes, what it runs on, its
seed and its cadence (``--set run.device=cuda run.threads=8`` spells the same in every recipe)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

__all__ = ["RunConfig", "refuse_moved_keys"]


class RunConfig(BaseModel):
    """Output folder, device, threads, seed, logging and validation cadence, progress bar."""

    model_config = ConfigDict(extra="forbid")

    out_dir: str = Field("runs/run", description="Checkpoints, grids and metrics go here.")
    device: str = Field("auto", description="auto, cpu or cuda.")
    threads: int | None = Field(1, ge=1, description="torch CPU threads (1 on a shared machine).")
    seed: int = Field(0, description="Seed of the held-out split, batches and initialisation.")
    log_every: int = Field(20, ge=1, description="Log the losses every N updates.")
    val_every: int = Field(200, ge=1, description="Validate and write a grid every N updates.")
    progress: bool = Field(True, description="Show a progress bar (off for log files).")


def refuse_moved_keys(data: Any, moved: Mapping[str, str], title: str) -> Any:
    """For a recipe's ``model_validator(mode="before")``: ``data`` unchanged when it holds none of the
    ``moved`` keys (dotted old path -> what to write instead, e.g. ``"train.device": "moved: write
    run.device"``); otherwise one validation error per old key found, located at that key, so that
    ``load_config`` reports ``train.device: bad value 'cpu': moved: write run.device``."""
    if not isinstance(data, Mapping):
        return data
    errors = []
    for old, message in moved.items():
        node: Any = data
        parts = old.split(".")
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            error = PydanticCustomError("moved_key", "{moved}", {"moved": message})
            errors.append({"type": error, "loc": tuple(parts), "input": node})
    if errors:
        raise ValidationError.from_exception_data(title, errors)  # type: ignore[arg-type]
    return data
