"""SQLite event store: the embedded default sink for tracks.

Schema (created if missing; one file can collect many runs; a file made by an older version is
upgraded in place by adding the missing columns):

* ``streams(stream_id PK, first_seen, last_seen, frames, frame_height, frame_width, ended_reason,
  ended_detail, lost)``; ``lost``: messages of the stream lost for good on the way (pipeline.delivery)
* ``tracks(id PK, stream_id, session, track_id, first_seen, last_seen, first_seq, last_seq,
  observations, state, identity)``: one row per track; ``session`` identifies this sink's run, because a
  tracker restarts its ids at 1 after a restart. ``state`` is the last reported state, ``'ended'`` once
  the track's ENDED row or its TrackEnd arrived. ``identity`` is NULL until the identify stage assigns
  one, updated when it changes, and finally set from the TrackEnd's identities. Index
  ``tracks_by_stream_time(stream_id, first_seen, last_seen)`` answers "tracks of stream X between t1 and
  t2": ``SELECT * FROM tracks WHERE stream_id=? AND first_seen <= :t2 AND last_seen >= :t1``; index
  ``tracks_by_identity(identity)`` answers "streams and tracks of identity X":
  ``SELECT stream_id, track_id, session, first_seen, last_seen FROM tracks WHERE identity=?``.
* ``observations(track -> tracks.id, stream_id, seq, pts, capture_time, x1, y1, x2, y2, confidence,
  state, grade, visible, restored, identity)``: every track row of every frame; ``grade`` is the
  occlusion grade when the row was graded in that frame (an index into ``pipeline.messages.GRADE_NAMES``:
  0 = holistic, 1 = top-1/4, ... ; NULL = not graded), ``visible`` the person's visible fraction from
  the same grading (0..1; NULL = not graded), ``restored`` 1 when a de-occluded crop was made for the row,
  ``identity`` the identity reported for that row (NULL if none). Indices by track and by
  (stream_id, capture_time).
* ``identities(id PK, first_seen, last_seen, tracks)``: every identity seen: capture times of its
  first and last observation and how many tracks (of any stream and session) hold it now.
  Identity numbers are the identify stage's; they are only comparable across runs if its gallery is.
* ``track_attributes(track -> tracks.id, name, probability, decision)``, PK ``(track, name)``: the
  track's aggregated attribute probability and decision (1 yes, 0 no, NULL undecided), upserted when
  the track's decisions change and finally from the TrackEnd's attributes.

* ``sink_progress(session, stream_id, last_seq, at_last)``: the last frame number this session committed
  per stream and how many messages of that frame: written in the same transaction as the frame, so a
  sink process restarted in the same run (process mode, ``session`` = the run id) skips exactly what
  it had already committed when its upstream sends it again (pipeline.delivery): every frame is in
  the database once.

Times are ``capture_time`` (wall clock seconds; for replay, start time + pts). Durability: WAL
journal, writes grouped in transactions of ``batch_size`` messages (or ``commit_interval_s``), a
commit at every EndOfStream and in ``on_stop``; ``events_committed`` is only counted after the
commit returned, so an event is never reported done before it is on disk. A SIGINT drains the
graph into ``on_stop``, so the file is always left consistent (and WAL recovers a killed process).
Per-track state (the tracks row id and identity) is freed at TrackEnd / EndOfStream and after
``track_idle_s`` of capture time without the track; a track seen again is found by its unique key.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import Attributes, EndOfStream, PersonCrops, TrackEnd
from pipeline.registry import register_stage
from pipeline.stage import Stage
from stages.sinks.common import (
    RowBlocks,
    TrackTable,
    WrittenBefore,
    final_identities,
    output_path,
    row_index,
    state_name,
    under,
)

__all__ = ["SqliteSink", "SqliteSinkConfig", "SCHEMA", "IDENTITY_TRACKS_QUERY"]

TABLES = """
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    frames INTEGER NOT NULL DEFAULT 0,
    frame_height INTEGER,
    frame_width INTEGER,
    ended_reason TEXT,
    ended_detail TEXT,
    lost INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tracks (
    id INTEGER PRIMARY KEY,
    stream_id TEXT NOT NULL REFERENCES streams(stream_id),
    session TEXT NOT NULL,
    track_id INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    observations INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    identity INTEGER,
    UNIQUE (stream_id, session, track_id)
);
CREATE TABLE IF NOT EXISTS observations (
    track INTEGER NOT NULL REFERENCES tracks(id),
    stream_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    pts REAL,
    capture_time REAL NOT NULL,
    x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
    confidence REAL NOT NULL,
    state TEXT NOT NULL,
    grade INTEGER,
    visible REAL,
    restored INTEGER NOT NULL DEFAULT 0,
    identity INTEGER
);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    tracks INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sink_progress (
    session TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    at_last INTEGER NOT NULL,
    PRIMARY KEY (session, stream_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS track_attributes (
    track INTEGER NOT NULL REFERENCES tracks(id),
    name TEXT NOT NULL,
    probability REAL,
    decision INTEGER,
    PRIMARY KEY (track, name)
) WITHOUT ROWID;
"""

#: Columns added since the first schema: ``ALTER TABLE ... ADD COLUMN`` when an older file lacks them.
ADDED_COLUMNS: dict[str, dict[str, str]] = {
    "streams": {"lost": "INTEGER NOT NULL DEFAULT 0"},
    "tracks": {"identity": "INTEGER"},
    "observations": {
        "grade": "INTEGER",
        "restored": "INTEGER NOT NULL DEFAULT 0",
        "identity": "INTEGER",
        "visible": "REAL",
    },
}

INDICES = """
CREATE INDEX IF NOT EXISTS tracks_by_stream_time ON tracks (stream_id, first_seen, last_seen);
CREATE INDEX IF NOT EXISTS tracks_by_identity ON tracks (identity);
CREATE INDEX IF NOT EXISTS observations_by_track ON observations (track, seq);
CREATE INDEX IF NOT EXISTS observations_by_stream_time ON observations (stream_id, capture_time);
"""

SCHEMA = TABLES + INDICES

#: "Streams and tracks of identity X" (index ``tracks_by_identity``).
IDENTITY_TRACKS_QUERY = (
    "SELECT stream_id, track_id, session, first_seen, last_seen FROM tracks WHERE identity=? "
    "ORDER BY first_seen"
)

_INSERT_OBSERVATION = (
    "INSERT INTO observations (track, stream_id, seq, pts, capture_time, x1, y1, x2, y2, confidence, state, "
    "grade, visible, restored, identity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_IDENTITY = (
    "INSERT INTO identities (id, first_seen, last_seen, tracks) VALUES (?, ?, ?, 0) "
    "ON CONFLICT(id) DO UPDATE SET first_seen=min(first_seen, excluded.first_seen), "
    "last_seen=max(last_seen, excluded.last_seen)"
)
_UPSERT_ATTRIBUTE = (
    "INSERT INTO track_attributes (track, name, probability, decision) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(track, name) DO UPDATE SET probability=excluded.probability, decision=excluded.decision"
)


def upgrade_schema(db: sqlite3.Connection) -> list[str]:
    """Create missing tables, add missing columns to tables of an older schema, create indices.

    Returns the ``table.column`` names added. Runs in one immediate transaction, so two sinks opening
    the same old file do not both add a column.
    """
    db.executescript(TABLES)
    added = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, columns in ADDED_COLUMNS.items():
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for name, declaration in columns.items():
                if name not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
                    added.append(f"{table}.{name}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.executescript(INDICES)
    return added


class SqliteSinkConfig(BaseModel):
    """Where and how durably the events are stored."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field("events.db", description="Database file; relative paths are under output_dir.")
    batch_size: int = Field(64, ge=1, le=100_000, description="Messages (frames) per transaction.")
    commit_interval_s: float = Field(1.0, gt=0, description="Commit at least this often while frames flow.")
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "FULL",
        description="FULL: a commit survives power loss (fsync per transaction); NORMAL: survives a crash "
        "of the process only, faster on slow disks.",
    )
    track_idle_s: float = Field(
        300.0,
        gt=0,
        description="Forget a track's cached row after this much capture time without it (bounded memory "
        "when a TrackEnd is missed); it is found again by its key if it comes back.",
    )


@dataclass(slots=True)
class _TrackRow:
    id: int
    identity: int | None


@register_stage("sqlite_sink")
class SqliteSink(Stage):
    """Writes streams, tracks, observations, identities and track attributes to SQLite in batches."""

    Config: ClassVar[type[BaseModel]] = SqliteSinkConfig
    accepts: ClassVar[tuple[type, ...]] = (PersonCrops, TrackEnd)
    emits: ClassVar[tuple[type, ...] | None] = ()

    @classmethod
    def output_files(cls, config: Any, output_dir: Path) -> list[Path]:
        path = under(output_dir, config.path)
        return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]

    def on_start(self) -> None:
        path = output_path(self.context, self.config.path)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={self.config.synchronous}")
        added = upgrade_schema(self._db)
        if added:
            self.context.logger.info("sqlite_sink upgraded %s: added %s", path, ", ".join(added))
        # one session per run: a restarted sink process of the same run continues it
        self.session = self.context.run.run_id or (
            time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        )
        self._committed = WrittenBefore(
            {
                stream: (last, at_last)
                for stream, last, at_last in self._db.execute(
                    "SELECT stream_id, last_seq, at_last FROM sink_progress WHERE session=?", (self.session,)
                )
            }
        )
        if self._committed:
            self.context.logger.info(
                "sqlite_sink continues session %s (%d streams already committed)",
                self.session,
                len(self._committed),
            )
        self._tracks: TrackTable[_TrackRow] = TrackTable(self.config.track_idle_s)
        self._last_seq: dict[str, int] = {}
        self._pending = 0
        self._last_commit = time.monotonic()
        self._in_tx = False

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        """Commit the open transaction; only then count its frames as committed."""
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False
            if self._pending:
                self.context.count("events_committed", self._pending)
        self._pending = 0
        self._last_commit = time.monotonic()

    def flush(self) -> None:
        """Commit: the runtime acknowledges the messages upstream only after this (pipeline.delivery)."""
        self.commit()

    def process(self, message: Any) -> Iterable[Any]:
        if isinstance(message, PersonCrops) and self._committed.again(message.stream_id, message.seq):
            return ()  # this session committed it before a restart (exactly once)
        self._begin()
        if isinstance(message, EndOfStream):
            # a stream that never sent a frame (a file that cannot be opened) still gets its row
            now = time.time()
            self._db.execute(
                "INSERT INTO streams (stream_id, first_seen, last_seen, frames, ended_reason, ended_detail, "
                "lost) VALUES (?, ?, ?, 0, ?, ?, ?) ON CONFLICT(stream_id) DO UPDATE SET "
                "ended_reason=excluded.ended_reason, ended_detail=excluded.ended_detail, lost=excluded.lost",
                (message.stream_id, now, now, message.reason, message.detail, message.lost),
            )
            # every track of the stream ends with it, also those a restarted tracker never ended
            self._db.execute(
                "UPDATE tracks SET state='ended' WHERE stream_id=? AND session=? AND state != 'ended'",
                (message.stream_id, self.session),
            )
            self.commit()
            self._tracks.pop_stream(message.stream_id)
            self._last_seq.pop(message.stream_id, None)
            return ()
        if isinstance(message, TrackEnd):
            self._end_tracks(message)
        else:
            self._write(message)
            self._pending += 1
        if (
            self._pending >= self.config.batch_size
            or time.monotonic() - self._last_commit >= self.config.commit_interval_s
        ):
            self.commit()
        return ()

    # -- tracks -------------------------------------------------------------------------------
    def _find(self, stream_id: str, track_id: int) -> _TrackRow | None:
        """The cached row of a track, or the one this session already wrote (after expiry or TrackEnd)."""
        row = self._tracks.get(stream_id, track_id)
        if row is None:
            found = self._db.execute(
                "SELECT id, identity FROM tracks WHERE stream_id=? AND session=? AND track_id=?",
                (stream_id, self.session, track_id),
            ).fetchone()
            if found is not None:
                row = _TrackRow(found[0], found[1])
        return row

    def _set_identity(self, row: _TrackRow, identity: int, t0: float, t1: float) -> None:
        """Record ``identity`` as seen from t0 to t1 and, if it is the track's new one, move the track."""
        db = self._db
        db.execute(_UPSERT_IDENTITY, (identity, t0, t1))
        if row.identity == identity:
            return
        if row.identity is not None:
            db.execute("UPDATE identities SET tracks=max(tracks-1, 0) WHERE id=?", (row.identity,))
        db.execute("UPDATE identities SET tracks=tracks+1 WHERE id=?", (identity,))
        db.execute("UPDATE tracks SET identity=? WHERE id=?", (identity, row.id))
        row.identity = identity

    def _upsert_attributes(self, row_id: int, attributes: Attributes, index: int) -> None:
        decisions = attributes.decisions[index].tolist()
        probabilities = attributes.track_probabilities[index].tolist()
        self._db.executemany(
            _UPSERT_ATTRIBUTE,
            [
                (row_id, name, float(p), None if d < 0 else int(d))
                for name, d, p in zip(attributes.names, decisions, probabilities, strict=True)
            ],
        )

    def _write(self, msg: PersonCrops) -> None:
        db = self._db
        t = msg.capture_time
        stream = msg.stream_id
        self._tracks.expire(stream, t)
        # A tracker may send a second message for a frame (tracks ended at end of stream): count frames once.
        new_frame = int(self._last_seq.get(stream, -1) != msg.seq)
        self._last_seq[stream] = msg.seq
        db.execute(
            "INSERT INTO sink_progress (session, stream_id, last_seq, at_last) VALUES (?, ?, ?, 1) "
            "ON CONFLICT(session, stream_id) DO UPDATE SET at_last=CASE WHEN last_seq=excluded.last_seq "
            "THEN at_last+1 ELSE 1 END, last_seq=excluded.last_seq",
            (self.session, stream, msg.seq),
        )
        db.execute(
            "INSERT INTO streams (stream_id, first_seen, last_seen, frames, frame_height, frame_width) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(stream_id) DO UPDATE SET last_seen=excluded.last_seen, "
            "frames=frames+excluded.frames, frame_height=excluded.frame_height, "
            "frame_width=excluded.frame_width, ended_reason=NULL, ended_detail=NULL",
            (stream, t, t, new_frame, msg.frame_size[0], msg.frame_size[1]),
        )
        tracks = msg.tracks
        blocks = RowBlocks.of(msg)
        rows = []
        for i in range(len(tracks)):
            track_id = int(tracks.track_id[i])
            state = state_name(tracks.state[i])
            row = self._find(stream, track_id)
            if row is None:
                row_id = db.execute(
                    "INSERT INTO tracks (stream_id, session, track_id, first_seen, last_seen, first_seq, "
                    "last_seq, observations, state) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?) RETURNING id",
                    (stream, self.session, track_id, t, t, msg.seq, msg.seq, state),
                ).fetchone()[0]
                row = _TrackRow(row_id, None)
            else:
                # monotone: a late message (fan-in) neither moves the track back nor reopens an ended one
                db.execute(
                    "UPDATE tracks SET last_seen=max(last_seen, ?), last_seq=max(last_seq, ?), "
                    "observations=observations+1, "
                    "state=CASE WHEN state='ended' OR last_seq > ? THEN state ELSE ? END WHERE id=?",
                    (t, msg.seq, msg.seq, state, row.id),
                )
            self._tracks.put(stream, track_id, row, t)
            identity = blocks.identity.get(i)
            if identity is not None:
                self._set_identity(row, identity[0], t, t)
            index = blocks.decisions.get(i)
            if index is not None and blocks.attributes is not None:
                self._upsert_attributes(row.id, blocks.attributes, index)
            x1, y1, x2, y2 = (float(v) for v in tracks.xyxy[i])
            grade = blocks.grade.get(i)
            rows.append(
                (
                    row.id,
                    stream,
                    msg.seq,
                    msg.pts,
                    t,
                    x1,
                    y1,
                    x2,
                    y2,
                    float(tracks.confidence[i]),
                    state,
                    grade,
                    blocks.visible.get(i),
                    int(i in blocks.restored),
                    None if identity is None else identity[0],
                )
            )
        if rows:
            db.executemany(_INSERT_OBSERVATION, rows)

    def _end_tracks(self, end: TrackEnd) -> None:
        """Mark the tracks ended (even if their ENDED row was dropped), store their final identity and
        attribute decisions, and free their state. Idempotent: a second TrackEnd rewrites the same."""
        identities = final_identities(end)
        decisions = {} if end.attributes is None else row_index(end.attributes.decision_rows)
        for i, track_id in enumerate(end.track_id.tolist()):
            row = self._find(end.stream_id, track_id)
            if row is None:  # never observed here (every frame of it dropped): nothing to end
                continue
            self._db.execute("UPDATE tracks SET state='ended' WHERE id=?", (row.id,))
            identity = identities.get(i)
            if identity is not None:
                first, last = self._db.execute(
                    "SELECT first_seen, last_seen FROM tracks WHERE id=?", (row.id,)
                ).fetchone()
                self._set_identity(row, identity, first, last)
            j = decisions.get(i)
            if j is not None and end.attributes is not None:
                self._upsert_attributes(row.id, end.attributes, j)
            self._tracks.pop(end.stream_id, track_id)

    def on_stop(self) -> Iterable[Any]:
        self.commit()
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        return ()
