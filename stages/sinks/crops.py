"""Crop snapshots: a JPEG per track, rate-limited and optionally filtered, for browsing who was seen.

Files: ``{directory}/{stream_id}/{track_id:06d}_{seq:08d}.jpg`` (``..._restored.jpg`` when the
de-occluded crop was saved). A track gets a new snapshot at most every ``min_interval_s`` of capture
time and at most ``max_per_track`` in all, so cost and disk use grow with tracks, not frames. Only
tracks matched in that frame (NEW / UPDATED) are saved: a LOST track's crop shows where the person was
predicted to be, not the person.

Filters (for a crop sink fed by the model stages): ``identities`` / ``require_identity`` keep tracks
with (one of these) identities, ``attributes`` keeps tracks whose decided attributes include all the
names listed. A track's identity and decided attributes are the latest its PersonCrops carried; a
track is saved from the frame it first passes the filters. Per-track state is freed at TrackEnd /
EndOfStream and after ``track_idle_s`` of capture time without the track.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import EndOfStream, PersonCrops, TrackEnd, TrackState
from pipeline.registry import register_stage
from pipeline.stage import Stage
from stages.sinks.common import RowBlocks, TrackTable, output_path, safe_name, under

__all__ = ["CropSink", "CropSinkConfig"]


class CropSinkConfig(BaseModel):
    """Where snapshots go, how many, and of which tracks."""

    model_config = ConfigDict(extra="forbid")

    directory: str = Field("crops", description="Snapshot folder; relative paths are under output_dir.")
    min_interval_s: float = Field(
        1.0, ge=0, description="Least capture time between two snapshots of a track."
    )
    max_per_track: int = Field(10, ge=0, description="Most snapshots per track; 0 = no limit.")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality.")
    identities: list[int] | None = Field(
        None, description="Only tracks holding one of these identities (null = any identity, or none)."
    )
    require_identity: bool = Field(False, description="Only tracks that have been given an identity.")
    attributes: list[str] = Field(
        default_factory=list,
        description="Only tracks whose decided (yes) attributes include all of these names, e.g. "
        "[personalMale, carryingBackpack]; empty = no attribute filter.",
    )
    prefer_restored: bool = Field(
        False, description="Save the de-occluded crop (file suffix _restored) when one was made for the row."
    )
    track_idle_s: float = Field(
        300.0, gt=0, description="Forget a track's state after this much capture time without it."
    )


@dataclass(slots=True)
class _TrackCrops:
    last_time: float | None = None
    count: int = 0
    identity: int | None = None
    attributes: frozenset[str] = frozenset()


@register_stage("crop_sink")
class CropSink(Stage):
    """Saves rate-limited JPEG crops per track, optionally only of some identities or attributes."""

    Config: ClassVar[type[BaseModel]] = CropSinkConfig
    accepts: ClassVar[tuple[type, ...]] = (PersonCrops, TrackEnd)
    emits: ClassVar[tuple[type, ...] | None] = ()

    @classmethod
    def output_files(cls, config: Any, output_dir: Path) -> list[Path]:
        return [under(output_dir, config.directory)]

    def on_start(self) -> None:
        self.directory = output_path(self.context, self.config.directory, directory=True)
        self._tracks: TrackTable[_TrackCrops] = TrackTable(self.config.track_idle_s)
        self._identities = None if self.config.identities is None else frozenset(self.config.identities)
        self._attributes = frozenset(self.config.attributes)
        self.saved = 0

    def process(self, message: Any) -> Iterable[Any]:
        if isinstance(message, EndOfStream):
            self._tracks.pop_stream(message.stream_id)
            return ()
        if isinstance(message, TrackEnd):
            for track_id in message.track_id.tolist():
                self._tracks.pop(message.stream_id, track_id)
            return ()
        self._save(message)
        return ()

    def _wanted(self, state: _TrackCrops) -> bool:
        if (self.config.require_identity or self._identities is not None) and state.identity is None:
            return False
        if self._identities is not None and state.identity not in self._identities:
            return False
        return self._attributes <= state.attributes

    def _save(self, message: PersonCrops) -> None:
        tracks = message.tracks
        stream, now = message.stream_id, message.capture_time
        self._tracks.expire(stream, now)
        blocks = RowBlocks.of(message)
        params = [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
        folder = self.directory / safe_name(stream)
        for i in range(len(tracks)):
            track_state = int(tracks.state[i])
            if track_state == TrackState.ENDED:
                continue
            track_id = int(tracks.track_id[i])
            state = self._tracks.get(stream, track_id)
            if state is None:
                state = _TrackCrops()
            self._tracks.put(stream, track_id, state, now)
            identity = blocks.identity.get(i)
            if identity is not None:
                state.identity = identity[0]
            positive = blocks.positive(i)
            if positive is not None:
                state.attributes = frozenset(positive)
            if track_state == TrackState.LOST or not self._wanted(state):
                continue
            if self.config.max_per_track and state.count >= self.config.max_per_track:
                continue
            if state.last_time is not None and now - state.last_time < self.config.min_interval_s:
                continue
            crop, suffix = message.crops[i], ""
            restored = blocks.restored.get(i)
            if self.config.prefer_restored and restored is not None and message.restored is not None:
                crop, suffix = message.restored.crops[restored], "_restored"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{track_id:06d}_{message.seq:08d}{suffix}.jpg"
            if cv2.imwrite(str(path), crop, params):
                state.last_time = now
                state.count += 1
                self.saved += 1
                self.context.count("crops_saved")
