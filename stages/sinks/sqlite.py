"""SQLite event store: the embedded default sink for tracks.

Schema (created if missing; one file can collect many runs):

* ``streams(stream_id PK, first_seen, last_seen, frames, frame_height, frame_width, ended_reason,
  ended_detail)``
* ``tracks(id PK, stream_id, session, track_id, first_seen, last_seen, first_seq, last_seq,
  observations, state)``: one row per track; ``session`` identifies this sink's run, because a
  tracker restarts its ids at 1 after a restart. Index ``tracks_by_stream_time(stream_id, first_seen,
  last_seen)`` answers "tracks of stream X between t1 and t2":
  ``SELECT * FROM tracks WHERE stream_id=? AND first_seen <= :t2 AND last_seen >= :t1``.
* ``observations(track -> tracks.id, stream_id, seq, pts, capture_time, x1, y1, x2, y2, confidence,
  state)``: every track row of every frame; indices by track and by (stream_id, capture_time).

Times are ``capture_time`` (wall clock seconds; for replay, start time + pts). Durability: WAL
journal, writes grouped in transactions of ``batch_size`` messages (or ``commit_interval_s``), a
commit at every EndOfStream and in ``on_stop``; ``events_committed`` is only counted after the
commit returned, so an event is never reported done before it is on disk. A SIGINT drains the
graph into ``on_stop``, so the file is always left consistent (and WAL recovers a killed process).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import EndOfStream, PersonCrops
from pipeline.registry import register_stage
from pipeline.stage import Stage
from stages.sinks.common import output_path, state_name

__all__ = ["SqliteSink", "SqliteSinkConfig", "SCHEMA"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    frames INTEGER NOT NULL DEFAULT 0,
    frame_height INTEGER,
    frame_width INTEGER,
    ended_reason TEXT,
    ended_detail TEXT
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
    UNIQUE (stream_id, session, track_id)
);
CREATE INDEX IF NOT EXISTS tracks_by_stream_time ON tracks (stream_id, first_seen, last_seen);
CREATE TABLE IF NOT EXISTS observations (
    track INTEGER NOT NULL REFERENCES tracks(id),
    stream_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    pts REAL,
    capture_time REAL NOT NULL,
    x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
    confidence REAL NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS observations_by_track ON observations (track, seq);
CREATE INDEX IF NOT EXISTS observations_by_stream_time ON observations (stream_id, capture_time);
"""


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


@register_stage("sqlite_sink")
class SqliteSink(Stage):
    """Writes streams, tracks and observations to SQLite in batched transactions."""

    Config: ClassVar[type[BaseModel]] = SqliteSinkConfig
    accepts: ClassVar[tuple[type, ...]] = (PersonCrops,)
    emits: ClassVar[tuple[type, ...] | None] = ()

    def on_start(self) -> None:
        path = output_path(self.context, self.config.path)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={self.config.synchronous}")
        self._db.executescript(SCHEMA)
        self.session = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        self._track_rows: dict[tuple[str, int], int] = {}
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

    def process(self, message: Any) -> Iterable[Any]:
        self._begin()
        if isinstance(message, EndOfStream):
            self._db.execute(
                "UPDATE streams SET ended_reason=?, ended_detail=? WHERE stream_id=?",
                (message.reason, message.detail, message.stream_id),
            )
            self.commit()
            return ()
        self._write(message)
        self._pending += 1
        if (
            self._pending >= self.config.batch_size
            or time.monotonic() - self._last_commit >= self.config.commit_interval_s
        ):
            self.commit()
        return ()

    def _write(self, msg: PersonCrops) -> None:
        db = self._db
        t = msg.capture_time
        # A tracker may send a second message for a frame (tracks ended at end of stream): count frames once.
        new_frame = int(self._last_seq.get(msg.stream_id, -1) != msg.seq)
        self._last_seq[msg.stream_id] = msg.seq
        db.execute(
            "INSERT INTO streams (stream_id, first_seen, last_seen, frames, frame_height, frame_width) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(stream_id) DO UPDATE SET last_seen=excluded.last_seen, "
            "frames=frames+excluded.frames, frame_height=excluded.frame_height, "
            "frame_width=excluded.frame_width, ended_reason=NULL, ended_detail=NULL",
            (msg.stream_id, t, t, new_frame, msg.frame_size[0], msg.frame_size[1]),
        )
        tracks = msg.tracks
        rows = []
        for i in range(len(tracks)):
            track_id = int(tracks.track_id[i])
            state = state_name(tracks.state[i])
            key = (msg.stream_id, track_id)
            row = self._track_rows.get(key)
            if row is None:
                row = db.execute(
                    "INSERT INTO tracks (stream_id, session, track_id, first_seen, last_seen, first_seq, "
                    "last_seq, observations, state) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?) RETURNING id",
                    (msg.stream_id, self.session, track_id, t, t, msg.seq, msg.seq, state),
                ).fetchone()[0]
                self._track_rows[key] = row
            else:
                db.execute(
                    "UPDATE tracks SET last_seen=?, last_seq=?, observations=observations+1, state=? "
                    "WHERE id=?",
                    (t, msg.seq, state, row),
                )
            x1, y1, x2, y2 = (float(v) for v in tracks.xyxy[i])
            rows.append(
                (row, msg.stream_id, msg.seq, msg.pts, t, x1, y1, x2, y2, float(tracks.confidence[i]), state)
            )
        if rows:
            db.executemany("INSERT INTO observations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def on_stop(self) -> Iterable[Any]:
        self.commit()
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        return ()
