"""Drive one stage: build it, feed it from its input links, send its outputs, shut it down cleanly.

The same runner runs a stage as a thread (embedded mode) or as the body of a stage process
(process mode). It implements the runtime half of the stage contract:

* batches of up to ``max_batch`` data messages (waiting at most ``max_wait_s``) go to
  ``process_batch``; outputs are routed to each downstream link whose stage accepts their type;
* an EndOfStream is handed to ``process`` once every input link that carried that stream has
  delivered it (fan-in safe), then forwarded downstream after the stage's outputs;
* a TrackEnd (control, never dropped) is handed to ``process`` only when the stage accepts it and
  is forwarded downstream unless the stage answered with its own TrackEnd;
* when every input link has sent StageDone (its upstream finished), ``on_stop`` runs and this stage
  sends StageDone on each output link: that is how "all sources ended" drains the whole graph;
* an exception in ``process`` is counted and logged (once per exception type), the message is
  dropped and the stage keeps going; ``max_consecutive_errors`` in a row mark the stage failed.
  A failed stage keeps draining (discarding) its inputs so upstream stages never block on it, and
  still forwards EndOfStream/StageDone so downstream sinks commit and close.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zmq

from pipeline.configfile import ConfigError
from pipeline.graph_settings import GraphConfig
from pipeline.messages import DATA_TYPES, EndOfStream, StageDone, TrackEnd
from pipeline.metrics import RuntimeMetrics
from pipeline.redelivery import RedeliveryFilter
from pipeline.source_progress import SourceProgress
from pipeline.stage import RunInfo, SourceStage, Stage, StageContext
from pipeline.stream_ends import StreamEnds
from pipeline.transport import POLL_S, Inputs, Link, OnceLog, Outlet
from pipeline.urls import mask_urls_in
from pipeline.wire import encode, type_name

__all__ = ["StageRunner", "RuntimeHandles", "StageResult", "StageFailed", "Observer", "is_config_error"]

logger = logging.getLogger(__name__)

Observer = Callable[[str, Any], None]


class StageFailed(RuntimeError):
    """A stage that cannot go on (start-up failed, or process() kept raising)."""


def is_config_error(exc: BaseException) -> bool:
    """Errors the user fixes in the config (bad option, missing weights file): exit code 2."""
    return isinstance(exc, ConfigError | FileNotFoundError)


@dataclass
class StageResult:
    """How a stage ended; ``error`` is one line, credentials masked."""

    name: str
    ok: bool
    error: str | None = None
    config_error: bool = False
    messages_in: int = 0
    messages_out: int = 0
    failed_streams: list[str] = field(default_factory=list)  # a source's streams that ended with an error
    lost: int = 0  # messages a lossless link had to give up (the receiver was gone at shutdown)


@dataclass(frozen=True)
class RuntimeHandles:
    """What every stage of one runtime (the embedded graph, or one stage process) shares."""

    zmq_context: zmq.Context
    metrics: RuntimeMetrics
    stop: threading.Event  # graceful: sources stop reading, everything drains
    abort: threading.Event  # drop what is queued and close now
    guard: Any = None  # pipeline.security.LinkGuard: who may connect to a link (None: no checks)
    bound: dict[str, zmq.Socket] | None = None  # input sockets the runtime bound, by "up->down"
    observer: Observer | None = None  # sees what a terminal stage emits
    on_failure: Callable[[str, BaseException], None] | None = None  # told when a stage fails


class StageRunner:
    """Runs one stage of a graph against already-resolved links."""

    def __init__(
        self,
        graph: GraphConfig,
        name: str,
        links: list[Link],
        handles: RuntimeHandles,
        upstream_done: Iterable[str] = (),
        defer_close: bool = False,
        run: RunInfo | None = None,
    ) -> None:
        self.graph = graph
        self.spec = graph.stage(name)
        self.name = name
        self._zmq = handles.zmq_context
        self._in_links = [link for link in links if link.downstream == name]
        self._out_links = [link for link in links if link.upstream == name]
        self._metrics = handles.metrics
        self._stop = handles.stop
        self._abort = handles.abort
        self._bound = handles.bound
        self._observer = handles.observer if not self._out_links else None
        self._on_failure = handles.on_failure
        self._upstream_done = set(upstream_done)
        self._defer_close = defer_close
        self._run = run or RunInfo()
        self._guard = handles.guard
        self._log = logging.getLogger(f"amodal.stage.{name}")
        self._once = OnceLog(self._log)
        self._send_lock = threading.RLock()  # the outlets' sockets: stage thread, source threads, service
        self._outlets: list[Outlet] = []
        self._service: threading.Thread | None = None
        self._closing = threading.Event()
        self._inflight: collections.deque[_InFlight] = collections.deque()
        self._last_flush = time.monotonic()
        self._durable = False
        self._dedup = RedeliveryFilter()
        self._inputs: Inputs | None = None
        self._progress: SourceProgress | None = None
        self._failure: BaseException | None = None
        self._consecutive_errors = 0
        self.result = StageResult(name=name, ok=False)

    # -- public -------------------------------------------------------------------------------
    def run(self) -> StageResult:
        """Run the stage to completion; never raises (the result says what went wrong)."""
        inputs: Inputs | None = None
        stage: Stage | None = None
        started = False
        try:
            linger = self.graph.shutdown.linger_s
            self._outlets = [
                Outlet(self._zmq, link, self._metrics, linger, self.graph.delivery, self._guard)
                for link in self._out_links
            ]
            cls = self.spec.stage_class
            if issubclass(cls, SourceStage) and self._run.state_dir:
                self._progress = SourceProgress(Path(self._run.state_dir) / f"{self.name}.progress.json")
                self._run = replace(self._run, resume=self._progress.load())
                for outlet in self._outlets:
                    outlet.on_release = self._progress.released_by(outlet)
            self._start_service()
            if self._in_links:
                inputs = Inputs(
                    self._zmq, self.name, self._in_links, cls.accepts, self._metrics, self._bound, self._guard
                )
                inputs.start()
            context = StageContext(self.name, self._log, self._metrics, self.graph.output_dir, self._run)
            stage = cls.from_config(self.spec.config, context)
            self._durable = type(stage).flush is not Stage.flush  # a sink with something to commit
            stage.on_start()
            started = True
            self._log.info("stage=%s type=%s started", self.name, self.spec.type)
        except Exception as exc:  # noqa: BLE001 - any start-up failure is reported, never raised
            self._fail(exc, "failed to start")
        try:
            if isinstance(stage, SourceStage):
                if started:
                    self._run_source(stage)
            elif inputs is not None:
                self._run_consumer(stage if started else None, inputs)
            if started and stage is not None:  # also after a failure: close files, commit what is there
                self._call(stage.on_stop, "on_stop")
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "crashed")
        finally:
            self._log.debug("stage=%s sending StageDone (out=%d)", self.name, self.result.messages_out)
            self._send(StageDone(sender=self.name))
            if not self._defer_close or self._abort.is_set():
                self.close_outlets()
            if inputs is not None:
                inputs.close()
        self.result.ok = self._failure is None
        self._log.info(
            "stage=%s finished ok=%s in=%d out=%d",
            self.name,
            self.result.ok,
            self.result.messages_in,
            self.result.messages_out,
        )
        return self.result

    def close_outlets(self) -> None:
        """Close the sending sockets.

        Call it only once every downstream stage has finished reading (the runtime knows when):
        libzmq drops the messages still queued on a link if the sender closes while the receiver's
        queue is at its high-water mark, and those are the last ones: EndOfStream and StageDone.
        """
        self._closing.set()
        if self._service is not None and self._service is not threading.current_thread():
            self._service.join(timeout=2)
        with self._send_lock:
            if self._progress is not None:
                self._progress.save()
            for outlet in self._outlets:
                self.result.lost += outlet.gave_up
                outlet.close(abort=self._abort.is_set())
            self._outlets = []

    def _start_service(self) -> None:
        """A thread that takes the outlets' acknowledgements and resend requests while the stage thread
        is busy or idle (and after the stage finished, until the outlets close)."""
        if not self._outlets:
            return

        def serve() -> None:
            while not self._closing.wait(POLL_S):
                with self._send_lock:
                    for outlet in self._outlets:
                        outlet.service(self._abort)
                    if self._inputs is not None:
                        self._settle_sent()
                    if self._progress is not None:
                        self._progress.save_every(0.2)

        self._service = threading.Thread(target=serve, name=f"{self.name}-outlets", daemon=True)
        self._service.start()

    # -- sources ------------------------------------------------------------------------------
    def _run_source(self, stage: SourceStage) -> None:
        streams: set[str] = set()
        ended: set[str] = set()

        def emit(message: Any) -> None:
            with self._send_lock:
                if isinstance(message, EndOfStream):
                    ended.add(message.stream_id)
                    if message.reason == "error":
                        self.result.failed_streams.append(message.stream_id)
                elif isinstance(message, DATA_TYPES):
                    streams.add(message.stream_id)
                self._send(message)

        reason = "error"
        try:
            stage.run(emit, self._stop)
            reason = "stopped" if self._stop.is_set() else "finished"
        finally:
            for stream in sorted(streams - ended):  # the runtime guarantees one EndOfStream per stream
                self._send(EndOfStream(stream_id=stream, reason=reason, detail="source returned without one"))

    # -- consumers ----------------------------------------------------------------------------
    def _run_consumer(self, stage: Stage | None, inputs: Inputs) -> None:
        pending = {name for name, link in inputs.links.items() if link.upstream not in self._upstream_done}
        done_links = set(inputs.links) - pending
        streams = StreamEnds(self.graph, inputs.links)
        cls = self.spec.stage_class
        max_batch = max(1, int(getattr(stage, "max_batch", cls.max_batch) or 1))
        max_wait = float(getattr(stage, "max_wait_s", cls.max_wait_s) or 0.0)
        self._inputs = inputs
        while pending and not self._abort.is_set():
            batch = inputs.get(max_batch, max_wait, POLL_S * 4)
            if not batch:
                self._settle(stage, idle=True)
                idle = time.monotonic() - inputs.last_activity
                if self._stop.is_set() and idle > self.graph.shutdown.idle_drain_s:
                    self._log.warning(
                        "stage=%s inputs silent for %.1fs after stop; finishing without %s",
                        self.name,
                        idle,
                        sorted(pending),
                    )
                    break
                continue
            link, first, token = batch[0]
            if isinstance(first, StageDone) and first.sender != inputs.links[link].upstream:
                # only the link's own sender may finish it (a forged StageDone would end this stage)
                self._metrics.rejected.labels(stage=self.name, reason="forged").inc()
                self._once.warn(
                    f"forged:{link}",
                    "stage=%s link=%s: StageDone from %r ignored",
                    self.name,
                    link,
                    first.sender,
                )
            elif isinstance(first, StageDone):
                if link in pending:
                    self._log.debug(
                        "stage=%s link %s done; waiting for %s", self.name, link, sorted(pending - {link})
                    )
                    pending.discard(link)
                    done_links.add(link)
                    for eos in streams.link_done(link, done_links):
                        self._end_stream(stage, eos)
            elif isinstance(first, EndOfStream):
                if self._dedup.end(link, first.stream_id):
                    eos = streams.end(link, first, done_links)
                    if eos is not None:
                        self._end_stream(stage, eos)
            elif isinstance(first, TrackEnd):
                self._end_tracks(stage, first)
            else:
                fresh = [item for item in batch if self._dedup.data(item.link, item.message, item.token[1])]
                if len(fresh) < len(batch):
                    self._metrics.duplicates.labels(stage=self.name).inc(len(batch) - len(fresh))
                for owner, message, _ in fresh:
                    streams.seen(owner, message.stream_id)
                    self._metrics.messages_in.labels(stage=self.name, type=type_name(message)).inc()
                self.result.messages_in += len(fresh)
                if fresh and stage is not None and self._failure is None:  # failed: keep draining
                    self._process(stage, [message for _, message, _ in fresh])
            with self._send_lock:
                self._inflight.append(_InFlight([item.token for item in batch], self._marks()))
            self._settle(stage, idle=False)
        self._settle(stage, idle=True, final=True)

    def _marks(self) -> tuple[int, ...]:
        """Where each outlet stands now: what was just processed is done once these are acknowledged."""
        return tuple(outlet.last_lseq for outlet in self._outlets)

    def _settle(self, stage: Stage | None, idle: bool, final: bool = False) -> None:
        """Acknowledge upstream every received message that is done (see pipeline.delivery).

        With outlets: done = everything it caused was acknowledged downstream (the service thread
        checks too, as acknowledgements arrive). Without (a sink): done = made durable by
        ``stage.flush()``, called every ``delivery.flush_interval_s`` or when idle; a stage that has
        nothing to make durable (no ``flush`` of its own) is done as soon as it processed a message.
        """
        if self._outlets:
            with self._send_lock:
                self._settle_sent()
            return
        if not self._inflight:
            return
        now = time.monotonic()
        durable = stage is not None and self._durable
        if durable and not (idle or final or now - self._last_flush >= self.graph.delivery.flush_interval_s):
            return
        if durable and stage is not None and self._failure is None:
            try:
                stage.flush()
            except Exception as exc:  # noqa: BLE001 - not durable: acknowledge nothing, try again later
                self._stage_error(exc)
                return
        self._last_flush = now
        self._inputs.done([token for item in self._inflight for token in item.tokens])
        self._inflight.clear()

    def _settle_sent(self) -> None:
        """(Under the send lock.) Release the received messages whose outputs are all acknowledged."""
        acked = [outlet.acked for outlet in self._outlets]
        tokens: list[Any] = []
        while self._inflight and all(a >= m for a, m in zip(acked, self._inflight[0].marks, strict=True)):
            tokens.extend(self._inflight.popleft().tokens)
        if tokens:
            self._inputs.done(tokens)

    def _process(self, stage: Stage, messages: list[Any]) -> None:
        start = time.perf_counter()
        try:
            outputs = list(
                stage.process_batch(messages)
                if len(messages) > 1 or stage.max_batch > 1
                else (stage.process(messages[0]) or ())
            )
        except Exception as exc:  # noqa: BLE001 - bad input never kills a stage
            self._stage_error(exc)
            return
        elapsed = time.perf_counter() - start
        self._consecutive_errors = 0
        self._metrics.process_seconds.labels(stage=self.name).observe(elapsed)
        self._metrics.batch_size.labels(stage=self.name).observe(len(messages))
        for output in outputs:
            self._send(output)
        if self._observer is not None or not self._out_links:
            now = time.time()
            for message in messages:
                capture = getattr(message, "capture_time", None)
                if capture is not None:
                    self._metrics.capture_to_sink.labels(stage=self.name).observe(max(0.0, now - capture))
                if self._observer is not None:
                    self._observer(self.name, message)

    def _end_stream(self, stage: Stage | None, eos: EndOfStream) -> None:
        self._metrics.messages_in.labels(stage=self.name, type="end_of_stream").inc()
        if stage is not None and self._failure is None:
            try:
                outputs = list(stage.process(eos) or ())
            except Exception as exc:  # noqa: BLE001
                self._stage_error(exc)
                outputs = []
            for output in outputs:
                self._send(output)
        self._send(eos)
        if self._observer is not None:
            self._observer(self.name, eos)

    def _end_tracks(self, stage: Stage | None, end: TrackEnd) -> None:
        """A stage that accepts TrackEnd sees it (and may answer with its own, which replaces it);
        any other stage passes it on untouched, so it reaches every stage downstream."""
        self._metrics.messages_in.labels(stage=self.name, type="track_end").inc()
        outputs: list[Any] = []
        if stage is not None and self._failure is None and TrackEnd in self.spec.stage_class.accepts:
            try:
                outputs = list(stage.process(end) or ())
            except Exception as exc:  # noqa: BLE001
                self._stage_error(exc)
        for output in outputs:
            self._send(output)
        if not any(isinstance(output, TrackEnd) for output in outputs):
            self._send(end)
        if self._observer is not None:
            for output in outputs if outputs else [end]:
                if isinstance(output, TrackEnd):
                    self._observer(self.name, output)

    def _stage_error(self, exc: Exception) -> None:
        self._metrics.errors.labels(stage=self.name).inc()
        self._consecutive_errors += 1
        self._once.warn(
            f"error:{type(exc).__name__}",
            "stage=%s process() raised %s: %s; message dropped",
            self.name,
            type(exc).__name__,
            mask_urls_in(str(exc)),
            exc_info=True,
        )
        limit = self.graph.shutdown.max_consecutive_errors
        if self._consecutive_errors >= limit:
            self._fail(
                StageFailed(f"process() raised {limit} times in a row; last: {type(exc).__name__}: {exc}"),
                "failed",
            )

    # -- helpers ------------------------------------------------------------------------------
    def _call(self, hook: Callable[[], Iterable[Any] | None], what: str) -> None:
        outputs = hook()
        for output in list(outputs or ()):
            self._send(output)

    def _send(self, message: Any) -> None:
        name = type_name(message)
        parts = None
        sent = False
        stream = getattr(message, "stream_id", None)
        seq = message.seq if isinstance(message, DATA_TYPES) else None
        give_up = self.graph.shutdown.idle_drain_s
        with self._send_lock:
            if isinstance(message, EndOfStream):  # the stream's row says what it lost on the way
                lost = sum(outlet.lost.pop(message.stream_id, 0) for outlet in self._outlets)
                if lost:
                    message = replace(message, lost=message.lost + lost)
            for outlet in self._outlets:
                if not outlet.wants(name):
                    continue
                if parts is None:
                    parts = encode(message)
                sent = outlet.send(parts, name, stream, seq, self._abort, self._stop, give_up) or sent
            if self._progress is not None and seq is not None and stream is not None:
                self._progress.sent(stream, seq)
        if sent and not isinstance(message, StageDone):
            self.result.messages_out += 1
            self._metrics.messages_out.labels(stage=self.name, type=name).inc()

    def _fail(self, exc: BaseException, what: str) -> None:
        if self._failure is not None:
            return
        self._failure = exc
        line = mask_urls_in(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        self.result.error = f"stage {self.name!r} {what}: {line}"
        self.result.config_error = is_config_error(exc)
        self._log.error("stage=%s %s: %s", self.name, what, line, exc_info=not self.result.config_error)
        if self._on_failure is not None:
            self._on_failure(self.name, exc)


@dataclass
class _InFlight:
    """Received messages (their tokens) whose processing sent on up to ``marks`` (lseq per outlet)."""

    tokens: list[Any]
    marks: tuple[int, ...]
