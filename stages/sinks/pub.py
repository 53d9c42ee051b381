"""ZeroMQ PUB socket for live consumers (dashboards, alerting, a later stage on another host).

Each frame with tracks is published as a multipart message ``[topic, header, crop...]``:
``topic`` is the stream id (subscribe to ``b"cam1"`` or to ``b""`` for all), ``header`` the same
JSON object the JSONL sink writes, and, with ``include_crops``, one JPEG per track in header order
(``header["crops"] = "jpeg"``; with ``prefer_restored``, the de-occluded crop where one was made).
Ended tracks are published as ``[topic, {"type": "track_end", ...}]`` and end of stream as
``{"type": "end_of_stream", ...}``; the JSON shapes are the JSONL sink's (:mod:`stages.sinks.jsonl`).
PUB never blocks the pipeline: a subscriber that cannot keep up loses messages at its high-water mark.
This sink owns its socket (and ZeroMQ context), not a runtime link: subscribers come and go.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, ClassVar

import cv2
import zmq
from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import EndOfStream, PersonCrops, TrackEnd
from pipeline.registry import register_stage
from pipeline.stage import Stage
from stages.sinks.common import RowBlocks, TrackEndDedup, track_end_record, tracks_record

__all__ = ["PubSink", "PubSinkConfig"]


class PubSinkConfig(BaseModel):
    """The PUB endpoint and what each event carries."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(
        "tcp://127.0.0.1:5570", description="Endpoint the PUB socket binds (tcp://, ipc://)."
    )
    include_crops: bool = Field(False, description="Append one JPEG crop per track to each event.")
    prefer_restored: bool = Field(
        False, description="With include_crops: send the de-occluded crop of a row when one was made."
    )
    jpeg_quality: int = Field(85, ge=1, le=100, description="JPEG quality of the crops.")
    include_empty: bool = Field(False, description="Also publish frames in which no track is present.")
    hwm: int = Field(1000, ge=1, description="Messages queued per subscriber before PUB drops for it.")
    track_idle_s: float = Field(
        300.0, gt=0, description="Forget which ended tracks were published after this much capture time."
    )


@register_stage("pub_sink")
class PubSink(Stage):
    """Publishes track events (and optionally crops) on a ZeroMQ PUB socket."""

    Config: ClassVar[type[BaseModel]] = PubSinkConfig
    accepts: ClassVar[tuple[type, ...]] = (PersonCrops, TrackEnd)
    emits: ClassVar[tuple[type, ...] | None] = ()

    def on_start(self) -> None:
        self._zmq = zmq.Context()
        self._socket = self._zmq.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, self.config.hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.bind(self.config.endpoint)
        except zmq.ZMQError as exc:
            self._socket.close()
            self._zmq.term()
            raise RuntimeError(f"pub_sink cannot bind {self.config.endpoint}: {exc}") from exc
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._ended = TrackEndDedup(self.config.track_idle_s)
        self.context.logger.info("pub_sink publishing on %s", self.endpoint)

    def process(self, message: Any) -> Iterable[Any]:
        topic = message.stream_id.encode()
        if isinstance(message, EndOfStream):
            header = {
                "type": "end_of_stream",
                "stream_id": message.stream_id,
                "reason": message.reason,
                "detail": message.detail,
            }
            self._publish([topic, json.dumps(header).encode()])
            self._ended.end_stream(message.stream_id)
            return ()
        if isinstance(message, TrackEnd):
            fresh = self._ended.fresh(message)
            if fresh:
                record = track_end_record(message, fresh)
                self._publish([topic, json.dumps(record, separators=(",", ":")).encode()])
            return ()
        if not len(message.tracks) and not self.config.include_empty:
            return ()
        header = tracks_record(message)
        parts = [topic]
        crops: list[bytes] = []
        if self.config.include_crops:
            header["crops"] = "jpeg"
            params = [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
            restored = RowBlocks.of(message).restored if self.config.prefer_restored else {}
            for i, crop in enumerate(message.crops):
                if i in restored and message.restored is not None:
                    crop = message.restored.crops[restored[i]]
                ok, data = cv2.imencode(".jpg", crop, params)
                crops.append(data.tobytes() if ok else b"")
        parts.append(json.dumps(header, separators=(",", ":")).encode())
        self._publish(parts + crops)
        return ()

    def _publish(self, parts: list[bytes]) -> None:
        try:
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK)
            self.context.count("published")
        except zmq.Again:
            self.context.count("publish_dropped")

    def on_stop(self) -> Iterable[Any]:
        self._socket.close(linger=500)  # let the last events (end of stream) reach subscribers
        self._zmq.term()
        return ()
