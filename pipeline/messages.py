"""Typed messages that travel between stages, validated where they are built.

Every message is a frozen, slotted dataclass whose ``__post_init__`` checks shapes and dtypes
(supervision's ``Detections`` style), so a bad array fails at its producer with a message that says
what was expected, not three stages later. Arrays are made C-contiguous with the declared dtype
(a safe cast such as float64 -> float32 is allowed, a lossy one such as float -> uint8 image is not),
because the wire format ships their raw buffers as they are.

The wire encoding lives in :mod:`pipeline.wire`; this module only defines the types.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
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
    "TrackEnd",
    "Grades",
    "Restored",
    "Attributes",
    "Identities",
    "GRADE_NAMES",
    "Message",
    "DATA_TYPES",
    "CONTROL_TYPES",
    "array_field",
    "block_field",
]

SCHEMA_VERSION = 2  # 2: PersonCrops blocks (grades, restored, attributes, identities), TrackEnd

EosReason = Literal["finished", "error", "stopped"]

#: Occlusion grades as the grade stage writes them (OAMN eq. 8): 0 = holistic, then the grader's
#: location x area pairs. The one place these values are defined for sinks and users; the model side
#: builds the same order from ``models.reid.occlusion_augment.grade_index`` (a test keeps them equal).
GRADE_NAMES: tuple[str, ...] = (
    "holistic",
    "top-1/4",
    "top-1/2",
    "bottom-1/4",
    "bottom-1/2",
    "left-1/4",
    "left-1/2",
    "right-1/4",
    "right-1/2",
)


class MessageError(ValueError):
    """A message that cannot be built or decoded; the runtime counts it and drops it."""


def array_field(dtype: str, shape: tuple[int | None, ...], exact: bool = False) -> Any:
    """A dataclass field holding an array of ``dtype`` and ``shape`` (None = any length).

    The metadata is what validation and the wire format read (one table: the message definitions);
    ``exact`` refuses even a safe cast (image pixels must already be uint8).
    """
    return field(metadata={"array": (dtype, shape, exact)})


def block_field(block: type, optional: bool = True) -> Any:
    """A dataclass field holding a nested block (``Detections``, ``Grades``, ...), None by default."""
    if optional:
        return field(default=None, metadata={"block": block})
    return field(metadata={"block": block})


def _array(
    owner: str,
    name: str,
    value: Any,
    dtype: np.dtype | type | str,
    shape: tuple[int | None, ...],
    exact: bool = False,
) -> np.ndarray:
    """Check ``value`` against a shape pattern (None = any length) and return it C-contiguous in ``dtype``."""
    if not isinstance(value, np.ndarray):
        raise MessageError(f"{owner}.{name} must be a numpy array, got {type(value).__name__}")
    want = np.dtype(dtype)
    if exact and value.dtype != want:
        raise MessageError(f"{owner}.{name} must have dtype {want}, got {value.dtype}")
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


def _check_arrays(obj: object) -> None:
    """Validate (and normalise) every ``array_field`` of a message or block."""
    owner = type(obj).__name__
    for f in fields(obj):  # type: ignore[arg-type]
        spec = f.metadata.get("array")
        if spec is not None:
            dtype, shape, exact = spec
            _set(obj, f.name, _array(owner, f.name, getattr(obj, f.name), dtype, shape, exact))


def _check_blocks(obj: object) -> None:
    owner = type(obj).__name__
    for f in fields(obj):  # type: ignore[arg-type]
        block = f.metadata.get("block")
        value = getattr(obj, f.name)
        if block is not None and value is not None and not isinstance(value, block):
            raise MessageError(
                f"{owner}.{f.name} must be {block.__name__} or None, got {type(value).__name__}"
            )


def _same_length(owner: str, arrays: dict[str, np.ndarray]) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise MessageError(f"{owner} arrays must all have the same length N, got {shown}")


def _check_rows(owner: str, rows: np.ndarray, n: int) -> None:
    """A block's ``rows`` index the message's track rows: in range, strictly increasing."""
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise MessageError(f"{owner}.rows must index the {n} track rows (0..{n - 1}), got {rows.tolist()}")
    if len(rows) > 1 and not bool(np.all(np.diff(rows) > 0)):
        raise MessageError(f"{owner}.rows must be strictly increasing, got {rows.tolist()}")


@dataclass(frozen=True, slots=True)
class Detections:
    """Detector output for one frame: boxes in pixel xyxy of the full frame."""

    xyxy: np.ndarray = array_field("float32", (None, 4))
    confidence: np.ndarray = array_field("float32", (None,))
    class_id: np.ndarray = array_field("int32", (None,))

    def __post_init__(self) -> None:
        _check_arrays(self)
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

    track_id: np.ndarray = array_field("int64", (None,))
    xyxy: np.ndarray = array_field("float32", (None, 4))
    confidence: np.ndarray = array_field("float32", (None,))
    state: np.ndarray = array_field("uint8", (None,))  # of TrackState

    def __post_init__(self) -> None:
        _check_arrays(self)
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


# -- blocks the model stages add to PersonCrops (each indexes the track rows it covers) -----------
@dataclass(frozen=True, slots=True)
class Grades:
    """The grade stage's output for the rows it scheduled: the grader's four location scores (top,
    bottom, left, right; OAMN sec. 3.4), the eq. 8 grade (``GRADE_NAMES``), the ReID embedding of the
    same pass and the person's visible fraction (``visible``: 1 = fully visible, 0 = hidden), one per row."""

    rows: np.ndarray = array_field("int32", (None,))
    scores: np.ndarray = array_field("float32", (None, 4))
    grade: np.ndarray = array_field("uint8", (None,))
    embedding: np.ndarray = array_field("float32", (None, None))  # L2-normalised (K, D)
    visible: np.ndarray = array_field("float32", (None,))  # in [0, 1]

    def __post_init__(self) -> None:
        _check_arrays(self)
        _same_length(
            "Grades",
            {
                "rows": self.rows,
                "scores": self.scores,
                "grade": self.grade,
                "embedding": self.embedding,
                "visible": self.visible,
            },
        )
        if len(self.grade) and int(self.grade.max()) >= len(GRADE_NAMES):
            raise MessageError(
                f"Grades.grade values must be 0..{len(GRADE_NAMES) - 1}, got {int(self.grade.max())}"
            )
        if not np.all(np.isfinite(self.scores)) or not np.all(np.isfinite(self.embedding)):
            raise MessageError("Grades.scores and Grades.embedding must be finite")
        v = self.visible
        if len(v) and not (np.all(np.isfinite(v)) and v.min() >= 0 and v.max() <= 1):
            raise MessageError(
                f"Grades.visible must be finite fractions in [0, 1], got min {v.min()}, max {v.max()}"
            )

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, slots=True)
class Restored:
    """De-occluded crops for the rows the deocclude stage routed; the original crops stay as they are."""

    rows: np.ndarray = array_field("int32", (None,))
    crops: np.ndarray = array_field("uint8", (None, None, None, 3), exact=True)

    def __post_init__(self) -> None:
        _check_arrays(self)
        _same_length("Restored", {"rows": self.rows, "crops": self.crops})

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, slots=True)
class Attributes:
    """Attribute probabilities for the rows the describe stage ran on, and the per-track decisions
    of the rows whose track's decisions changed (``decision_rows``): 1 yes, 0 no, -1 undecided,
    with the track's aggregated probabilities. Columns follow ``names``."""

    names: tuple[str, ...]
    rows: np.ndarray = array_field("int32", (None,))
    probabilities: np.ndarray = array_field("float32", (None, None))
    decision_rows: np.ndarray = array_field("int32", (None,))
    decisions: np.ndarray = array_field("int8", (None, None))
    track_probabilities: np.ndarray = array_field("float32", (None, None))

    def __post_init__(self) -> None:
        names = tuple(self.names) if isinstance(self.names, list | tuple) else self.names
        if not isinstance(names, tuple) or not names or not all(isinstance(n, str) and n for n in names):
            raise MessageError(f"Attributes.names must be a non-empty list of strings, got {self.names!r}")
        _set(self, "names", names)
        _check_arrays(self)
        _same_length("Attributes", {"rows": self.rows, "probabilities": self.probabilities})
        _same_length(
            "Attributes",
            {
                "decision_rows": self.decision_rows,
                "decisions": self.decisions,
                "track_probabilities": self.track_probabilities,
            },
        )
        for name in ("probabilities", "decisions", "track_probabilities"):
            value = getattr(self, name)
            if value.shape[1] != len(names):
                raise MessageError(
                    f"Attributes.{name} must have one column per name ({len(names)}), got {value.shape[1]}"
                )
        for name in ("probabilities", "track_probabilities"):
            value = getattr(self, name)
            if value.size and not (np.all(np.isfinite(value)) and value.min() >= 0 and value.max() <= 1):
                raise MessageError(f"Attributes.{name} must be finite probabilities in [0, 1]")
        if self.decisions.size and (self.decisions.min() < -1 or self.decisions.max() > 1):
            raise MessageError("Attributes.decisions must be -1 (undecided), 0 or 1")


@dataclass(frozen=True, slots=True)
class Identities:
    """The identify stage's identity (shared by every stream of a graph) for rows of tracks that
    have one, with the match score that decided it (cosine similarity, unified; 1.0 = new)."""

    rows: np.ndarray = array_field("int32", (None,))
    identity: np.ndarray = array_field("int64", (None,))
    score: np.ndarray = array_field("float32", (None,))

    def __post_init__(self) -> None:
        _check_arrays(self)
        _same_length("Identities", {"rows": self.rows, "identity": self.identity, "score": self.score})
        if len(self.identity) and int(self.identity.min()) < 1:
            raise MessageError(f"Identities.identity values must be >= 1, got {int(self.identity.min())}")

    def __len__(self) -> int:
        return len(self.rows)


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
    image: np.ndarray = array_field("uint8", (None, None, 3), exact=True)  # BGR
    detections: Detections | None = block_field(Detections)
    tracks: Tracks | None = block_field(Tracks)

    def __post_init__(self) -> None:
        _check_stream("Frame", self.stream_id, self.seq)
        _check_times("Frame", self.pts, self.capture_time)
        _check_arrays(self)
        _check_blocks(self)

    def __repr__(self) -> str:
        dets = "None" if self.detections is None else len(self.detections)
        tracks = "None" if self.tracks is None else len(self.tracks)
        return (
            f"Frame(stream_id={self.stream_id!r}, seq={self.seq}, pts={self.pts}, image={self.image.shape}, "
            f"detections={dets}, tracks={tracks})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class PersonCrops:
    """What travels after the tracker: the tracks of one frame and a fixed-size crop per track.

    The model stages each add one block (``grades``, ``restored``, ``attributes``, ``identities``)
    with ``dataclasses.replace`` and never rewrite an earlier one; a block covers only the rows
    its stage scheduled (``rows`` index ``tracks``), so unscheduled tracks cost nothing.
    """

    stream_id: str
    seq: int
    pts: float | None
    capture_time: float
    frame_size: tuple[int, int]  # (h, w) of the full frame the boxes refer to
    tracks: Tracks = block_field(Tracks, optional=False)
    crops: np.ndarray = array_field("uint8", (None, None, None, 3), exact=True)
    grades: Grades | None = block_field(Grades)
    restored: Restored | None = block_field(Restored)
    attributes: Attributes | None = block_field(Attributes)
    identities: Identities | None = block_field(Identities)

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
        _check_arrays(self)
        _check_blocks(self)
        n = len(self.tracks)
        if len(self.crops) != n:
            raise MessageError(
                f"PersonCrops.crops must have one crop per track: {n} tracks, {len(self.crops)} crops"
            )
        for name in ("grades", "restored", "attributes", "identities"):
            block = getattr(self, name)
            if block is not None:
                _check_rows(f"PersonCrops.{name}", block.rows, n)
        if self.attributes is not None:
            _check_rows("PersonCrops.attributes.decision", self.attributes.decision_rows, n)
        if self.restored is not None and self.restored.crops.shape[1:] != self.crops.shape[1:]:
            raise MessageError(
                f"PersonCrops.restored.crops must have the crops' size {self.crops.shape[1:]}, "
                f"got {self.restored.crops.shape[1:]}"
            )

    def __repr__(self) -> str:
        names = ("grades", "restored", "attributes", "identities")
        blocks = [n for n in names if getattr(self, n) is not None]
        return (
            f"PersonCrops(stream_id={self.stream_id!r}, seq={self.seq}, pts={self.pts}, "
            f"tracks={self.tracks.track_id.tolist()}, crops={self.crops.shape}, blocks={blocks})"
        )


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The last message of a stream; the runtime forwards it after the stage's final outputs."""

    stream_id: str
    reason: EosReason
    detail: str = ""
    #: messages of this stream lost for good on the way (a drop_oldest link whose receiver was
    #: restarted: pipeline.delivery); each stage adds its own before sending it on
    lost: int = 0

    def __post_init__(self) -> None:
        _check_stream("EndOfStream", self.stream_id)
        if isinstance(self.lost, bool) or not isinstance(self.lost, int | np.integer) or self.lost < 0:
            raise MessageError(f"EndOfStream.lost must be an integer >= 0, got {self.lost!r}")
        if self.reason not in get_args(EosReason):
            raise MessageError(
                f"EndOfStream.reason must be one of {get_args(EosReason)}, got {self.reason!r}"
            )
        if not isinstance(self.detail, str):
            raise MessageError(f"EndOfStream.detail must be a string, got {type(self.detail).__name__}")


@dataclass(frozen=True, slots=True, repr=False)
class TrackEnd:
    """Control: these tracks of a stream ended at frame ``seq``. Never dropped (a ``drop_oldest`` link
    evicts data only), so every stage that keeps per-track state frees it.

    The tracker sends it after the frame whose rows say ENDED. A stage that accepts it may answer with
    its own TrackEnd carrying its final word (``attributes``: the tracks' final decisions;
    ``identities``: their final identity; ``rows`` index ``track_id``), which then replaces the one it
    received; otherwise the runtime forwards the received one. It can arrive once per input path
    (fan-in), so handling it must be idempotent.
    """

    stream_id: str
    seq: int
    capture_time: float
    track_id: np.ndarray = array_field("int64", (None,))
    attributes: Attributes | None = block_field(Attributes)
    identities: Identities | None = block_field(Identities)

    def __post_init__(self) -> None:
        _check_stream("TrackEnd", self.stream_id, self.seq)
        _check_times("TrackEnd", None, self.capture_time)
        _check_arrays(self)
        _check_blocks(self)
        n = len(self.track_id)
        for name in ("attributes", "identities"):
            block = getattr(self, name)
            if block is not None:
                _check_rows(f"TrackEnd.{name}", block.rows, n)
        if self.attributes is not None:
            _check_rows("TrackEnd.attributes.decision", self.attributes.decision_rows, n)

    def __repr__(self) -> str:
        return f"TrackEnd(stream_id={self.stream_id!r}, seq={self.seq}, track_id={self.track_id.tolist()})"


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


Message = Frame | PersonCrops | EndOfStream | TrackEnd

# Messages that carry data (may be dropped by a drop_oldest link); control messages never are.
DATA_TYPES: tuple[type, ...] = (Frame, PersonCrops)
#: Control messages every link carries, whatever its downstream accepts (never dropped).
CONTROL_TYPES: tuple[type, ...] = (EndOfStream, StageDone, TrackEnd)
