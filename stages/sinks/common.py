"""Helpers shared by the sinks: output paths, the JSON shape of a frame's tracks and of a TrackEnd,
the model blocks of a PersonCrops read per row, and bounded per-track state.

Per-track state in a sink lives in a :class:`TrackTable`: freed when the track ends (TrackEnd) or its
stream ends (EndOfStream), and dropped when a track has not been seen for ``idle_s`` of its stream's
capture time, so a camera that runs for weeks keeps a bounded amount of state even when a TrackEnd
never arrives (a stage restarted in between, a graph without a tracker upstream that sends them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from pipeline.messages import GRADE_NAMES, Attributes, PersonCrops, TrackEnd, TrackState
from pipeline.stage import StageContext

__all__ = [
    "WrittenBefore",
    "output_path",
    "under",
    "safe_name",
    "state_name",
    "grade_name",
    "row_index",
    "final_identities",
    "RowBlocks",
    "tracks_record",
    "track_end_record",
    "TrackTable",
    "TrackEndDedup",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

V = TypeVar("V")


def under(output_dir: Path, path: str | Path) -> Path:
    """``path`` resolved as a sink resolves it (relative paths live under ``output_dir``), created
    nowhere."""
    path = Path(path)
    return path if path.is_absolute() else Path(output_dir) / path


def output_path(context: StageContext, path: str | Path, directory: bool = False) -> Path:
    """Resolve a sink's output path and create the folder it needs.

    A relative path lives under the graph's ``output_dir`` (``amodal replay --out``); for a
    ``directory`` the folder itself is created, for a file its parent.
    """
    path = under(context.output_dir, path)
    (path if directory else path.parent).mkdir(parents=True, exist_ok=True)
    return path


def safe_name(stream_id: str) -> str:
    """A stream id made safe for a file name (ids are already restricted; this guards the rest)."""
    return _UNSAFE.sub("_", stream_id).strip("._") or "stream"


def state_name(value: int) -> str:
    return TrackState(int(value)).name.lower()


def grade_name(grade: int | None) -> str | None:
    """The name of an occlusion grade (``pipeline.messages.GRADE_NAMES``), None for None."""
    return None if grade is None else GRADE_NAMES[int(grade)]


def row_index(rows: np.ndarray) -> dict[int, int]:
    """A block's ``rows`` as {track row: index into the block's arrays}."""
    return {int(r): i for i, r in enumerate(rows.tolist())}


def _decision(value: int) -> bool | None:
    return None if value < 0 else bool(value)


@dataclass(frozen=True, slots=True)
class RowBlocks:
    """The model blocks of one PersonCrops read per track row (each dict is keyed by row)."""

    grade: dict[int, int]
    visible: dict[int, float]  # row -> visible fraction of the graded person (0..1)
    restored: dict[int, int]  # row -> index into restored.crops
    identity: dict[int, tuple[int, float]]  # row -> (identity, score)
    decisions: dict[int, int]  # row -> index into attributes.decisions
    attributes: Attributes | None
    labelled: bool  # a model stage added a block (even an empty one); a tracker's PersonCrops has none

    @classmethod
    def of(cls, message: PersonCrops) -> RowBlocks:
        grades, restored, identities, attributes = (
            message.grades,
            message.restored,
            message.identities,
            message.attributes,
        )
        grade, visible, identity = {}, {}, {}
        if grades is not None:
            grade = dict(zip(grades.rows.tolist(), grades.grade.tolist(), strict=True))
            visible = dict(zip(grades.rows.tolist(), grades.visible.tolist(), strict=True))
        if identities is not None:
            identity = {
                int(r): (int(k), float(s))
                for r, k, s in zip(identities.rows, identities.identity, identities.score, strict=True)
            }
        return cls(
            grade=grade,
            visible=visible,
            restored={} if restored is None else row_index(restored.rows),
            identity=identity,
            decisions={} if attributes is None else row_index(attributes.decision_rows),
            attributes=attributes,
            labelled=any(b is not None for b in (grades, restored, identities, attributes)),
        )

    def decided(self, row: int) -> dict[str, bool | None] | None:
        """The row's track decisions (name -> True/False/None) if they changed in this frame."""
        index = self.decisions.get(row)
        if index is None or self.attributes is None:
            return None
        values = self.attributes.decisions[index].tolist()
        return {name: _decision(v) for name, v in zip(self.attributes.names, values, strict=True)}

    def positive(self, row: int) -> tuple[str, ...] | None:
        """Names decided 1 for the row's track, most probable first, if its decisions changed here."""
        index = self.decisions.get(row)
        if index is None or self.attributes is None:
            return None
        decisions = self.attributes.decisions[index]
        probabilities = self.attributes.track_probabilities[index]
        order = np.argsort(-probabilities, kind="stable")
        return tuple(self.attributes.names[j] for j in order.tolist() if decisions[j] == 1)


def tracks_record(message: PersonCrops) -> dict[str, Any]:
    """The JSON-able event for one frame's tracks (JSONL line, PUB header).

    Each track: ``track_id``, ``xyxy``, ``confidence``, ``state``; and only when a model stage said
    so for this row (absent otherwise, to keep lines short): ``grade`` + ``grade_name`` + ``visible``
    (graded in this frame; ``visible``: the person's visible fraction, 0..1, 3 decimals),
    ``restored: true`` (a de-occluded crop was made), ``identity`` + ``identity_score``, ``attributes``
    ({name: true/false/null}; only in frames where the track's decisions changed).
    """
    tracks = message.tracks
    blocks = RowBlocks.of(message)
    entries = []
    for i in range(len(tracks)):
        entry: dict[str, Any] = {
            "track_id": int(tracks.track_id[i]),
            "xyxy": [round(float(v), 2) for v in tracks.xyxy[i]],
            "confidence": round(float(tracks.confidence[i]), 4),
            "state": state_name(tracks.state[i]),
        }
        grade = blocks.grade.get(i)
        if grade is not None:
            entry["grade"] = int(grade)
            entry["grade_name"] = grade_name(grade)
            entry["visible"] = round(blocks.visible[i], 3)
        if i in blocks.restored:
            entry["restored"] = True
        identity = blocks.identity.get(i)
        if identity is not None:
            entry["identity"] = identity[0]
            entry["identity_score"] = round(identity[1], 4)
        decided = blocks.decided(i)
        if decided is not None:
            entry["attributes"] = decided
        entries.append(entry)
    return {
        "type": "tracks",
        "stream_id": message.stream_id,
        "seq": message.seq,
        "pts": message.pts,
        "capture_time": message.capture_time,
        "frame_size": list(message.frame_size),
        "tracks": entries,
    }


def final_identities(message: TrackEnd) -> dict[int, int]:
    """{index into ``message.track_id``: final identity} of a TrackEnd."""
    block = message.identities
    return {} if block is None else dict(zip(block.rows.tolist(), block.identity.tolist(), strict=True))


def track_end_record(message: TrackEnd, indices: list[int] | None = None) -> dict[str, Any]:
    """The JSON-able event for ended tracks (all of them, or the rows ``indices`` of ``track_id``).

    ``{"type": "track_end", "stream_id", "seq", "capture_time", "tracks": [{"track_id", "identity",
    "attributes": {name: {"decision": true/false/null, "probability": p}}}]}``; ``identity`` is null
    and ``attributes`` absent when the TrackEnd carries no final word for that track.
    """
    identities = final_identities(message)
    attributes = message.attributes
    decision_index = {} if attributes is None else row_index(attributes.decision_rows)
    entries = []
    for i in range(len(message.track_id)) if indices is None else indices:
        entry: dict[str, Any] = {"track_id": int(message.track_id[i]), "identity": identities.get(i)}
        j = decision_index.get(i)
        if attributes is not None and j is not None:
            entry["attributes"] = {
                name: {"decision": _decision(int(d)), "probability": round(float(p), 4)}
                for name, d, p in zip(
                    attributes.names, attributes.decisions[j], attributes.track_probabilities[j], strict=True
                )
            }
        entries.append(entry)
    return {
        "type": "track_end",
        "stream_id": message.stream_id,
        "seq": message.seq,
        "capture_time": message.capture_time,
        "tracks": entries,
    }


class TrackTable(Generic[V]):
    """Per-(stream, track) values with an idle expiry in capture time.

    ``put``/``touch`` mark a track seen at a capture time; ``expire(stream, now)`` (cheap: it sweeps a
    stream at most every ``idle_s / 4``) drops that stream's tracks not seen for ``idle_s``; ``pop``
    and ``pop_stream`` free a track or a whole stream (TrackEnd, EndOfStream).
    """

    def __init__(self, idle_s: float) -> None:
        if not idle_s > 0:
            raise ValueError(f"idle_s must be > 0, got {idle_s}")
        self.idle_s = float(idle_s)
        self._streams: dict[str, dict[int, list[Any]]] = {}  # stream -> track -> [value, last_seen]
        self._swept: dict[str, float] = {}

    def get(self, stream_id: str, track_id: int) -> V | None:
        entry = self._streams.get(stream_id, {}).get(track_id)
        return None if entry is None else entry[0]

    def put(self, stream_id: str, track_id: int, value: V, now: float) -> None:
        self._streams.setdefault(stream_id, {})[track_id] = [value, now]

    def touch(self, stream_id: str, track_id: int, now: float) -> None:
        entry = self._streams.get(stream_id, {}).get(track_id)
        if entry is not None:
            entry[1] = max(entry[1], now)

    def pop(self, stream_id: str, track_id: int) -> V | None:
        tracks = self._streams.get(stream_id)
        entry = None if tracks is None else tracks.pop(track_id, None)
        if tracks is not None and not tracks:
            del self._streams[stream_id]
        return None if entry is None else entry[0]

    def pop_stream(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)
        self._swept.pop(stream_id, None)

    def expire(self, stream_id: str, now: float) -> int:
        """Drop the stream's tracks idle for more than ``idle_s`` at capture time ``now``; how many."""
        last = self._swept.get(stream_id)
        if last is not None and now - last < self.idle_s / 4:
            return 0
        self._swept[stream_id] = now
        tracks = self._streams.get(stream_id)
        if not tracks:
            return 0
        stale = [t for t, (_, seen) in tracks.items() if now - seen > self.idle_s]
        for track_id in stale:
            del tracks[track_id]
        if not tracks:
            del self._streams[stream_id]
        return len(stale)

    def items(self, stream_id: str) -> Iterator[tuple[int, V]]:
        for track_id, (value, _) in self._streams.get(stream_id, {}).items():
            yield track_id, value

    def __len__(self) -> int:
        return sum(len(t) for t in self._streams.values())


class WrittenBefore:
    """What an earlier process of this sink wrote in the same run, per stream: the last frame number and
    how many messages of that frame. A restarted sink is sent again what it had not acknowledged
    (pipeline.delivery); ``again`` says which of those it already holds, once each, so nothing is
    written twice. Frames only grow per stream, so the first newer one ends the check for its stream.
    """

    def __init__(self, written: dict[str, tuple[int, int]]) -> None:
        self._left = {stream: [last, count] for stream, (last, count) in written.items()}

    def __bool__(self) -> bool:
        return bool(self._left)

    def __len__(self) -> int:
        return len(self._left)

    def again(self, stream_id: str, seq: int) -> bool:
        left = self._left.get(stream_id)
        if left is None:
            return False
        if seq < left[0] or (seq == left[0] and left[1] > 0):
            left[1] -= seq == left[0]
            return True
        del self._left[stream_id]  # past what was written: from here on everything is new
        return False


class TrackEndDedup:
    """Which tracks of a TrackEnd are worth reporting: a TrackEnd can arrive once per input path
    (fan-in), first bare from the tracker, later with the model stages' final word. A track is
    reported the first time, and again only when the new TrackEnd adds what was not reported yet
    (an identity, final attributes); readers keep the last ``track_end`` per track."""

    _IDENTITY, _ATTRIBUTES, _REPORTED = 1, 2, 4

    def __init__(self, idle_s: float) -> None:
        self._seen: TrackTable[int] = TrackTable(idle_s)

    def fresh(self, message: TrackEnd) -> list[int]:
        identity_rows = final_identities(message)
        attribute_rows = {} if message.attributes is None else row_index(message.attributes.decision_rows)
        stream, now = message.stream_id, message.capture_time
        self._seen.expire(stream, now)
        out = []
        for i, track_id in enumerate(message.track_id.tolist()):
            flags = (
                self._REPORTED
                | (self._IDENTITY if i in identity_rows else 0)
                | (self._ATTRIBUTES if i in attribute_rows else 0)
            )
            before = self._seen.get(stream, track_id) or 0
            if flags & ~before:
                out.append(i)
                self._seen.put(stream, track_id, before | flags, now)
        return out

    def end_stream(self, stream_id: str) -> None:
        self._seen.pop_stream(stream_id)
