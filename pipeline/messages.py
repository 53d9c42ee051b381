"""Typed messages that travel between stages, validated where they are built.

Every message is a frozen, slotted dataclass whose ``__post_init__`` checks shapes and dtypes
(supervision's ``Detections`` style), so a bad array fails at its producer with a message that says
what was expected, not three stages later. Arrays are made C-contiguous with the declared dtype
(a safe cast such as float64 -> float32 is allowed, a lossy one such as float -> uint8 image is not),
because the wire format ships their raw buffers as they are.

The wire encoding lives in :mod:`pipeline.wire`; this module only defines the types.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, get_args

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "MessageError",
    "Detections",
    "TrackState",
    "Tracks",
    "Frame",
    "PersonCrops",
    "EndOfStream",
    "StageDone",
    "Message",
    "DATA_TYPES",
]

SCHEMA_VERSION = 1

EosReason = Literal["finished", "error", "stopped"]


class MessageError(ValueError):
    """A message that cannot be built or decoded; the runtime counts it and drops it."""


def _array(
    owner: str, name: str, value: Any, dtype: np.dtype | type, shape: tuple[int | None, ...]
) -> np.ndarray:
    """Check ``value`` against a shape pattern (None = any length) and return it C-contiguous in ``dtype``."""
    if not isinstance(value, np.ndarray):
        raise MessageError(f"{owner}.{name} must be a numpy array, got {type(value).__name__}")
    want = np.dtype(dtype)
    pattern = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
    if value.ndim != len(shape) or any(
        w is not None and w != g for w, g in zip(shape, value.shape, strict=False)
    ):
        raise MessageError(f"{owner}.{name} must have shape {pattern}, got {tuple(value.shape)}")
    if value.dtype != want:
        if not np.can_cast(value.dtype, want, casting="same_kind"):
            raise MessageError(f"{owner}.{name} must have dtype {want}, got {value.dtype}")
        value = value.astype(want)
    if not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)
    return value


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _same_length(owner: str, arrays: dict[str, np.ndarray]) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise MessageError(f"{owner} arrays must all have the same length N, got {shown}")


@dataclass(frozen=True, slots=True)
class Detections:
    """Detector output for one frame: boxes in pixel xyxy of the full frame."""

    xyxy: np.ndarray  # float32 (N, 4)
    confidence: np.ndarray  # float32 (N,)
    class_id: np.ndarray  # int32 (N,)

    def __post_init__(self) -> None:
        _set(self, "xyxy", _array("Detections", "xyxy", self.xyxy, np.float32, (None, 4)))
        _set(self, "confidence", _array("Detections", "confidence", self.confidence, np.float32, (None,)))
        _set(self, "class_id", _array("Detections", "class_id", self.class_id, np.int32, (None,)))
        _same_length(
            "Detections", {"xyxy": self.xyxy, "confidence": self.confidence, "class_id": self.class_id}
        )

    def __len__(self) -> int:
        return len(self.confidence)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32))


class TrackState(IntEnum):
    """Track lifecycle as the tracker reports it; ENDED is reported once per track."""

    NEW = 0
    UPDATED = 1
    LOST = 2
    ENDED = 3


@dataclass(frozen=True, slots=True)
class Tracks:
    """Tracker output for one frame: one row per track present (or just lost/ended) in that frame."""

    track_id: np.ndarray  # int64 (N,)
    xyxy: np.ndarray  # float32 (N, 4)
    confidence: np.ndarray  # float32 (N,)
    state: np.ndarray  # uint8 (N,) of TrackState

    def __post_init__(self) -> None:
        _set(self, "track_id", _array("Tracks", "track_id", self.track_id, np.int64, (None,)))
        _set(self, "xyxy", _array("Tracks", "xyxy", self.xyxy, np.float32, (None, 4)))
        _set(self, "confidence", _array("Tracks", "confidence", self.confidence, np.float32, (None,)))
        _set(self, "state", _array("Tracks", "state", self.state, np.uint8, (None,)))
        _same_length(
            "Tracks",
            {
                "track_id": self.track_id,
                "xyxy": self.xyxy,
                "confidence": self.confidence,
                "state": self.state,
            },
        )
        if len(self.state) and int(self.state.max()) > max(TrackState):
            raise MessageError(
                f"Tracks.state values must be TrackState (0..{int(max(TrackState))}), "
                f"got {int(self.state.max())}"
            )

    def __len__(self) -> int:
        return len(self.track_id)

    @classmethod
    def empty(cls) -> Tracks:
        return cls(
            np.zeros((0,), np.int64),
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0,), np.uint8),
        )


def _check_stream(owner: str, stream_id: Any, seq: Any = 0) -> None:
    if not isinstance(stream_id, str) or not stream_id:
        raise MessageError(f"{owner}.stream_id must be a non-empty string, got {stream_id!r}")
    if isinstance(seq, bool) or not isinstance(seq, int | np.integer) or seq < 0:
        raise MessageError(f"{owner}.seq must be an integer >= 0, got {seq!r}")


def _check_times(owner: str, pts: Any, capture_time: Any) -> None:
    if pts is not None and (isinstance(pts, bool) or not isinstance(pts, int | float)):
        raise MessageError(f"{owner}.pts must be seconds (float) or None, got {pts!r}")
    if isinstance(capture_time, bool) or not isinstance(capture_time, int | float):
        raise MessageError(f"{owner}.capture_time must be a wall-clock time in seconds, got {capture_time!r}")


@dataclass(frozen=True, slots=True, repr=False)
class Frame:
    """One decoded BGR frame and what the stages so far have added to it."""

    stream_id: str
    seq: int
    pts: float | None
    capture_time: float
    image: np.ndarray  # uint8 (H, W, 3) BGR
    detections: Detections | None = None
    tracks: Tracks | None = None

    def __post_init__(self) -> None:
        _check_stream("Frame", self.stream_id, self.seq)
        _check_times("Frame", self.pts, self.capture_time)
        if isinstance(self.image, np.ndarray) and self.image.dtype != np.uint8:
            raise MessageError(f"Frame.image must have dtype uint8 (BGR), got {self.image.dtype}")
        _set(self, "image", _array("Frame", "image", self.image, np.uint8, (None, None, 3)))
        if self.detections is not None and not isinstance(self.detections, Detections):
            raise MessageError(
                f"Frame.detections must be Detections or None, got {type(self.detections).__name__}"
            )
        if self.tracks is not None and not isinstance(self.tracks, Tracks):
            raise MessageError(f"Frame.tracks must be Tracks or None, got {type(self.tracks).__name__}")

    def __repr__(self) -> str:
        dets = "None" if self.detections is None else len(self.detections)
        tracks = "None" if self.tracks is None else len(self.tracks)
        return (
            f"Frame(stream_id={self.stream_id!r}, seq={self.seq}, pts={self.pts}, image={self.image.shape}, "
            f"detections={dets}, tracks={tracks})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class PersonCrops:
    """What travels after the tracker: the tracks of one frame and a fixed-size crop per track."""

    stream_id: str
    seq: int
    pts: float | None
    capture_time: float
    frame_size: tuple[int, int]  # (h, w) of the full frame the boxes refer to
    tracks: Tracks
    crops: np.ndarray  # uint8 (N, h, w, 3)

    def __post_init__(self) -> None:
        _check_stream("PersonCrops", self.stream_id, self.seq)
        _check_times("PersonCrops", self.pts, self.capture_time)
        size = tuple(self.frame_size) if isinstance(self.frame_size, list | tuple) else self.frame_size
        if not (
            isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
        ):
            raise MessageError(
                f"PersonCrops.frame_size must be (h, w) positive integers, got {self.frame_size!r}"
            )
        _set(self, "frame_size", size)
        if not isinstance(self.tracks, Tracks):
            raise MessageError(f"PersonCrops.tracks must be Tracks, got {type(self.tracks).__name__}")
        if isinstance(self.crops, np.ndarray) and self.crops.dtype != np.uint8:
            raise MessageError(f"PersonCrops.crops must have dtype uint8, got {self.crops.dtype}")
        _set(self, "crops", _array("PersonCrops", "crops", self.crops, np.uint8, (None, None, None, 3)))
        if len(self.crops) != len(self.tracks):
            raise MessageError(
                "PersonCrops.crops must have one crop per track: "
                f"{len(self.tracks)} tracks, {len(self.crops)} crops"
            )

    def __repr__(self) -> str:
        return (
            f"PersonCrops(stream_id={self.stream_id!r}, seq={self.seq}, pts={self.pts}, "
            f"tracks={self.tracks.track_id.tolist()}, crops={self.crops.shape})"
        )


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The last message of a stream; the runtime forwards it after the stage's final outputs."""

    stream_id: str
    reason: EosReason
    detail: str = ""

    def __post_init__(self) -> None:
        _check_stream("EndOfStream", self.stream_id)
        if self.reason not in get_args(EosReason):
            raise MessageError(
                f"EndOfStream.reason must be one of {get_args(EosReason)}, got {self.reason!r}"
            )
        if not isinstance(self.detail, str):
            raise MessageError(f"EndOfStream.detail must be a string, got {type(self.detail).__name__}")


@dataclass(frozen=True, slots=True)
class StageDone:
    """Runtime-internal: the upstream stage on this link has finished and will send nothing more.

    Stages never see it; it is how a stage knows all its inputs are drained without knowing in
    advance which streams exist.
    """

    sender: str

    def __post_init__(self) -> None:
        if not isinstance(self.sender, str) or not self.sender:
            raise MessageError(f"StageDone.sender must be a non-empty string, got {self.sender!r}")


Message = Frame | PersonCrops | EndOfStream

# Messages that carry data (may be dropped by a drop_oldest link); control messages never are.
DATA_TYPES: tuple[type, ...] = (Frame, PersonCrops)
