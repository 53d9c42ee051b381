"""What the model stages after the tracker (grade, deocclude, describe, identify) share.

Each takes ``PersonCrops`` (batched across streams: up to ``max_batch`` messages, waiting at most
``max_wait_ms``), asks its ``TrackScheduler`` which rows to run, runs its model once on the rows of the
whole batch, and sends every message on in order with its own block added (``dataclasses.replace``;
earlier blocks untouched). Messages without a scheduled row pass as they came and cost nothing.
``TrackEnd`` and ``EndOfStream`` free the per-track state.

Metrics (per stage): ``rows_scheduled_total{reason}``, ``rows_skipped_total``, ``model_seconds``
(histogram, one model call) and ``model_batch`` (rows in the last call).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import EndOfStream, PersonCrops, TrackEnd
from pipeline.stage import Stage, StageContext
from stages.scheduling import ScheduleConfig, TrackScheduler

__all__ = ["PersonStage", "PersonStageConfig", "evidence_schedule", "gather_rows", "split_rows"]

T = TypeVar("T")


def evidence_schedule() -> ScheduleConfig:
    """The default schedule of stages whose evidence accumulates per track (describe, identify): every
    2 s of stream time; grade re-runs every second."""
    return ScheduleConfig(every_s=2.0)


class PersonStageConfig(BaseModel):
    """Options every model stage after the tracker has."""

    model_config = ConfigDict(extra="forbid")

    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="When a track is run (see docs/occlusion_stages.md)."
    )
    max_batch: int = Field(
        16, ge=1, le=1024, description="Messages (frames, across streams) batched into one model call."
    )
    max_wait_ms: float = Field(
        100.0,
        ge=0,
        description="How long to wait for a batch to fill, in ms. A frame has few scheduled rows, so "
        "waiting for several frames makes one model call of several crops instead of several calls of "
        "one (on 2 CPU cores: full graph 0.74 -> 0.92 of detect-and-track, with every_s 2 for describe "
        "and identify).",
    )


class PersonStage(Stage):
    """Base class: batching, scheduling, TrackEnd / EndOfStream and model-call metrics."""

    accepts: ClassVar[tuple[type, ...]] = (PersonCrops, TrackEnd)
    emits: ClassVar[tuple[type, ...] | None] = (PersonCrops, TrackEnd)

    def __init__(self, config: PersonStageConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.max_batch = config.max_batch
        self.max_wait_s = config.max_wait_ms / 1000.0
        self.scheduler = TrackScheduler(config.schedule)

    @classmethod
    def check_files(cls, config: Any, name: str) -> list[str]:
        """The ``model`` block's weights (and ONNX file, when it names one) must exist."""
        from models.weights_path import resolve_weights_path

        model = getattr(config, "model", None)
        problems = []
        for key in ("weights", "onnx"):
            value = getattr(model, key, None)
            if value is None or (key == "onnx" and value == "auto"):
                continue
            if not resolve_weights_path(value).is_file():
                problems.append(f"{name}.model.{key} '{value}' does not exist")
        return problems

    # -- the runtime's entry points --------------------------------------------------------------
    def process(self, message: Any) -> Iterable[Any]:
        if isinstance(message, EndOfStream):
            self.scheduler.end_stream(message.stream_id)
            return self.end_stream(message.stream_id)
        if isinstance(message, TrackEnd):
            self.scheduler.end(message.stream_id, message.track_id.tolist())
            return self.end_tracks(message)
        return self.process_batch([message])

    def process_batch(self, messages: list[Any]) -> Iterable[Any]:
        outputs = self.run_batch(messages)
        for reason, count in self.scheduler.take_counts().items():
            if count and reason == "skipped":
                self.context.count("rows_skipped", count)
            elif count:
                self.context.count("rows_scheduled", count, reason=reason)
        return outputs

    # -- for subclasses ----------------------------------------------------------------------------
    def run_batch(self, messages: list[PersonCrops]) -> list[Any]:
        """Run the model on the batch's scheduled rows; return the messages with their block."""
        raise NotImplementedError

    def end_tracks(self, end: TrackEnd) -> Iterable[Any]:
        """Free per-track state; return a TrackEnd to replace ``end`` (with a final block), or nothing."""
        return ()

    def end_stream(self, stream_id: str) -> Iterable[Any]:
        """Free the stream's state."""
        return ()

    def timed(self, fn: Callable[[np.ndarray], T], batch: np.ndarray) -> T:
        """Call the model on ``batch`` and record its latency and batch size."""
        start = time.perf_counter()
        result = fn(batch)
        self.context.observe("model_seconds", time.perf_counter() - start)
        self.context.observe("model_batch", float(len(batch)))
        self.context.count("model_rows", float(len(batch)))
        return result


def gather_rows(messages: Sequence[PersonCrops], rows: Sequence[np.ndarray]) -> np.ndarray:
    """One array of the chosen rows' crops across messages."""
    parts = [m.crops[r] for m, r in zip(messages, rows, strict=True) if len(r)]
    if not parts:
        first = messages[0].crops
        return np.zeros((0, *first.shape[1:]), np.uint8)
    return np.concatenate(parts) if len(parts) > 1 else np.ascontiguousarray(parts[0])


def split_rows(array: np.ndarray, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Undo ``gather_rows`` for a model output: one slice per message."""
    bounds = np.cumsum([0] + [len(r) for r in rows])
    return [array[bounds[i] : bounds[i + 1]] for i in range(len(rows))]
