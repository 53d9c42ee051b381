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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.messages import EndOfStream, Frame
from pipeline.registry import register_stage
from pipeline.stage import SourceStage, StageContext
from stages.media.buffer import StreamBuffer
from stages.media.decoder import DecodedFrame, DecoderOptions, StreamDecoder, StreamEnded
from stages.media.sources import mask_url, resolve_source, scrub

__all__ = ["IngestStage", "IngestConfig", "StreamConfig", "ReconnectConfig"]


class ReconnectConfig(BaseModel):
    """How a live source retries after a failed connection, a stall or a server that went away."""

    model_config = ConfigDict(extra="forbid")

    initial_s: float = Field(0.5, gt=0, description="First retry delay in seconds.")
    max_s: float = Field(30.0, gt=0, description="Ceiling of the exponential backoff, in seconds.")
    multiplier: float = Field(2.0, ge=1, description="Delay growth per consecutive failure.")
    jitter: float = Field(0.5, ge=0, le=1, description="Each delay is scaled by a random factor in "
                          "[1 - jitter, 1] so many cameras do not retry in lock-step.")
    max_attempts: int | None = Field(None, ge=1, description="Consecutive connection attempts that yield "
                                     "no frame before the stream ends with reason 'error'; null retries for "
                                     "ever.")

    @model_validator(mode="after")
    def _ceiling(self) -> ReconnectConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= initial_s ({self.initial_s})")
        return self


class StreamConfig(BaseModel):
    """One stream: a camera URL, a video file, a directory of videos or a list of files."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Stream id carried by every "
                    "message and event (letters, digits, '_', '.', '-').")
    source: str | list[str] = Field(description="rtsp://user:${CAM_PASS}@host/path (or another FFmpeg "
                                    "URL), a video file (mp4, mkv, avi, raw .264/.265, ...), a directory "
                                    "(its videos in natural order) or a list of files played in order.")
    rtsp_transport: Literal["tcp", "udp"] | None = Field(None, description="Override of the stage's "
                                                         "rtsp_transport for this stream.")
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

    streams: list[StreamConfig] = Field(min_length=1, description="The streams this stage decodes, "
                                        "each on its own worker thread.")
    realtime: bool = Field(False, description="Replay files at their native frame rate (true) or as fast "
                           "as downstream takes them (false). Live sources are never paced.")
    max_fps: float | None = Field(None, gt=0, description="Frame-rate cap: frames closer than 1/max_fps "
                                  "in stream time are skipped at the source. null = every frame.")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTP over the RTSP TCP connection "
                                                  "(robust through NAT/firewalls) or over UDP.")
    open_timeout_s: float = Field(10.0, gt=0, description="Give up opening a source after this long.")
    read_timeout_s: float = Field(5.0, gt=0, description="Abort a blocking read after this long (the "
                                  "socket timeout for RTSP/HTTP and PyAV's interrupt callback).")
    stall_timeout_s: float = Field(10.0, gt=0, description="Drop and reconnect a live source that keeps "
                                   "sending data but no decodable frame for this long.")
    probe_s: float = Field(1.0, gt=0, description="Seconds of a live stream FFmpeg may analyse while "
                           "opening it (its default of 5 s delays every (re)connect).")
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig, description="Live-source retry "
                                       "policy.")
    buffer_frames: int = Field(4, ge=1, le=1024, description="Decoded frames buffered per stream between "
                               "its decode thread and the stage's output.")
    live_drop_oldest: bool = Field(True, description="When a live stream's buffer is full, drop its oldest "
                                   "frame (bounded latency) instead of pausing the decoder.")
    decode_threads: int = Field(0, ge=0, le=64, description="FFmpeg decoder threads per stream; 0 = auto.")
    ffmpeg_options: dict[str, str] = Field(default_factory=dict, description="Extra FFmpeg demuxer "
                                           "options passed to every open, e.g. {fflags: nobuffer}.")
    capture_clock: Literal["pts", "wall"] = Field("pts", description="capture_time of file frames: pts = "
                                                  "stream start + pts (reproducible event times); wall = "
                                                  "the wall clock at decode, as a camera gives (latency "
                                                  "measurements). Live sources always use wall.")
    max_frames: int | None = Field(None, ge=1, description="End each stream after this many frames "
                                   "(quick trials, benchmarks); null = all.")
    stop_grace_s: float = Field(2.0, ge=0, description="After shutdown is requested, how long to wait for "
                                "decode threads (a read blocked in FFmpeg ends within read_timeout_s).")

    @field_validator("streams")
    @classmethod
    def _unique_ids(cls, streams: list[StreamConfig]) -> list[StreamConfig]:
        seen: set[str] = set()
        for stream in streams:
            if stream.id in seen:
                raise ValueError(f"stream id {stream.id!r} is used by more than one stream")
            seen.add(stream.id)
        return streams


@register_stage("ingest")
class IngestStage(SourceStage):
    """Decode every configured stream on its own thread and emit Frames, then one EndOfStream each."""

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
        """Start one decode thread per stream and forward what they produce until all have ended."""
        buffer: StreamBuffer[DecodedFrame | StreamEnded] = StreamBuffer(self.config.buffer_frames)
        threads = []
        for stream in self.config.streams:
            buffer.add_stream(stream.id)
            thread = threading.Thread(target=self._decode_stream, args=(stream, buffer, stop),
                                      name=f"ingest-{stream.id}", daemon=True)
            threads.append(thread)
        for thread in threads:
            thread.start()
        pending = {stream.id for stream in self.config.streams}
        stop_seen: float | None = None
        while pending:
            item = buffer.get(timeout=0.1)
            if item is None:
                if stop.is_set():
                    stop_seen = stop_seen or time.monotonic()
                    if time.monotonic() - stop_seen > self.config.stop_grace_s:
                        break
                continue
            if isinstance(item, StreamEnded):
                pending.discard(item.stream_id)
                emit(EndOfStream(item.stream_id, item.reason, item.detail))
                continue
            self.context.count("frames_decoded", stream=item.stream_id)
            emit(Frame(item.stream_id, item.seq, item.pts, item.capture_time, item.image))
        for stream_id in sorted(pending):  # decode threads stuck in a blocking read past the grace period
            self.context.logger.warning("stream %s: decoder did not stop in time", stream_id)
            emit(EndOfStream(stream_id, "stopped", "decoder did not stop within stop_grace_s"))

    def _decode_stream(self, stream: StreamConfig, buffer: StreamBuffer, stop: threading.Event) -> None:
        log = self.context.logger
        end: StreamEnded | None = None
        try:
            source = resolve_source(stream.source)
        except ValueError as exc:
            detail = scrub(str(exc), [stream.source] if isinstance(stream.source, str) else stream.source)
            log.error("stream %s: %s", stream.id, detail)
            buffer.put(stream.id, StreamEnded(stream.id, "error", detail), drop_oldest=False, stop=stop,
                       force=True)
            return
        log.info("stream %s: reading %s", stream.id, source.describe())
        drop = source.live and self.config.live_drop_oldest
        decoder = StreamDecoder(stream.id, source, self.decoder_options(stream), count=self.context.count)
        try:
            for item in decoder.frames(stop):
                if isinstance(item, StreamEnded):
                    end = item
                    break
                dropped = buffer.put(stream.id, item, drop_oldest=drop, stop=stop)
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
        buffer.put(stream.id, end, drop_oldest=False, stop=stop, force=True)
