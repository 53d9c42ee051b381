"""JSONL event log: one line per frame with tracks, one line per end of stream.

Line shapes (``type`` says which)::

    {"type": "tracks", "stream_id": "cam1", "seq": 12, "pts": 0.5, "capture_time": 1.7e9,
     "frame_size": [360, 640], "tracks": [{"track_id": 3, "xyxy": [..4 floats..],
     "confidence": 0.91, "state": "updated"}]}
    {"type": "end_of_stream", "stream_id": "cam1", "reason": "finished", "detail": ""}

Each line is flushed to the OS as it is written; the file is fsync'ed at every end of stream and
when the stage stops, so a drained pipeline leaves every line on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import EndOfStream, PersonCrops
from pipeline.registry import register_stage
from pipeline.stage import Stage
from stages.sinks.common import output_path, tracks_record

__all__ = ["JsonlSink", "JsonlSinkConfig"]


class JsonlSinkConfig(BaseModel):
    """Where the JSONL log goes and what it includes."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        "events.jsonl", description="Output file (appended); relative paths are under output_dir."
    )
    include_empty: bool = Field(False, description="Also write frames in which no track is present.")


@register_stage("jsonl_sink")
class JsonlSink(Stage):
    """Appends track events as JSON lines."""

    Config: ClassVar[type[BaseModel]] = JsonlSinkConfig
    accepts: ClassVar[tuple[type, ...]] = (PersonCrops,)
    emits: ClassVar[tuple[type, ...] | None] = ()

    def on_start(self) -> None:
        path = output_path(self.context, self.config.path)
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def process(self, message: Any) -> Iterable[Any]:
        if isinstance(message, EndOfStream):
            record = {
                "type": "end_of_stream",
                "stream_id": message.stream_id,
                "reason": message.reason,
                "detail": message.detail,
            }
            self._write(record)
            self._sync()
            return ()
        if len(message.tracks) or self.config.include_empty:
            self._write(tracks_record(message))
        return ()

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def on_stop(self) -> Iterable[Any]:
        self._sync()
        self._file.close()
        return ()
