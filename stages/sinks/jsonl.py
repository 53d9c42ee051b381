"""JSONL event log: one line per frame with tracks, one per batch of ended tracks, one per end of stream.

Line shapes (``type`` says which)::

    {"type": "tracks", "stream_id": "cam1", "seq": 12, "pts": 0.5, "capture_time": 1.7e9,
     "frame_size": [360, 640], "tracks": [{"track_id": 3, "xyxy": [..4 floats..],
     "confidence": 0.91, "state": "updated", "grade": 1, "grade_name": "top-1/4", "visible": 0.62,
     "restored": true, "identity": 7, "identity_score": 0.83,
     "attributes": {"personalMale": true, "hairLong": null}}]}
    {"type": "track_end", "stream_id": "cam1", "seq": 40, "capture_time": 1.7e9,
     "tracks": [{"track_id": 3, "identity": 7,
                 "attributes": {"personalMale": {"decision": true, "probability": 0.91}}}]}
    {"type": "end_of_stream", "stream_id": "cam1", "reason": "finished", "detail": "", "lost": 0}

In a ``tracks`` line, ``grade``/``grade_name``/``visible`` (``pipeline.messages.GRADE_NAMES``; the
person's visible fraction, 0..1, rounded to 3 decimals), ``restored``, ``identity``/``identity_score``
and ``attributes`` are present only when a model stage reported them for that row in that frame
(``attributes``: only when the track's decisions changed; null = undecided). A ``track_end`` line may
repeat a track when the graph fans in: the later one carries the model stages' final word (identity
null / attributes absent when there is none); keep the last.

Each line is flushed to the OS as it is written; the file is fsync'ed at every end of stream and
when the stage stops, so a drained pipeline leaves every line on disk.

A sink process restarted within a run (process mode) is sent again what it had not acknowledged
(pipeline.delivery); it reads back what it wrote in this run (from the file offset it noted at its
first start) and skips those messages, so no line is written twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import EndOfStream, PersonCrops, TrackEnd
from pipeline.registry import register_stage
from pipeline.stage import Stage
from stages.sinks.common import (
    TrackEndDedup,
    WrittenBefore,
    output_path,
    track_end_record,
    tracks_record,
    under,
)

__all__ = ["JsonlSink", "JsonlSinkConfig"]


class JsonlSinkConfig(BaseModel):
    """Where the JSONL log goes and what it includes."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        "events.jsonl", description="Output file (appended); relative paths are under output_dir."
    )
    include_empty: bool = Field(False, description="Also write frames in which no track is present.")
    track_idle_s: float = Field(
        300.0, gt=0, description="Forget which ended tracks were reported after this much capture time."
    )


@register_stage("jsonl_sink")
class JsonlSink(Stage):
    """Appends track events as JSON lines."""

    Config: ClassVar[type[BaseModel]] = JsonlSinkConfig
    accepts: ClassVar[tuple[type, ...]] = (PersonCrops, TrackEnd)
    emits: ClassVar[tuple[type, ...] | None] = ()

    @classmethod
    def output_files(cls, config: Any, output_dir: Path) -> list[Path]:
        return [under(output_dir, config.path)]

    def on_start(self) -> None:
        path = output_path(self.context, self.config.path)
        self.path = path
        self._written, self._ended_before = self._written_this_run()
        self._file = path.open("a", encoding="utf-8")
        self._ended = TrackEndDedup(self.config.track_idle_s)

    def _written_this_run(self) -> tuple[WrittenBefore, set[str]]:
        """The frames (per stream) and the ended streams earlier processes of this run wrote."""
        run = self.context.run
        if not run.state_dir:
            return WrittenBefore({}), set()
        mark = Path(run.state_dir) / f"{self.context.name}.jsonl-offset"
        if run.restarts == 0 or not mark.exists():
            mark.write_text(str(self.path.stat().st_size if self.path.exists() else 0))
            return WrittenBefore({}), set()
        with self.path.open("rb+") as file:
            file.seek(int(mark.read_text()))
            data = file.read()
            cut = data.rfind(b"\n") + 1
            if cut < len(data):  # a line the killed process did not finish
                file.truncate(file.tell() - (len(data) - cut))
        frames: dict[str, tuple[int, int]] = {}
        ended: set[str] = set()
        for line in data[:cut].splitlines():
            record = json.loads(line)
            stream = record["stream_id"]
            if record["type"] == "tracks":
                last, count = frames.get(stream, (-1, 0))
                frames[stream] = (record["seq"], count + 1 if record["seq"] == last else 1)
                ended.discard(stream)
            elif record["type"] == "end_of_stream":
                ended.add(stream)
        return WrittenBefore(frames), ended

    def _seen_before(self, message: Any) -> bool:
        """Written by this run's earlier process (sent again after the restart): skip it."""
        if isinstance(message, EndOfStream):
            if message.stream_id in self._ended_before:
                self._ended_before.discard(message.stream_id)
                return True
            return False
        if isinstance(message, PersonCrops) and (len(message.tracks) or self.config.include_empty):
            return self._written.again(message.stream_id, message.seq)
        return False

    def process(self, message: Any) -> Iterable[Any]:
        if (self._written or self._ended_before) and self._seen_before(message):
            return ()
        if isinstance(message, EndOfStream):
            record = {
                "type": "end_of_stream",
                "stream_id": message.stream_id,
                "reason": message.reason,
                "detail": message.detail,
                "lost": message.lost,
            }
            self._write(record)
            self._sync()
            self._ended.end_stream(message.stream_id)
            return ()
        if isinstance(message, TrackEnd):
            fresh = self._ended.fresh(message)
            if fresh:
                self._write(track_end_record(message, fresh))
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
