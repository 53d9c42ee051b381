"""Track stage: per-stream ByteTrack / BoT-SORT, track lifecycle, and person crops.

For each Frame it emits two messages: the Frame with ``tracks`` attached (routed only to stages
that accept Frames, i.e. the video sink) and a ``PersonCrops`` with the same tracks and one
fixed-size crop per track (for the event sinks and the grade/describe/identify stages), so after
this stage only crops and metadata travel. Each stream has its own tracker (its own ids, Kalman
states and, for BoT-SORT, its own camera-motion estimate), created on its first frame and dropped
on its EndOfStream after every still-open track was reported ENDED. Every ENDED row is followed by
a ``TrackEnd`` control message (never dropped, even on ``drop_oldest`` links) so that the stages
keeping per-track state downstream free it.

Crops: ``crop_mode: resize`` (default) stretches the padded box to ``crop_size`` (h, w), matching
how person ReID / attribute models are trained (256x128); ``letterbox`` keeps the aspect ratio and
pads with gray. Rows whose state is ENDED carry an all-zero crop (the person is not in the frame).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.configfile import ConfigError
from pipeline.messages import EndOfStream, Frame, PersonCrops, TrackEnd, Tracks, TrackState
from pipeline.registry import register_stage
from pipeline.stage import Stage, StageContext
from stages.trackers.crops import cut_crops
from stages.trackers.reid_encoder import TrackerReidEncoder
from stages.trackers.stream_tracker import StreamTracker
from stages.ultralytics_import import import_ultralytics

__all__ = ["TrackStage", "TrackConfig"]


class TrackConfig(BaseModel):
    """Tracker and crop settings (tracker fields keep ultralytics' names and defaults)."""

    model_config = ConfigDict(extra="forbid")

    tracker: Literal["bytetrack", "botsort"] = Field(
        "bytetrack",
        description="ByteTrack (IoU + two-stage "
        "association) or BoT-SORT (adds camera-motion "
        "compensation and optional ReID).",
    )
    track_high_thresh: float = Field(
        0.25, ge=0, le=1, description="Detections at or above this score take part in the first association."
    )
    track_low_thresh: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Detections between this and track_high_thresh are used in the second association only.",
    )
    new_track_thresh: float = Field(
        0.25, ge=0, le=1, description="An unmatched detection starts a new track only at or above this score."
    )
    track_buffer: int = Field(
        30, ge=1, description="Frames a lost track is kept for re-association before it is ENDED."
    )
    match_thresh: float = Field(
        0.8, ge=0, le=1, description="Maximum association cost (1 - IoU, fused with score) for a match."
    )
    fuse_score: bool = Field(True, description="Fuse detection scores into the IoU cost.")
    gmc_method: Literal["sparseOptFlow", "orb", "sift", "ecc", "none"] = Field(
        "sparseOptFlow", description="BoT-SORT global motion compensation; 'none' for static cameras."
    )
    proximity_thresh: float = Field(0.5, ge=0, le=1, description="BoT-SORT: minimum IoU for a ReID match.")
    appearance_thresh: float = Field(
        0.8, ge=0, le=1, description="BoT-SORT: minimum appearance similarity for a ReID match."
    )
    with_reid: bool = Field(
        False,
        description="BoT-SORT: also match on appearance, with this project's "
        "OAMN ReID network through the backend layer; off by default (one network pass "
        "per detection).",
    )
    reid_model: str | None = Field(
        None,
        description="BoT-SORT ReID weights: an OAMN checkpoint (path or "
        "a file shipped in models/weights/); null = the shipped one.",
    )
    crop_size: tuple[int, int] = Field((256, 128), description="Output crop size [height, width].")
    crop_padding: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Padding added on every side of a box, as a "
        "fraction of its width/height, before cropping.",
    )
    crop_mode: Literal["resize", "letterbox"] = Field(
        "resize",
        description="resize: stretch to crop_size "
        "(ReID/attribute convention); letterbox: keep aspect, "
        "pad with gray.",
    )
    emit_frames: bool = Field(
        True,
        description="Also send the annotated Frame downstream (needed by the "
        "video sink; turn off when there is none to save bandwidth).",
    )

    @field_validator("crop_size")
    @classmethod
    def _crop_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if any(v < 8 or v > 1024 for v in value):
            raise ValueError(f"crop_size must be [height, width] between 8 and 1024, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _checks(self) -> TrackConfig:
        if self.track_low_thresh > self.track_high_thresh:
            raise ValueError(
                f"track_low_thresh ({self.track_low_thresh}) must be <= track_high_thresh "
                f"({self.track_high_thresh})"
            )
        if self.with_reid and self.tracker != "botsort":
            raise ValueError("with_reid needs tracker: botsort")
        return self

    def tracker_args(self) -> dict[str, Any]:
        """The namespace ultralytics' tracker constructors read."""
        return {
            "tracker_type": self.tracker,
            "track_high_thresh": self.track_high_thresh,
            "track_low_thresh": self.track_low_thresh,
            "new_track_thresh": self.new_track_thresh,
            "track_buffer": self.track_buffer,
            "match_thresh": self.match_thresh,
            "fuse_score": self.fuse_score,
            "gmc_method": None if self.gmc_method == "none" else self.gmc_method,
            "proximity_thresh": self.proximity_thresh,
            "appearance_thresh": self.appearance_thresh,
            "with_reid": False,
            "model": "auto",
            "device": "cpu",  # appearance: TrackerReidEncoder
        }


@dataclass(slots=True)
class _StreamState:
    tracker: StreamTracker
    last: PersonCrops | None = None


#: track ids of the n-th restart of the track stage start above n x this
TRACK_ID_STRIDE = 1_000_000_000  # a tracker process gives out far fewer in its life


@register_stage("track")
class TrackStage(Stage):
    """Per-stream tracking; emits the Frame with tracks and a PersonCrops per frame."""

    Config: ClassVar[type[BaseModel]] = TrackConfig
    accepts: ClassVar[tuple[type, ...]] = (Frame,)
    emits: ClassVar[tuple[type, ...] | None] = (Frame, PersonCrops, TrackEnd)

    def __init__(self, config: TrackConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.config: TrackConfig = config
        self._streams: dict[str, _StreamState] = {}
        self._encoder: TrackerReidEncoder | None = None

    @classmethod
    def check_files(cls, config: Any, name: str) -> list[str]:
        if not config.with_reid:
            return []
        from models.reid.predictor import DEFAULT_REID_WEIGHTS
        from models.weights_path import resolve_weights_path

        weights = config.reid_model or DEFAULT_REID_WEIGHTS
        if resolve_weights_path(weights).is_file():
            return []
        return [f"{name}.reid_model '{weights}' does not exist"]

    def on_start(self) -> None:
        """Import the trackers now so the first frame does not pay for it; with ``with_reid``, load the
        ReID network BoT-SORT matches appearance with (ours, never one ultralytics would fetch)."""
        import_ultralytics("ultralytics.trackers.bot_sort", "ultralytics.trackers.byte_tracker")
        self._encoder = None
        if self.config.with_reid:
            from models.reid.predictor import DEFAULT_REID_WEIGHTS, ReidPredictor
            from models.weights_path import resolve_weights_path

            weights = self.config.reid_model or DEFAULT_REID_WEIGHTS
            if not resolve_weights_path(weights).is_file():
                raise FileNotFoundError(
                    f"track.reid_model {weights!r} does not exist; point --set "
                    "track.reid_model=PATH at an OAMN checkpoint or set with_reid: false"
                )
            try:
                predictor = ReidPredictor(weights, key="track.reid_model")
            except (ValueError, KeyError, RuntimeError) as exc:
                raise ConfigError(
                    f"track.reid_model {weights!r} is not an OAMN ReID checkpoint of this "
                    f"project (amodal train reid): {exc}"
                ) from exc
            self._encoder = TrackerReidEncoder(predictor, self.config.crop_padding)

    def process(self, message: Any) -> Iterable[Any]:
        if isinstance(message, EndOfStream):
            return self._end_stream(message.stream_id)
        return self._track(message)

    def _track(self, frame: Frame) -> list[Any]:
        state = self._streams.get(frame.stream_id)
        if state is None:
            state = self._streams[frame.stream_id] = _StreamState(
                StreamTracker(self.config.tracker, self.config.tracker_args(), self._encoder)
            )
            self.context.logger.info("stream %s: %s tracker started", frame.stream_id, self.config.tracker)
        tracks = self._renumber(state.tracker.step(frame.detections, frame.image))
        crops = cut_crops(
            frame.image,
            tracks.xyxy,
            self.config.crop_size,
            self.config.crop_padding,
            self.config.crop_mode,
            keep=tracks.state != TrackState.ENDED,
        )
        height, width = frame.image.shape[:2]
        person = PersonCrops(
            frame.stream_id, frame.seq, frame.pts, frame.capture_time, (height, width), tracks, crops
        )
        state.last = person
        self._count_states(frame.stream_id, tracks)
        out: list[Any] = [replace(frame, tracks=tracks), person] if self.config.emit_frames else [person]
        ended = tracks.track_id[tracks.state == TrackState.ENDED]
        if len(ended):
            out.append(TrackEnd(frame.stream_id, frame.seq, frame.capture_time, ended))
        return out

    def _end_stream(self, stream_id: str) -> list[Any]:
        state = self._streams.pop(stream_id, None)
        if state is None or state.last is None:
            return []
        tracks = self._renumber(state.tracker.end_all())
        self.context.logger.info("stream %s ended: %d open tracks closed", stream_id, len(tracks))
        if not len(tracks):
            return []
        self._count_states(stream_id, tracks)
        last = state.last
        h, w = self.config.crop_size
        return [
            PersonCrops(
                stream_id,
                last.seq,
                last.pts,
                last.capture_time,
                last.frame_size,
                tracks,
                np.zeros((len(tracks), h, w, 3), np.uint8),
            ),
            TrackEnd(stream_id, last.seq, last.capture_time, tracks.track_id),
        ]

    def _renumber(self, tracks: Tracks) -> Tracks:
        """A restarted tracker starts its ids at 1 again; lift them above any id an earlier process of
        this run gave out, so its new tracks never merge into old ones downstream."""
        base = self.context.run.restarts * TRACK_ID_STRIDE
        return replace(tracks, track_id=tracks.track_id + base) if base and len(tracks) else tracks

    def _count_states(self, stream_id: str, tracks: Tracks) -> None:
        if not len(tracks):
            return
        counts = np.bincount(tracks.state, minlength=len(TrackState))
        for state in (TrackState.NEW, TrackState.LOST, TrackState.ENDED):
            if counts[state]:
                self.context.count(f"tracks_{state.name.lower()}", float(counts[state]), stream=stream_id)
