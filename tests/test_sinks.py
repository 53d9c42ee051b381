"""Sinks on real SQLite, real files, a real PUB socket and real PyAV video."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import zmq

from pipeline.messages import EndOfStream, Frame, PersonCrops, Tracks, TrackState
from pipeline.metrics import RuntimeMetrics
from pipeline.stage import StageContext
from stages.sinks.crops import CropSink, CropSinkConfig
from stages.sinks.jsonl import JsonlSink, JsonlSinkConfig
from stages.sinks.pub import PubSink, PubSinkConfig
from stages.sinks.sqlite import SqliteSink, SqliteSinkConfig
from stages.sinks.video import VideoSink, VideoSinkConfig

N, U, L, E = TrackState.NEW, TrackState.UPDATED, TrackState.LOST, TrackState.ENDED


def _context(tmp_path: Path, metrics: RuntimeMetrics | None = None) -> StageContext:
    return StageContext("sink", metrics=metrics, output_dir=tmp_path)


def _crops(
    stream: str, seq: int, rows: list[tuple[int, int]], t0: float = 1000.0, dt: float = 0.1
) -> PersonCrops:
    """PersonCrops for frame ``seq`` with (track_id, state) rows; crops are filled with the track id."""
    n = len(rows)
    tracks = Tracks(
        np.array([r[0] for r in rows], np.int64),
        np.array([[10 + seq, 20, 50 + seq, 120] for _ in rows], np.float32).reshape(n, 4),
        np.full(n, 0.8, np.float32),
        np.array([r[1] for r in rows], np.uint8),
    )
    crops = (
        np.stack([np.full((32, 16, 3), r[0] * 20, np.uint8) for r in rows])
        if n
        else np.zeros((0, 32, 16, 3), np.uint8)
    )
    return PersonCrops(stream, seq, seq / 25, t0 + seq * dt, (360, 640), tracks, crops)


# Track 1 lives frames 0-4 then ends; track 2 appears at frame 2 and is lost at frame 4.
_SCRIPT = [[(1, N)], [(1, U)], [(1, U), (2, N)], [(1, U), (2, U)], [(1, E), (2, L)]]


# -- SQLite -----------------------------------------------------------------------------------------
def test_sqlite_schema_rows_and_time_query(tmp_path: Path) -> None:
    metrics = RuntimeMetrics()
    sink = SqliteSink(SqliteSinkConfig(batch_size=100), _context(tmp_path, metrics))
    sink.on_start()
    for seq, rows in enumerate(_SCRIPT):
        sink.process(_crops("cam1", seq, rows))
        sink.process(_crops("cam2", seq, rows[:1], t0=5000.0))
    sink.process(_crops("cam1", 4, [(2, E)]))  # a second message for frame 4 (ended at end of stream)
    sink.process(EndOfStream("cam1", "finished"))
    db = sqlite3.connect(tmp_path / "events.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    streams = dict(db.execute("SELECT stream_id, frames FROM streams").fetchall())
    assert streams == {"cam1": 5, "cam2": 5}
    assert db.execute("SELECT ended_reason FROM streams WHERE stream_id='cam1'").fetchone()[0] == "finished"
    tracks = db.execute(
        "SELECT track_id, first_seq, last_seq, observations, state FROM tracks "
        "WHERE stream_id='cam1' ORDER BY track_id"
    ).fetchall()
    assert tracks == [(1, 0, 4, 5, "ended"), (2, 2, 4, 4, "ended")]
    assert db.execute("SELECT COUNT(*) FROM observations WHERE stream_id='cam1'").fetchone()[0] == 9
    # "tracks of stream X between t1 and t2" (overlap), answered from the index
    query = (
        "SELECT track_id FROM tracks WHERE stream_id=? AND first_seen <= ? AND last_seen >= ? "
        "ORDER BY track_id"
    )
    assert [r[0] for r in db.execute(query, ("cam1", 1000.15, 1000.0))] == [1]
    assert [r[0] for r in db.execute(query, ("cam1", 1000.5, 1000.25))] == [1, 2]
    plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN " + query, ("cam1", 1.0, 0.0)))
    assert "tracks_by_stream_time" in plan
    db.close()
    sink.on_stop()
    assert metrics.value("amodal_events_committed_total", stage="sink") == 11


def test_sqlite_commits_in_batches_and_on_stop(tmp_path: Path) -> None:
    sink = SqliteSink(SqliteSinkConfig(batch_size=3, commit_interval_s=3600), _context(tmp_path))
    sink.on_start()
    reader = sqlite3.connect(tmp_path / "events.db")
    count = "SELECT COUNT(*) FROM observations"
    sink.process(_crops("cam1", 0, [(1, N)]))
    sink.process(_crops("cam1", 1, [(1, U)]))
    assert reader.execute(count).fetchone()[0] == 0  # not committed yet: another reader sees nothing
    sink.process(_crops("cam1", 2, [(1, U)]))
    assert reader.execute(count).fetchone()[0] == 3  # batch of 3 committed
    sink.process(_crops("cam1", 3, [(1, U)]))
    sink.on_stop()
    assert reader.execute(count).fetchone()[0] == 4
    reader.close()


def test_sqlite_appends_runs_without_merging_track_ids(tmp_path: Path) -> None:
    for _ in range(2):
        sink = SqliteSink(SqliteSinkConfig(), _context(tmp_path))
        sink.on_start()
        sink.process(_crops("cam1", 0, [(1, N)]))
        sink.on_stop()
    db = sqlite3.connect(tmp_path / "events.db")
    assert db.execute("SELECT COUNT(DISTINCT session), COUNT(*) FROM tracks").fetchone() == (2, 2)


# -- JSONL ------------------------------------------------------------------------------------------
def test_jsonl_lines(tmp_path: Path) -> None:
    sink = JsonlSink(JsonlSinkConfig(path="sub/events.jsonl"), _context(tmp_path))
    sink.on_start()
    sink.process(_crops("cam1", 0, []))
    for seq, rows in enumerate(_SCRIPT):
        sink.process(_crops("cam1", seq, rows))
    sink.process(EndOfStream("cam1", "error", "truncated"))
    sink.on_stop()
    lines = [json.loads(line) for line in (tmp_path / "sub/events.jsonl").read_text().splitlines()]
    assert len(lines) == 6  # the empty frame is skipped
    assert lines[2]["tracks"][1] == {
        "track_id": 2,
        "xyxy": [12.0, 20.0, 52.0, 120.0],
        "confidence": 0.8,
        "state": "new",
    }
    assert lines[-1] == {
        "type": "end_of_stream",
        "stream_id": "cam1",
        "reason": "error",
        "detail": "truncated",
        "lost": 0,
    }


# -- PUB --------------------------------------------------------------------------------------------
def test_pub_sink_publishes_header_and_jpeg_crops(tmp_path: Path) -> None:
    sink = PubSink(PubSinkConfig(endpoint="tcp://127.0.0.1:*", include_crops=True), _context(tmp_path))
    sink.on_start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"cam1")
        sub.connect(sink.endpoint)
        received = None
        for _ in range(50):  # a PUB drops messages until the subscription has propagated
            sink.process(_crops("cam1", 2, [(1, U), (2, N)]))
            sink.process(_crops("other", 2, [(1, U)]))
            if sub.poll(100):
                received = sub.recv_multipart()
                break
        assert received is not None
        topic, header, *jpegs = received
        header = json.loads(header)
        assert topic == b"cam1" and header["stream_id"] == "cam1" and header["crops"] == "jpeg"
        assert [t["track_id"] for t in header["tracks"]] == [1, 2] and len(jpegs) == 2
        crop = cv2.imdecode(np.frombuffer(jpegs[1], np.uint8), cv2.IMREAD_COLOR)
        assert crop.shape == (32, 16, 3) and abs(int(crop.mean()) - 40) <= 3
    finally:
        sub.close(linger=0)
        ctx.term()
        sink.on_stop()


# -- video ------------------------------------------------------------------------------------------
def _frame(stream: str, seq: int, size=(90, 161), tracks: Tracks | None = None) -> Frame:
    image = np.full((*size, 3), 60, np.uint8)
    return Frame(stream, seq, seq / 25, 1000 + seq / 25, image, None, tracks)


def test_video_sink_writes_one_annotated_file_per_stream(tmp_path: Path) -> None:
    sink = VideoSink(VideoSinkConfig(directory="videos"), _context(tmp_path))
    sink.on_start()
    tracks = Tracks(
        np.array([7], np.int64),
        np.array([[20, 10, 80, 70]], np.float32),
        np.array([0.9], np.float32),
        np.array([U], np.uint8),
    )
    for seq in range(12):
        sink.process(_frame("cam1", seq, tracks=tracks))
        if seq % 2 == 0:
            sink.process(_frame("cam2", seq, size=(64, 96)))
    sink.process(EndOfStream("cam1", "finished"))
    assert (tmp_path / "videos/cam1.mp4").is_file()  # closed at its end of stream, cam2 still open
    sink.on_stop()
    with av.open(str(tmp_path / "videos/cam1.mp4")) as video:
        frames = [f.to_ndarray(format="bgr24") for f in video.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape == (90, 160, 3)  # odd width made even for yuv420p
    inside, edge = frames[5][40, 50], frames[5][10, 50]
    assert (
        abs(int(inside.mean()) - 60) < 15 and abs(int(edge.mean()) - 60) > 30
    )  # box drawn, inside untouched
    with av.open(str(tmp_path / "videos/cam2.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 6


# -- crops ------------------------------------------------------------------------------------------
def test_crop_snapshots_are_rate_limited_per_track(tmp_path: Path) -> None:
    sink = CropSink(CropSinkConfig(min_interval_s=0.25, max_per_track=2), _context(tmp_path))
    sink.on_start()
    for seq in range(10):  # 0.1 s apart; track 3 is LOST throughout and never saved
        sink.process(_crops("cam1", seq, [(1, U), (3, L)]))
    files = sorted(p.name for p in (tmp_path / "crops/cam1").iterdir())
    assert files == ["000001_00000000.jpg", "000001_00000003.jpg"]
    assert cv2.imread(str(tmp_path / "crops/cam1" / files[0])).shape == (32, 16, 3)


@pytest.mark.parametrize("stage", [SqliteSink, JsonlSink, PubSink, VideoSink, CropSink])
def test_every_sink_config_rejects_unknown_keys(stage) -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        stage.Config.model_validate({"colour": "red"})
    for name, field in stage.Config.model_fields.items():
        assert field.description, f"{stage.__name__}.Config.{name} has no description"
