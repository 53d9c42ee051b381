"""Crop snapshots: a JPEG per track, rate-limited, for browsing who was seen.

Files: ``{directory}/{stream_id}/{track_id:06d}_{seq:08d}.jpg``. A track gets a new snapshot at
most every ``min_interval_s`` of capture time and at most ``max_per_track`` in all, so cost and
disk use grow with tracks, not frames. Only tracks matched in that frame (NEW / UPDATED) are saved:
a LOST track's crop shows where the person was predicted to be, not the person.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import cv2
from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import EndOfStream, PersonCrops, TrackState
from pipeline.registry import register_stage
from pipeline.stage import Stage
from stages.sinks.common import output_path, safe_name

__all__ = ["CropSink", "CropSinkConfig"]


class CropSinkConfig(BaseModel):
    """Where snapshots go and how many."""

    model_config = ConfigDict(extra="forbid")

    directory: str = Field("crops", description="Snapshot folder; relative paths are under output_dir.")
    min_interval_s: float = Field(
        1.0, ge=0, description="Least capture time between two snapshots of a track."
    )
    max_per_track: int = Field(10, ge=0, description="Most snapshots per track; 0 = no limit.")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality.")


@register_stage("crop_sink")
class CropSink(Stage):
    """Saves rate-limited JPEG crops per track."""

    Config: ClassVar[type[BaseModel]] = CropSinkConfig
    accepts: ClassVar[tuple[type, ...]] = (PersonCrops,)
    emits: ClassVar[tuple[type, ...] | None] = ()

    def on_start(self) -> None:
        self.directory = output_path(self.context, self.config.directory, directory=True)
        self._last: dict[tuple[str, int], tuple[float, int]] = {}  # (stream, track) -> (time, count)
        self.saved = 0

    def process(self, message: Any) -> Iterable[Any]:
        if isinstance(message, EndOfStream):
            for key in [k for k in self._last if k[0] == message.stream_id]:
                del self._last[key]
            return ()
        tracks = message.tracks
        params = [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
        folder = self.directory / safe_name(message.stream_id)
        for i in range(len(tracks)):
            if int(tracks.state[i]) not in (TrackState.NEW, TrackState.UPDATED):
                continue
            track_id = int(tracks.track_id[i])
            key = (message.stream_id, track_id)
            last_time, count = self._last.get(key, (None, 0))
            if self.config.max_per_track and count >= self.config.max_per_track:
                continue
            if last_time is not None and message.capture_time - last_time < self.config.min_interval_s:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{track_id:06d}_{message.seq:08d}.jpg"
            if cv2.imwrite(str(path), message.crops[i], params):
                self._last[key] = (message.capture_time, count + 1)
                self.saved += 1
                self.context.count("crops_saved")
        return ()
