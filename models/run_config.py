"""The ``run:`` section every training recipe shares: where the run writes, what it runs on, its
seed and its cadence (``--set run.device=cuda run.threads=8`` spells the same in every recipe)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RunConfig"]


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
