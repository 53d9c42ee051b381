"""Ingest stage: decode files and cameras (PyAV) into ``Frame`` messages.

One ingest stage serves many streams, each decoded on its own worker thread. Why one stage for
many rather than one stage per stream: the detector batches frames *across* streams, which is
natural when they arrive interleaved on one link; one stage also means one process and one set of
sockets per site instead of one per camera on a small edge box, and FFmpeg decoding releases the
GIL, so worker threads decode in parallel. Isolation is still available where it matters: a
config may declare several ingest stages (say one per camera in process mode, so a crashing camera
driver is restarted alone) and point detect at all of them; the stage does not assume it is alone.

Per stream: files are replayed losslessly (the decode thread waits when the hand-off buffer is
full), live sources drop their own oldest buffered frame instead (bounded latency, counted as
``frames_dropped``). End of a stream is an ``EndOfStream`` (``finished``; ``error`` with the reason
for a missing/broken/truncated file or a camera that was given up on; ``stopped`` on shutdown);
one stream's failure never stops the others. URLs are masked (``pipeline.urls``) in every log line,
metric and EndOfStream detail.

Live changes: with ``streams_file`` the stage also decodes the streams listed in that YAML file (same
schema as ``streams:``, ``${ENV}`` interpolated) and polls it every ``watch_interval_s`` from its own
run loop. A stream added to the file starts within one interval; one removed from it is told to stop
(its own stop event; the other streams are untouched) and ends with exactly one
``EndOfStream(id, "stopped", "removed from streams file")``, after which its state is gone; one whose
options or source changed is removed and added again. A stream re-added later starts on a fresh
decoder; its ``Frame.seq`` goes on from the last one it had (frame numbers of a stream id only grow
within a run: that is how a restarted stage's duplicates are recognised, pipeline.delivery), and
downstream stages, having freed their per-stream state at ``EndOfStream``, see a new stream. A
streams file that is missing or invalid is logged (the file and the bad key) and leaves the running
streams as they are until it changes again. With a streams file the stage runs until it is stopped,
even when every stream has ended.

Restarts (process mode): the runtime tells a restarted ingest what every sink had already made
durable of each stream (``context.run.resume``). A file stream resumes after its last acknowledged
frame (the frames before it are decoded and skipped, so ``seq`` stays the frame index) and one that
had ended is not read again; a camera goes on live, numbering above anything the previous process
handed out (the frames it did not capture meanwhile are simply not there).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.configfile import ConfigError, interpolate_env, validate
from pipeline.messages import EndOfStream, Frame
from pipeline.registry import register_stage
from pipeline.stage import SourceStage, StageContext
from stages.media.buffer import StreamBuffer
from stages.media.decoder import DecodedFrame, DecoderOptions, StreamDecoder, StreamEnded
from stages.media.sources import mask_url, resolve_source, scrub
from stages.media.watch import WatchedFile

__all__ = [
    "IngestStage",
    "IngestConfig",
    "StreamConfig",
    "ReconnectConfig",
    "load_streams_file",
    "parse_streams_file",
]

REMOVED_DETAIL = "removed from streams file"
CHANGED_DETAIL = "changed in streams file"


class ReconnectConfig(BaseModel):
    """How a live source retries after a failed connection, a stall or a server that went away."""

    model_config = ConfigDict(extra="forbid")

    initial_s: float = Field(0.5, gt=0, description="First retry delay in seconds.")
    max_s: float = Field(30.0, gt=0, description="Ceiling of the exponential backoff, in seconds.")
    multiplier: float = Field(2.0, ge=1, description="Delay growth per consecutive failure.")
    jitter: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Each delay is scaled by a random factor in "
        "[1 - jitter, 1] so many cameras do not retry in lock-step.",
    )
    max_attempts: int | None = Field(
        None,
        ge=1,
        description="Consecutive connection attempts that yield "
        "no frame before the stream ends with reason 'error'; null retries for "
        "ever.",
    )

    @model_validator(mode="after")
    def _ceiling(self) -> ReconnectConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= initial_s ({self.initial_s})")
        return self


class StreamConfig(BaseModel):
    """One stream: a camera URL, a video file, a directory of videos or a list of files."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Stream id carried by every message and event (letters, digits, '_', '.', '-').",
    )
    source: str | list[str] = Field(
        description="rtsp://user:${CAM_PASS}@host/path (or another FFmpeg "
        "URL), a video file (mp4, mkv, avi, raw .264/.265, ...), a directory "
        "(its videos in natural order) or a list of files played in order."
    )
    rtsp_transport: Literal["tcp", "udp"] | None = Field(
        None, description="Override of the stage's rtsp_transport for this stream."
    )
    max_fps: float | None = Field(None, gt=0, description="Override of the stage's max_fps.")
    realtime: bool | None = Field(None, description="Override of the stage's realtime.")

    @field_validator("source")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if not value:
            raise ValueError("source must name a file, a directory, a list of files or a URL")
        return value


class IngestConfig(BaseModel):
    """Ingest stage settings; per-stream fields override the stage-wide ones."""

    model_config = ConfigDict(extra="forbid")

    streams: list[StreamConfig] = Field(
        default_factory=list,
        description="The streams this stage "
        "decodes, each on its own worker thread. At least one unless "
        "streams_file is set.",
    )
    streams_file: str | None = Field(
        None,
        description="A YAML file listing more streams, in the streams "
        "schema ([{id, source, ...}], ${ENV} interpolated), watched while "
        "the stage runs: a stream added to it starts, one removed from it "
        "ends (EndOfStream 'stopped'), one changed in it restarts; the "
        "others are untouched. Ids must differ from those in streams. A "
        "missing or invalid file is logged and the running streams are "
        "kept. With it the stage runs until stopped. null = no file.",
    )
    watch_interval_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="How often streams_file is polled (mtime, size and content hash), in seconds.",
    )
    realtime: bool = Field(
        False,
        description="Replay files at their native frame rate (true) or as fast "
        "as downstream takes them (false). Live sources are never paced.",
    )
    max_fps: float | None = Field(
        None,
        gt=0,
        description="Frame-rate cap: frames closer than 1/max_fps "
        "in stream time are skipped at the source. null = every frame.",
    )
    rtsp_transport: Literal["tcp", "udp"] = Field(
        "tcp", description="RTP over the RTSP TCP connection (robust through NAT/firewalls) or over UDP."
    )
    open_timeout_s: float = Field(10.0, gt=0, description="Give up opening a source after this long.")
    read_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Abort a blocking read after this long (the "
        "socket timeout for RTSP/HTTP and PyAV's interrupt callback).",
    )
    stall_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Drop and reconnect a live source that keeps "
        "sending data but no decodable frame for this long.",
    )
    probe_s: float = Field(
        1.0,
        gt=0,
        description="Seconds of a live stream FFmpeg may analyse while "
        "opening it (its default of 5 s delays every (re)connect).",
    )
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Live-source retry policy."
    )
    buffer_frames: int = Field(
        4,
        ge=1,
        le=1024,
        description="Decoded frames buffered per stream between its decode thread and the stage's output.",
    )
    live_drop_oldest: bool = Field(
        True,
        description="When a live stream's buffer is full, drop its oldest "
        "frame (bounded latency) instead of pausing the decoder.",
    )
    decode_threads: int = Field(0, ge=0, le=64, description="FFmpeg decoder threads per stream; 0 = auto.")
    ffmpeg_options: dict[str, str] = Field(
        default_factory=dict,
        description="Extra FFmpeg demuxer options passed to every open, e.g. {fflags: nobuffer}.",
    )
    capture_clock: Literal["pts", "wall"] = Field(
        "pts",
        description="capture_time of file frames: pts = "
        "stream start + pts (reproducible event times); wall = "
        "the wall clock at decode, as a camera gives (latency "
        "measurements). Live sources always use wall.",
    )
    max_frames: int | None = Field(
        None,
        ge=1,
        description="End each stream after this many frames (quick trials, benchmarks); null = all.",
    )
    stop_grace_s: float = Field(
        2.0,
        ge=0,
        description="After shutdown is requested (or a stream is "
        "removed from streams_file), how long to wait for its decode thread before "
        "ending the stream anyway (a read blocked in FFmpeg ends within "
        "read_timeout_s; later output of that thread is dropped).",
    )

    @model_validator(mode="before")
    @classmethod
    def _streams_required(cls, data: Any) -> Any:
        """Without a streams_file, ``streams`` must list at least one stream (pydantic's own errors)."""
        if not isinstance(data, Mapping) or data.get("streams_file") is not None:
            return data
        if "streams" not in data:
            error: dict[str, Any] = {"type": "missing", "loc": ("streams",), "input": dict(data)}
        elif isinstance(data["streams"], list) and not data["streams"]:
            error = {
                "type": "too_short",
                "loc": ("streams",),
                "input": [],
                "ctx": {"field_type": "List", "min_length": 1, "actual_length": 0},
            }
        else:
            return data
        raise ValidationError.from_exception_data(cls.__name__, [error])  # type: ignore[list-item]

    @field_validator("streams")
    @classmethod
    def _unique_ids(cls, streams: list[StreamConfig]) -> list[StreamConfig]:
        seen: set[str] = set()
        for stream in streams:
            if stream.id in seen:
                raise ValueError(f"stream id {stream.id!r} is used by more than one stream")
            seen.add(stream.id)
        return streams


class _StreamList(RootModel[list[StreamConfig]]):
    """The content of a streams file."""


def parse_streams_file(
    data: str | bytes, source: str, taken: Collection[str] = (), env: Mapping[str, str] | None = None
) -> list[StreamConfig]:
    """Streams listed by a streams file's content; ConfigError naming ``source`` and the bad key.

    ``taken``: ids already used by the stage's ``streams`` (a file may not reuse them). ``${NAME}``
    is replaced from ``env`` (default: the environment), as in graph configs.
    """
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = problem or " ".join(str(exc).split())
        raise ConfigError(f"{source}: not valid YAML{where}: {what}") from None
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; write [] to remove every stream it listed")
    if not isinstance(raw, list):
        raise ConfigError(
            f"{source}: the top level must be a list of streams ([{{id, source, ...}}]), "
            f"got a {type(raw).__name__}"
        )
    try:
        raw = interpolate_env(raw, env)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    streams = validate(_StreamList, raw, source=source).root  # type: ignore[arg-type]
    seen: set[str] = set(taken)
    for index, stream in enumerate(streams):
        if stream.id in taken:
            raise ConfigError(
                f"{source}: [{index}].id: stream id {stream.id!r} is already used by the stage's streams"
            )
        if stream.id in seen:
            raise ConfigError(
                f"{source}: [{index}].id: stream id {stream.id!r} is used by more than one stream"
            )
        seen.add(stream.id)
    return streams


def load_streams_file(
    path: str | Path, taken: Collection[str] = (), env: Mapping[str, str] | None = None
) -> list[StreamConfig]:
    """Read and parse a streams file (see ``parse_streams_file``); ConfigError when it cannot be used."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(_unreadable(path, exc)) from None
    return parse_streams_file(data, str(path), taken, env)


def _unreadable(path: str | Path, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"streams file {str(path)!r} does not exist"
    return f"streams file {str(path)!r} cannot be read: {exc.strerror or exc}"


def _describe(stream: StreamConfig) -> str:
    """The stream's source(s), credentials masked."""
    sources = [stream.source] if isinstance(stream.source, str) else stream.source
    return ", ".join(mask_url(s) for s in sources)


@dataclass(eq=False)
class _Running:
    """A started stream as the run loop sees it."""

    config: StreamConfig
    key: str  # buffer key, unique per start: a decode thread that outlives its removal is ignored
    stop: threading.Event
    from_file: bool
    removing: str | None = None  # EndOfStream detail once it was told to stop
    removing_since: float = 0.0
    base: int = 0  # Frame.seq = base + the decoder's frame number
    skip_through: int = -1  # frames up to this seq were delivered before a restart: skip them


@register_stage("ingest")
class IngestStage(SourceStage):
    """Decode every configured stream on its own thread and emit Frames, then one EndOfStream each.

    With ``streams_file`` the set of streams follows that file while the stage runs (module
    docstring): added streams start, removed ones end with ``EndOfStream("stopped", "removed from
    streams file")``, changed ones end (``"changed in streams file"``) and start again on a fresh
    decoder, whose ``Frame.seq`` restarts at 0 (downstream per-stream state is freed at EndOfStream).
    Such a stage returns only once ``stop`` is set.
    """

    Config: ClassVar[type[BaseModel]] = IngestConfig
    emits: ClassVar[tuple[type, ...] | None] = (Frame, EndOfStream)

    def __init__(self, config: IngestConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.config: IngestConfig = config

    @classmethod
    def check_files(cls, config: Any, name: str) -> list[str]:
        """Every file source must exist (cameras are only known to be there once they answer)."""
        problems = []
        for index, stream in enumerate(config.streams):
            try:
                resolve_source(stream.source)
            except ValueError as exc:
                problems.append(f"{name}.streams[{index}].source: {scrub(str(exc))}")
        if config.streams_file is not None:
            try:
                listed = load_streams_file(config.streams_file, {s.id for s in config.streams})
            except ConfigError as exc:
                return [*problems, f"{name}.streams_file: {scrub(str(exc))}"]
            for index, stream in enumerate(listed):
                try:
                    resolve_source(stream.source)
                except ValueError as exc:
                    problems.append(
                        f"{name}.streams_file: {config.streams_file}: [{index}].source: {scrub(str(exc))}"
                    )
        return problems

    def decoder_options(self, stream: StreamConfig) -> DecoderOptions:
        """Map the stage + stream config onto the decoder's plain options."""
        cfg = self.config
        return DecoderOptions(
            realtime=cfg.realtime if stream.realtime is None else stream.realtime,
            max_fps=stream.max_fps if stream.max_fps is not None else cfg.max_fps,
            rtsp_transport=stream.rtsp_transport or cfg.rtsp_transport,
            open_timeout_s=cfg.open_timeout_s,
            read_timeout_s=cfg.read_timeout_s,
            stall_timeout_s=cfg.stall_timeout_s,
            probe_s=cfg.probe_s,
            backoff_initial_s=cfg.reconnect.initial_s,
            backoff_max_s=cfg.reconnect.max_s,
            backoff_multiplier=cfg.reconnect.multiplier,
            backoff_jitter=cfg.reconnect.jitter,
            max_reconnects=cfg.reconnect.max_attempts,
            decode_threads=cfg.decode_threads,
            capture_clock=cfg.capture_clock,
            max_frames=cfg.max_frames,
            ffmpeg_options=tuple(sorted(cfg.ffmpeg_options.items())),
        )

    def run(self, emit: Callable[[Any], None], stop: threading.Event) -> None:
        """Start one decode thread per stream and forward what they produce until all have ended
        (with a streams_file: until ``stop``, following the file meanwhile)."""
        cfg = self.config
        streams = _LiveStreams(self, emit, stop)
        for stream in cfg.streams:
            streams.start(stream, from_file=False)
        watcher = WatchedFile(cfg.streams_file) if cfg.streams_file is not None else None
        wait = 0.1 if watcher is None else min(0.1, cfg.watch_interval_s)
        next_poll = 0.0
        stop_seen: float | None = None
        while streams.running or (watcher is not None and not stop.is_set()):
            now = time.monotonic()
            if stop.is_set():
                streams.stop_all()
            else:
                if watcher is not None and now >= next_poll:
                    self._poll(watcher, streams)
                    next_poll = now + cfg.watch_interval_s
                streams.expire_removals(cfg.stop_grace_s)
            item = streams.buffer.get(timeout=wait)
            if item is None:
                if stop.is_set():
                    stop_seen = stop_seen or time.monotonic()
                    if time.monotonic() - stop_seen > cfg.stop_grace_s:
                        break
                continue
            if isinstance(item, StreamEnded):
                streams.end(item)
                continue
            self.context.count("frames_decoded", stream=item.stream_id)
            seq = streams.number(item.stream_id, item.seq)
            if seq is not None:
                emit(Frame(item.stream_id, seq, item.pts, item.capture_time, item.image))
        streams.abandon("decoder did not stop within stop_grace_s")

    def _poll(self, watcher: WatchedFile, streams: _LiveStreams) -> None:
        """Apply the streams file if it changed; a file that cannot be used changes nothing."""
        log = self.context.logger
        try:
            data = watcher.poll()
            if data is None:
                return
            listed = parse_streams_file(data, str(watcher.path), {s.id for s in self.config.streams})
            streams.apply(listed, str(watcher.path))
        except (OSError, ConfigError) as exc:
            problem = _unreadable(watcher.path, exc) if isinstance(exc, OSError) else str(exc)
            self.context.count("streams_file_errors")
            log.error(
                "streams file not applied: %s; the running streams are kept (%s)",
                scrub(problem),
                ", ".join(sorted(streams.running)) or "none",
            )
        except Exception:  # a bug here must not end every stream of the stage
            self.context.count("streams_file_errors")
            log.exception("streams file %s: could not be applied", watcher.path)

    def _decode_stream(
        self, stream: StreamConfig, buffer: StreamBuffer, key: str, stop: threading.Event
    ) -> None:
        log = self.context.logger
        end: StreamEnded | None = None
        try:
            source = resolve_source(stream.source)
        except ValueError as exc:
            detail = scrub(str(exc), [stream.source] if isinstance(stream.source, str) else stream.source)
            log.error("stream %s: %s", stream.id, detail)
            buffer.put(key, StreamEnded(stream.id, "error", detail), drop_oldest=False, stop=stop, force=True)
            return
        log.info("stream %s: reading %s", stream.id, source.describe())
        drop = source.live and self.config.live_drop_oldest
        decoder = StreamDecoder(stream.id, source, self.decoder_options(stream), count=self.context.count)
        try:
            for item in decoder.frames(stop):
                if isinstance(item, StreamEnded):
                    end = item
                    break
                dropped = buffer.put(key, item, drop_oldest=drop, stop=stop)
                if dropped:
                    self.context.count("frames_dropped", dropped, stream=stream.id)
        except Exception as exc:  # a bug must end this stream, never hang the stage
            log.exception("stream %s: decode thread failed", stream.id)
            end = StreamEnded(stream.id, "error", scrub(f"{type(exc).__name__}: {exc}", source.inputs))
        if end is None:
            end = StreamEnded(stream.id, "stopped")
        if end.reason == "error":
            log.error("stream %s ended with an error: %s", stream.id, end.detail)
        else:
            log.info("stream %s %s (%s)", stream.id, end.reason, mask_url(source.describe()))
        buffer.put(key, end, drop_oldest=False, stop=stop, force=True)


#: a restarted live stream numbers on this far above the last seq the previous process saved as sent
#: (it saves every 0.2 s, so fewer frames than this can have gone out unsaved)
_LIVE_SEQ_MARGIN = 10_000


def _is_live(config: StreamConfig) -> bool:
    try:
        return resolve_source(config.source).live
    except ValueError:
        return False  # its decode thread reports the error


class _LiveStreams:
    """The streams of one ``IngestStage.run``: starts decode threads, follows the streams file, emits
    each stream's EndOfStream and then forgets it.

    Streams from ``streams:`` stop on the stage's ``stop`` event and are never restarted. Streams from
    the file each get their own stop event, so removing one touches no other. A file stream that ended
    on its own (a video file played to its end) is not started again while the file lists it unchanged.
    """

    def __init__(self, stage: IngestStage, emit: Callable[[Any], None], stop: threading.Event) -> None:
        self.stage = stage
        self.log = stage.context.logger
        self.emit = emit
        self.stop = stop
        self.buffer: StreamBuffer[DecodedFrame | StreamEnded] = StreamBuffer(stage.config.buffer_frames)
        self.running: dict[str, _Running] = {}
        self.wanted: dict[str, StreamConfig] = {}  # the streams file's streams, as last applied
        self.ended: dict[str, StreamConfig] = {}  # file streams that ended on their own
        self._keys = itertools.count()
        self._last_seq: dict[str, int] = {}  # per stream id, the last Frame.seq emitted
        self._resume = dict(stage.context.run.resume)  # what a previous process of this run delivered

    def start(self, config: StreamConfig, *, from_file: bool) -> None:
        base, skip_through = self._last_seq.get(config.id, -1) + 1, -1
        resume = self._resume.pop(config.id, None)
        if resume is not None:  # restarted: go on where the sinks' committed state says
            if _is_live(config):
                base = max(base, int(resume.get("sent", -1)) + 1 + _LIVE_SEQ_MARGIN)
            elif resume.get("ended"):
                self.log.info("stream %s: already delivered completely before the restart", config.id)
                return
            else:
                skip_through = int(resume.get("acked", -1))
                self.log.info("stream %s: resuming after frame %d", config.id, skip_through)
        key = f"{config.id}#{next(self._keys)}"
        stop = threading.Event() if from_file else self.stop
        self.buffer.add_stream(key)
        self.running[config.id] = _Running(config, key, stop, from_file, base=base, skip_through=skip_through)
        thread = threading.Thread(
            target=self.stage._decode_stream,
            args=(config, self.buffer, key, stop),
            name=f"ingest-{config.id}",
            daemon=True,
        )
        thread.start()

    def number(self, stream_id: str, frame: int) -> int | None:
        """The Frame.seq of the decoder's frame number ``frame``; None when it must be skipped."""
        stream = self.running.get(stream_id)
        seq = frame + (stream.base if stream is not None else 0)
        if stream is not None and seq <= stream.skip_through:
            return None
        self._last_seq[stream_id] = seq
        return seq

    def end(self, end: StreamEnded) -> None:
        """Emit a stream's EndOfStream, forget the stream, start whatever waited for its id."""
        stream = self.running.pop(end.stream_id)
        detail = stream.removing if stream.removing is not None and end.reason == "stopped" else end.detail
        self.emit(EndOfStream(end.stream_id, end.reason, detail))
        self.buffer.remove_stream(stream.key)
        if stream.from_file and stream.removing is None:
            self.ended[end.stream_id] = stream.config
        self.reconcile()

    def apply(self, listed: list[StreamConfig], source: str) -> None:
        """Make the running file streams follow ``listed`` (new content of the file ``source``)."""
        wanted = {stream.id: stream for stream in listed}
        added = [i for i in wanted if i not in self.wanted]
        removed = [i for i in self.wanted if i not in wanted]
        changed = [i for i in wanted if i in self.wanted and wanted[i] != self.wanted[i]]
        for stream_id in changed:
            old, new = self.wanted[stream_id], wanted[stream_id]
            keys = [k for k in StreamConfig.model_fields if getattr(old, k) != getattr(new, k)]
            self.log.info(
                "stream %s: %s changed in %s; restarting it on %s",
                stream_id,
                ", ".join(keys),
                source,
                _describe(new),
            )
        if added or removed or changed:
            self.log.info(
                "streams file %s: %d streams; added: %s; removed: %s; changed: %s",
                source,
                len(wanted),
                ", ".join(added) or "-",
                ", ".join(removed) or "-",
                ", ".join(changed) or "-",
            )
        self.wanted = wanted
        self.reconcile()

    def reconcile(self) -> None:
        """Stop file streams that are no longer wanted as they run; start wanted ones not running."""
        if self.stop.is_set():
            return
        for stream in list(self.running.values()):
            if not stream.from_file or stream.removing is not None:
                continue
            want = self.wanted.get(stream.config.id)
            if want is None:
                self._remove(stream, REMOVED_DETAIL)
            elif want != stream.config:
                self._remove(stream, CHANGED_DETAIL)
        for stream_id in [i for i, config in self.ended.items() if self.wanted.get(i) != config]:
            del self.ended[stream_id]  # removed from the file (or changed) since it ended
        for stream_id, config in self.wanted.items():
            if stream_id not in self.running and stream_id not in self.ended:
                self.start(config, from_file=True)  # a stream being removed restarts after its EndOfStream

    def _remove(self, stream: _Running, detail: str) -> None:
        self.log.info("stream %s: %s; stopping it", stream.config.id, detail)
        stream.removing = detail
        stream.removing_since = time.monotonic()
        stream.stop.set()

    def expire_removals(self, grace_s: float) -> None:
        """End removed streams whose decoder is still blocked after ``grace_s`` (a read stuck in FFmpeg
        ends within read_timeout_s; its late output is discarded)."""
        now = time.monotonic()
        late = [
            s for s in self.running.values() if s.removing is not None and now - s.removing_since > grace_s
        ]
        for stream in late:
            self.log.warning(
                "stream %s: decoder did not stop within stop_grace_s; ending it anyway", stream.config.id
            )
            self.end(StreamEnded(stream.config.id, "stopped"))

    def stop_all(self) -> None:
        for stream in self.running.values():
            stream.stop.set()

    def abandon(self, detail: str) -> None:
        """After shutdown: one EndOfStream for each stream whose decode thread never answered."""
        for stream_id in sorted(self.running):  # decode threads stuck in a blocking read past the grace
            stream = self.running.pop(stream_id)
            self.log.warning("stream %s: decoder did not stop in time", stream_id)
            self.emit(EndOfStream(stream_id, "stopped", stream.removing or detail))
            self.buffer.remove_stream(stream.key)
