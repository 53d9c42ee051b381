"""The stage base classes: what a stage author implements, and the context the runtime hands in.

A stage is a small class with a typed config and three lifecycle hooks (Savant's pyfunc shape):
``on_start`` (load models, open files: runs in the stage's own thread/process), ``process`` (one
message in, any number out) and ``on_stop`` (flush, close). The runtime owns sockets, threads,
processes, metrics and shutdown; a stage never touches ZeroMQ and never sees another stage.

EndOfStream is delivered to ``process`` so a stage can finish that stream (end its tracks, close its
video file); the runtime forwards the EndOfStream downstream itself after the stage's outputs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from pipeline.messages import Frame

__all__ = ["RunInfo", "StageContext", "Stage", "SourceStage", "EmptyConfig", "MetricSink"]


class EmptyConfig(BaseModel):
    """Config of a stage that has no options."""

    model_config = ConfigDict(extra="forbid")


class MetricSink:
    """Where ``StageContext.count`` / ``observe`` go; the runtime plugs in its Prometheus metrics."""

    def count(self, stage: str, metric: str, amount: float, labels: dict[str, str]) -> None:
        """Add ``amount`` to a counter."""

    def observe(self, stage: str, metric: str, value: float, labels: dict[str, str]) -> None:
        """Record a value (histogram for ``*_seconds`` metrics, gauge otherwise)."""


@dataclass(frozen=True)
class RunInfo:
    """Which run a stage belongs to, and how often its process was restarted in it.

    ``run_id`` is the same for every stage and every restart of one run (a sink keys its session on it,
    so a restarted sink continues the same session); ``resume`` is what the run had acknowledged of
    each stream before this (re)start: ``{stream_id: {"acked": seq, "sent": seq, "ended": bool}}``,
    written by the runtime for source stages (pipeline.runner), empty on a first start.
    """

    run_id: str = ""
    restarts: int = 0
    state_dir: str | None = None
    resume: dict[str, dict[str, Any]] = field(default_factory=dict)


class StageContext:
    """Built by the runtime and handed to every stage: its name, logger, metrics and output folder.

    ``count("reconnects", stream="cam1")`` increments ``amodal_reconnects_total{stage=..., stream="cam1"}``;
    ``observe("decode_seconds", 0.01)`` feeds a histogram, ``observe("buffered", 3)`` sets a gauge.
    ``output_dir`` is the graph's ``output_dir``: sinks resolve relative paths against it.
    """

    def __init__(
        self,
        name: str,
        logger: logging.Logger | None = None,
        metrics: MetricSink | None = None,
        output_dir: str | Path = ".",
        run: RunInfo | None = None,
    ) -> None:
        self.name = name
        self.logger = logger or logging.getLogger(f"amodal.stage.{name}")
        self.output_dir = Path(output_dir)
        self.run = run or RunInfo()
        self._metrics = metrics or MetricSink()

    def count(self, metric: str, amount: float = 1, **labels: str) -> None:
        self._metrics.count(self.name, metric, amount, labels)

    def observe(self, metric: str, value: float, **labels: str) -> None:
        self._metrics.observe(self.name, metric, value, labels)


class Stage:
    """Base class of every processing stage; subclasses set ``Config`` and override the hooks."""

    Config: ClassVar[type[BaseModel]] = EmptyConfig
    accepts: ClassVar[tuple[type, ...]] = (Frame,)
    # What the stage may emit (for ``amodal check``'s link report); None = not declared.
    emits: ClassVar[tuple[type, ...] | None] = None
    max_batch: int = 1
    max_wait_s: float = 0.0

    def __init__(self, config: Any, context: StageContext) -> None:
        self.config = config
        self.context = context

    @classmethod
    def from_config(cls, config: Any, context: StageContext) -> Stage:
        """Build the stage from its validated config; override when the constructor takes plain args."""
        return cls(config, context)

    @classmethod
    def check_files(cls, config: Any, name: str) -> list[str]:
        """Problems with the files ``config`` names (weights, input videos), one line each naming the
        key as ``<stage name>.<key>``. ``amodal check`` and ``amodal replay`` run it before anything
        starts, so a missing file is a config error (exit 2), not a failure after outputs exist."""
        return []

    @classmethod
    def output_files(cls, config: Any, output_dir: Path) -> list[Path]:
        """The files (glob patterns allowed) and folders this stage writes under ``output_dir``, so that
        ``amodal replay`` can tell an earlier run's results apart (``--overwrite`` / ``--append``)."""
        return []

    def on_start(self) -> None:
        """Load models, open files. Runs in the stage's own thread or process, before any message."""

    def process(self, message: Any) -> Iterable[Any]:
        """Handle one message (including EndOfStream); return or yield the messages to send on."""
        return ()

    def process_batch(self, messages: list[Any]) -> Iterable[Any]:
        """Handle up to ``max_batch`` data messages; the default chains ``process`` over each."""
        return _chain(self.process(m) for m in messages)

    def flush(self) -> None:
        """Make what was processed so far durable (a sink commits). The runtime acknowledges a terminal
        stage's messages to their senders only after this returned: it is the "done" of at-least-once
        delivery. Runs in the stage's thread, at least every ``delivery.flush_interval_s`` while
        messages flow and whenever the inputs go quiet. The default has nothing to make durable."""

    def on_stop(self) -> Iterable[Any]:
        """Flush and close; return final messages. Runs once, after every input has ended."""
        return ()


class SourceStage(Stage):
    """A stage with no inputs (ingest): ``run`` produces messages until done or told to stop."""

    accepts: ClassVar[tuple[type, ...]] = ()

    def run(self, emit: Callable[[Any], None], stop: threading.Event) -> None:
        """Emit Frames (and one EndOfStream per stream) until every stream ended or ``stop`` is set."""
        raise NotImplementedError


def _chain(iterables: Iterable[Iterable[Any] | None]) -> Iterator[Any]:
    for outputs in iterables:
        if outputs:
            yield from outputs
