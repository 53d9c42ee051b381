"""Sinks with the model stages' blocks (grades, restored, attributes, identities) and TrackEnd: real
SQLite, real files, a real PUB socket, real PyAV encode/decode."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import zmq

from pipeline.messages import (
    GRADE_NAMES,
    Attributes,
    EndOfStream,
    Frame,
    Grades,
    Identities,
    PersonCrops,
    Restored,
    TrackEnd,
    Tracks,
    TrackState,
)
from pipeline.stage import StageContext
from stages.sinks.common import TrackTable
from stages.sinks.crops import CropSink, CropSinkConfig
from stages.sinks.jsonl import JsonlSink, JsonlSinkConfig
from stages.sinks.pub import PubSink, PubSinkConfig
from stages.sinks.sqlite import IDENTITY_TRACKS_QUERY, SqliteSink, SqliteSinkConfig
from stages.sinks.video import (
    TrackLabel,
    VideoSink,
    VideoSinkConfig,
    draw_annotations,
    label_lines,
    short_attribute,
)

N, U, L, E = TrackState.NEW, TrackState.UPDATED, TrackState.LOST, TrackState.ENDED
NAMES = ("personalMale", "carryingBackpack", "accessoryHat")
BOX = [200.0, 150.0, 260.0, 330.0]


def _context(tmp_path: Path) -> StageContext:
    return StageContext("sink", output_dir=tmp_path)


def _tracks(rows: list[tuple[int, int]], box: list[float] = BOX) -> Tracks:
    n = len(rows)
    return Tracks(
        np.array([r[0] for r in rows], np.int64),
        np.array([box for _ in rows], np.float32).reshape(n, 4),
        np.full(n, 0.8, np.float32),
        np.array([r[1] for r in rows], np.uint8),
    )


def _attributes(rows: list[int], decisions: list[list[int]], n_names: int = len(NAMES)) -> Attributes:
    k = len(rows)
    decisions_array = np.array(decisions, np.int8).reshape(k, n_names)
    probabilities = np.where(decisions_array == 1, 0.9, np.where(decisions_array == 0, 0.1, 0.5))
    return Attributes(
        NAMES[:n_names],
        np.zeros((0,), np.int32),
        np.zeros((0, n_names), np.float32),
        np.array(rows, np.int32),
        decisions_array,
        probabilities.astype(np.float32),
    )


def _crops(
    stream: str,
    seq: int,
    rows: list[tuple[int, int]],
    *,
    grades: dict[int, int] | None = None,
    visible: dict[int, float] | None = None,
    restored: tuple[int, ...] | None = None,
    identities: dict[int, int] | None = None,
    decisions: dict[int, list[int]] | None = None,
    t0: float = 1000.0,
    dt: float = 0.1,
    size: tuple[int, int] = (360, 640),
) -> PersonCrops:
    """PersonCrops for frame ``seq`` with (track_id, state) rows and model blocks keyed by track id
    (a graded track's visible fraction: ``visible``, else 0.6)."""
    tracks = _tracks(rows)
    index = {tid: i for i, (tid, _) in enumerate(rows)}
    n = len(rows)
    crops = (
        np.stack([np.full((32, 16, 3), tid * 20, np.uint8) for tid, _ in rows])
        if n
        else np.zeros((0, 32, 16, 3), np.uint8)
    )
    blocks: dict = {}
    if grades is not None:
        gr = sorted(index[t] for t in grades)
        by_row = {index[t]: g for t, g in grades.items()}
        blocks["grades"] = Grades(
            np.array(gr, np.int32),
            np.full((len(gr), 4), 0.5, np.float32),
            np.array([by_row[r] for r in gr], np.uint8),
            np.full((len(gr), 8), 0.35, np.float32),
            np.array([(visible or {}).get(rows[r][0], 0.6) for r in gr], np.float32),
        )
    if restored is not None:
        rr = sorted(index[t] for t in restored)
        blocks["restored"] = Restored(np.array(rr, np.int32), np.full((len(rr), 32, 16, 3), 250, np.uint8))
    if identities is not None:
        ir = sorted(index[t] for t in identities)
        by_row = {index[t]: k for t, k in identities.items()}
        blocks["identities"] = Identities(
            np.array(ir, np.int32),
            np.array([by_row[r] for r in ir], np.int64),
            np.full(len(ir), 0.7, np.float32),
        )
    if decisions is not None:
        dr = sorted(index[t] for t in decisions)
        by_row = {index[t]: d for t, d in decisions.items()}
        blocks["attributes"] = _attributes(dr, [by_row[r] for r in dr])
    return PersonCrops(stream, seq, seq / 25, t0 + seq * dt, size, tracks, crops, **blocks)


def _end(
    stream: str,
    seq: int,
    track_ids: list[int],
    identities: dict[int, int] | None = None,
    decisions: dict[int, list[int]] | None = None,
    t: float = 1000.0,
) -> TrackEnd:
    index = {tid: i for i, tid in enumerate(track_ids)}
    ident = None
    if identities is not None:
        ir = sorted(index[t] for t in identities)
        by_row = {index[t]: k for t, k in identities.items()}
        ident = Identities(
            np.array(ir, np.int32), np.array([by_row[r] for r in ir], np.int64), np.ones(len(ir), np.float32)
        )
    attrs = None
    if decisions is not None:
        dr = sorted(index[t] for t in decisions)
        by_row = {index[t]: d for t, d in decisions.items()}
        attrs = _attributes(dr, [by_row[r] for r in dr])
    return TrackEnd(stream, seq, t, np.array(track_ids, np.int64), attrs, ident)


# -- SQLite -----------------------------------------------------------------------------------------
def test_sqlite_grades_restored_identities_attributes_and_track_end(tmp_path: Path) -> None:
    sink = SqliteSink(SqliteSinkConfig(batch_size=100), _context(tmp_path))
    sink.on_start()
    sink.process(_crops("cam1", 0, [(1, N), (2, N)], grades={1: 0, 2: 3}, visible={1: 1.0, 2: 0.75}))
    sink.process(_crops("cam1", 1, [(1, U), (2, U)], restored=(2,), identities={1: 5}))
    sink.process(_crops("cam1", 2, [(1, U), (2, U)], identities={1: 6, 2: 5}, decisions={1: [1, -1, 0]}))
    sink.process(_crops("cam1", 3, [(1, U), (2, U)], identities={1: 6}, decisions={1: [1, 1, 0]}))
    sink.process(_crops("cam2", 0, [(1, N)], identities={1: 5}, t0=1001.0))
    # track 1 ends with its final word; track 2's ENDED row was dropped (drop_oldest): only its TrackEnd
    final = _end("cam1", 4, [1, 2], identities={1: 7}, decisions={1: [1, 1, 1]})
    sink.process(_crops("cam1", 4, [(1, E)]))
    sink.process(final)
    sink.process(final)  # fan-in: the same TrackEnd twice
    sink.on_stop()
    db = sqlite3.connect(tmp_path / "events.db")
    obs = db.execute(
        "SELECT t.track_id, o.seq, o.grade, o.restored, o.identity FROM observations o "
        "JOIN tracks t ON t.id = o.track WHERE o.stream_id='cam1' ORDER BY o.seq, t.track_id"
    ).fetchall()
    assert obs[:6] == [
        (1, 0, 0, 0, None),  # graded holistic: 0, not NULL
        (2, 0, 3, 0, None),  # GRADE_NAMES[3]
        (1, 1, None, 0, 5),  # not graded in this frame: NULL
        (2, 1, None, 1, None),  # de-occluded crop made
        (1, 2, None, 0, 6),
        (2, 2, None, 0, 5),
    ]
    assert GRADE_NAMES[3] == "bottom-1/4"
    visible = db.execute(
        "SELECT t.track_id, o.seq, o.visible FROM observations o JOIN tracks t ON t.id = o.track "
        "WHERE o.stream_id='cam1' AND o.seq < 2 ORDER BY o.seq, t.track_id"
    ).fetchall()
    assert visible == [(1, 0, 1.0), (2, 0, 0.75), (1, 1, None), (2, 1, None)]  # NULL = not graded
    tracks = db.execute(
        "SELECT stream_id, track_id, state, identity FROM tracks ORDER BY stream_id, track_id"
    ).fetchall()
    assert tracks == [("cam1", 1, "ended", 7), ("cam1", 2, "ended", 5), ("cam2", 1, "new", 5)]
    identities = db.execute("SELECT id, first_seen, last_seen, tracks FROM identities ORDER BY id").fetchall()
    assert [(i, n) for i, _, _, n in identities] == [(5, 2), (6, 0), (7, 1)]
    assert identities[0][1:3] == pytest.approx((1000.1, 1001.0))  # first / last observation of identity 5
    # streams and tracks of identity X, in one query on the tracks_by_identity index
    assert [r[:2] for r in db.execute(IDENTITY_TRACKS_QUERY, (5,))] == [("cam1", 2), ("cam2", 1)]
    plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN " + IDENTITY_TRACKS_QUERY, (5,)))
    assert "tracks_by_identity" in plan
    attributes = db.execute(
        "SELECT a.name, a.probability, a.decision FROM track_attributes a JOIN tracks t ON t.id = a.track "
        "WHERE t.stream_id='cam1' AND t.track_id=1 ORDER BY a.name"
    ).fetchall()
    assert attributes == [  # upserted at seq 2 and 3, final from the TrackEnd
        ("accessoryHat", pytest.approx(0.9), 1),
        ("carryingBackpack", pytest.approx(0.9), 1),
        ("personalMale", pytest.approx(0.9), 1),
    ]
    assert db.execute("SELECT COUNT(*) FROM track_attributes").fetchone()[0] == 3
    db.close()
    assert len(sink._tracks) == 1  # cam1's tracks freed by the TrackEnd; cam2's still open


def test_sqlite_track_attributes_undecided_is_null(tmp_path: Path) -> None:
    sink = SqliteSink(SqliteSinkConfig(), _context(tmp_path))
    sink.on_start()
    sink.process(_crops("cam1", 0, [(1, N)], decisions={1: [-1, 0, 1]}))
    sink.on_stop()
    db = sqlite3.connect(tmp_path / "events.db")
    rows = dict(db.execute("SELECT name, decision FROM track_attributes").fetchall())
    assert rows == {"personalMale": None, "carryingBackpack": 0, "accessoryHat": 1}


def test_sqlite_track_end_without_any_row_and_after_expiry(tmp_path: Path) -> None:
    sink = SqliteSink(SqliteSinkConfig(track_idle_s=10.0), _context(tmp_path))
    sink.on_start()
    sink.process(_crops("cam1", 0, [(1, N), (2, N)], dt=1.0))
    sink.process(TrackEnd("cam1", 0, 1000.0, np.array([99], np.int64)))  # never observed: ignored
    for seq in range(1, 30):  # track 2 stays away for 29 s: its cached state expires
        sink.process(_crops("cam1", seq, [(1, U)], dt=1.0))
    assert sink._tracks.get("cam1", 2) is None and sink._tracks.get("cam1", 1) is not None
    sink.process(_crops("cam1", 30, [(1, U), (2, U)], dt=1.0))  # back: same row, no UNIQUE error
    sink.process(_end("cam1", 31, [2]))
    sink.process(_crops("cam1", 29, [(2, U)], dt=1.0))  # a late message (fan-in) does not reopen it
    sink.on_stop()
    db = sqlite3.connect(tmp_path / "events.db")
    assert db.execute(
        "SELECT track_id, observations, last_seq, state FROM tracks ORDER BY track_id"
    ).fetchall() == [(1, 31, 30, "updated"), (2, 3, 30, "ended")]


_OLD_SCHEMA = """
CREATE TABLE streams (stream_id TEXT PRIMARY KEY, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    frames INTEGER NOT NULL DEFAULT 0, frame_height INTEGER, frame_width INTEGER, ended_reason TEXT,
    ended_detail TEXT);
CREATE TABLE tracks (id INTEGER PRIMARY KEY, stream_id TEXT NOT NULL REFERENCES streams(stream_id),
    session TEXT NOT NULL, track_id INTEGER NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, observations INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL, UNIQUE (stream_id, session, track_id));
CREATE INDEX tracks_by_stream_time ON tracks (stream_id, first_seen, last_seen);
CREATE TABLE observations (track INTEGER NOT NULL REFERENCES tracks(id), stream_id TEXT NOT NULL,
    seq INTEGER NOT NULL, pts REAL, capture_time REAL NOT NULL, x1 REAL NOT NULL, y1 REAL NOT NULL,
    x2 REAL NOT NULL, y2 REAL NOT NULL, confidence REAL NOT NULL, state TEXT NOT NULL);
CREATE INDEX observations_by_track ON observations (track, seq);
CREATE INDEX observations_by_stream_time ON observations (stream_id, capture_time);
INSERT INTO streams VALUES ('old', 1.0, 2.0, 2, 360, 640, 'finished', '');
INSERT INTO tracks VALUES (1, 'old', 's0', 1, 1.0, 2.0, 0, 1, 2, 'ended');
INSERT INTO observations VALUES (1, 'old', 0, 0.0, 1.0, 0, 0, 10, 10, 0.9, 'new');
"""


def test_sqlite_upgrades_an_old_schema_database_in_place(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "events.db")
    old.executescript(_OLD_SCHEMA)
    old.close()
    sink = SqliteSink(SqliteSinkConfig(), _context(tmp_path))
    sink.on_start()
    sink.process(
        _crops(
            "cam1",
            0,
            [(1, N)],
            grades={1: 2},
            visible={1: 0.5},
            identities={1: 3},
            decisions={1: [1, 0, 0]},
        )
    )
    sink.process(_end("cam1", 1, [1], identities={1: 3}))
    sink.on_stop()
    db = sqlite3.connect(tmp_path / "events.db")
    columns = {r[1] for r in db.execute("PRAGMA table_info(observations)")}
    assert {"grade", "visible", "restored", "identity"} <= columns
    assert "identity" in {r[1] for r in db.execute("PRAGMA table_info(tracks)")}
    new_columns = "SELECT grade, visible, restored, identity FROM observations WHERE stream_id=?"
    assert db.execute(new_columns, ("old",)).fetchone() == (None, None, 0, None)  # old rows: defaults
    assert db.execute(new_columns, ("cam1",)).fetchone() == (2, 0.5, 0, 3)
    assert db.execute("SELECT identity, state FROM tracks WHERE stream_id='cam1'").fetchone() == (3, "ended")
    assert db.execute("SELECT id, tracks FROM identities").fetchall() == [(3, 1)]
    indices = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "tracks_by_identity" in indices
    db.close()
    again = SqliteSink(SqliteSinkConfig(), _context(tmp_path))  # a second open changes nothing
    again.on_start()
    again.on_stop()


# -- JSONL / PUB -------------------------------------------------------------------------------------
def test_jsonl_lines_carry_model_fields_and_track_end(tmp_path: Path) -> None:
    sink = JsonlSink(JsonlSinkConfig(), _context(tmp_path))
    sink.on_start()
    sink.process(_crops("cam1", 0, [(1, N), (2, N)]))
    sink.process(
        _crops(
            "cam1",
            1,
            [(1, U), (2, U)],
            grades={1: 1},
            visible={1: 0.6234},
            restored=(1,),
            identities={1: 4},
            decisions={2: [1, -1, 0]},
        )
    )
    sink.process(_end("cam1", 2, [1, 2]))  # bare, from the tracker
    sink.process(_end("cam1", 2, [1, 2]))  # the same again (fan-in): not repeated
    sink.process(_end("cam1", 2, [1, 2], identities={1: 4}, decisions={1: [0, 1, -1]}))  # the final word
    sink.process(EndOfStream("cam1", "finished"))
    sink.on_stop()
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [x["type"] for x in lines] == ["tracks", "tracks", "track_end", "track_end", "end_of_stream"]
    assert set(lines[0]["tracks"][0]) == {"track_id", "xyxy", "confidence", "state"}  # nothing reported
    one, two = lines[1]["tracks"]
    assert one["grade"] == 1 and one["grade_name"] == "top-1/4" and one["restored"] is True
    assert one["visible"] == 0.623  # rounded to 3 decimals
    assert one["identity"] == 4 and one["identity_score"] == pytest.approx(0.7)
    assert "attributes" not in one
    assert two["attributes"] == {"personalMale": True, "carryingBackpack": None, "accessoryHat": False}
    assert "grade" not in two and "visible" not in two and "identity" not in two and "restored" not in two
    assert lines[2] == {
        "type": "track_end",
        "stream_id": "cam1",
        "seq": 2,
        "capture_time": 1000.0,
        "tracks": [{"track_id": 1, "identity": None}, {"track_id": 2, "identity": None}],
    }
    assert lines[3]["tracks"] == [
        {
            "track_id": 1,
            "identity": 4,
            "attributes": {
                "personalMale": {"decision": False, "probability": 0.1},
                "carryingBackpack": {"decision": True, "probability": 0.9},
                "accessoryHat": {"decision": None, "probability": 0.5},
            },
        }
    ]
    assert len((tmp_path / "events.jsonl").read_text().splitlines()[1]) < 600  # compact


def test_pub_header_and_track_end_carry_model_fields(tmp_path: Path) -> None:
    config = PubSinkConfig(endpoint="tcp://127.0.0.1:*", include_crops=True, prefer_restored=True)
    sink = PubSink(config, _context(tmp_path))
    sink.on_start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"cam1")
        sub.connect(sink.endpoint)
        message = _crops("cam1", 1, [(1, U), (2, U)], grades={2: 8}, restored=(2,), identities={1: 9})
        received = None
        for _ in range(50):  # a PUB drops messages until the subscription has propagated
            sink.process(message)
            if sub.poll(100):
                received = sub.recv_multipart()
                break
        assert received is not None
        _, header, *jpegs = received
        tracks = json.loads(header)["tracks"]
        assert tracks[0]["identity"] == 9 and "grade" not in tracks[0]
        assert tracks[1]["grade"] == 8 and tracks[1]["grade_name"] == "right-1/2" and tracks[1]["restored"]
        assert tracks[1]["visible"] == 0.6 and "visible" not in tracks[0]
        crop = cv2.imdecode(np.frombuffer(jpegs[1], np.uint8), cv2.IMREAD_COLOR)
        assert abs(int(crop.mean()) - 250) <= 3  # the restored crop, not the original (40)
        while sub.poll(200):  # drain the repeats
            sub.recv_multipart()
        sink.process(_end("cam1", 2, [1], identities={1: 9}))
        assert sub.poll(2000)
        _, end = sub.recv_multipart()
        end = json.loads(end)
        assert end["type"] == "track_end" and end["tracks"] == [{"track_id": 1, "identity": 9}]
    finally:
        sub.close(linger=0)
        ctx.term()
        sink.on_stop()


# -- video: labels and drawing -------------------------------------------------------------------------
def test_short_attribute_and_label_lines() -> None:
    assert short_attribute("personalMale") == "male"
    assert short_attribute("carryingBackpack") == "backpack"
    assert short_attribute("upperBodyBlack") == "black top"
    assert short_attribute("footwearLeatherShoes") == "leather shoes"
    assert short_attribute("personalLess30") == "age<30"
    assert short_attribute("carryingNothing") is None
    assert short_attribute("wears_glasses") == "wears glasses"
    label = TrackLabel(
        grade=1,
        identity=12,
        attributes=("personalMale", "carryingNothing", "accessoryHat", "carryingBackpack", "hairLong"),
    )
    assert label_lines(3, label) == ["#3 ID 12", "occl top-1/4", "male, hat, backpack"]
    assert label_lines(3, TrackLabel(grade=0)) == ["#3"]  # holistic: no occlusion line
    assert label_lines(3, TrackLabel(grade=4, visible=0.624)) == ["#3", "occl bottom-1/2, 62% visible"]
    assert label_lines(3, TrackLabel(grade=0, visible=0.97)) == ["#3"]
    assert label_lines(3, None) == ["#3"]


def _strip_rows(annotated: np.ndarray, plain: np.ndarray, x: int) -> np.ndarray:
    """Rows of column ``x`` that the annotation changed."""
    return np.nonzero(np.abs(annotated[:, x].astype(int) - plain[:, x].astype(int)).sum(axis=1) > 30)[0]


@pytest.mark.parametrize("size", [(360, 640), (1080, 1920)])
def test_labels_are_drawn_above_the_box_and_scale_with_the_frame(size: tuple[int, int]) -> None:
    h, w = size
    k = h / 360
    box = [200 * k, 150 * k, 260 * k, 330 * k]
    image = np.full((h, w, 3), 120, np.uint8)
    frame = Frame("cam1", 0, 0.0, 0.0, image, None, _tracks([(4, U)], box))
    label = TrackLabel(grade=2, identity=8, attributes=("personalMale", "carryingBackpack"))
    plain = draw_annotations(frame, None)
    labelled = draw_annotations(frame, None, labels={4: label})
    x1, y1 = int(box[0]), int(box[1])
    changed = _strip_rows(labelled, image, x1 + int(8 * k))
    above = changed[changed < y1 - 2]
    assert len(above) > 0 and above.max() < y1
    strip_h = y1 - above.min()  # three lines on a dark strip directly above the box
    assert 30 * k < strip_h < 70 * k
    assert labelled[above.min() + 1, x1 + int(4 * k) + 6].mean() < 60  # dark background
    plain_above = _strip_rows(plain, image, x1 + int(8 * k))
    assert y1 - plain_above[plain_above < y1 - 2].min() < strip_h / 2  # one line without labels
    text = labelled[above.min() : y1, x1 : x1 + int(60 * k)]
    assert (text > 200).all(axis=2).sum() > 20 * k * k  # white text on it
    assert np.array_equal(labelled[: above.min() - 2], image[: above.min() - 2])  # nothing else drawn


def test_label_goes_inside_the_box_at_the_top_edge() -> None:
    image = np.full((360, 640, 3), 120, np.uint8)
    frame = Frame("cam1", 0, 0.0, 0.0, image, None, _tracks([(4, U)], [100, 2, 200, 300]))
    labelled = draw_annotations(frame, None, labels={4: TrackLabel(identity=3, grade=1)})
    changed = _strip_rows(labelled, image, 110)
    assert changed.min() <= 3 and 20 < changed[changed < 100].max() < 80


def _video_frame(stream: str, seq: int, size=(360, 640), tracks: Tracks | None = None) -> Frame:
    image = np.full((*size, 3), 40 + 4 * seq, np.uint8)  # the background encodes seq
    return Frame(stream, seq, seq / 25, 1000 + seq * 0.1, image, None, tracks)


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as video:
        return [f.to_ndarray(format="bgr24") for f in video.decode(video=0)]


def test_video_frames_wait_for_their_labels(tmp_path: Path) -> None:
    sink = VideoSink(VideoSinkConfig(show_fps=False, sync_frames=48), _context(tmp_path))
    sink.on_start()
    rows = [(4, U)]
    lag, count = 3, 20
    for seq in range(count + lag):
        if seq < count:
            sink.process(_video_frame("cam1", seq, tracks=_tracks(rows)))
            sink.process(_crops("cam1", seq, rows))  # the tracker's own PersonCrops: releases nothing
        if seq >= lag:  # the model stages' PersonCrops of frame seq - lag
            s = seq - lag
            ident = {4: 11} if s >= 5 else None
            decisions = {4: [1, 1, -1]} if s == 8 else None
            sink.process(_crops("cam1", s, rows, identities=ident, grades={4: 4}, decisions=decisions))
            out = sink._outputs["cam1"]
            assert out.frames == s + 1  # frame s written as soon as its labels are in, not before
    sink.process(EndOfStream("cam1", "finished"))
    frames = _decode(tmp_path / "cam1.mp4")
    assert len(frames) == count
    backgrounds = [int(f[300, 600].mean()) for f in frames]
    assert backgrounds == sorted(backgrounds)  # in order
    assert abs(backgrounds[-1] - (40 + 4 * (count - 1))) <= 3
    for seq, decoded in enumerate(frames):  # each frame carries its own frame's labels
        label = TrackLabel(
            grade=4,
            visible=float(np.float32(0.6)),
            identity=11 if seq >= 5 else None,
            attributes=("personalMale", "carryingBackpack") if seq >= 8 else (),
        )
        source = _video_frame("cam1", seq, tracks=_tracks(rows))
        with_label = draw_annotations(source, None, labels={4: label})
        plain = draw_annotations(source, None)
        err = np.abs(decoded.astype(int) - with_label.astype(int)).mean()
        err_plain = np.abs(decoded.astype(int) - plain.astype(int)).mean()
        assert err < err_plain, seq
    assert len(sink._labels) == 0 and sink._streams == {}


def test_video_without_model_stages_writes_every_frame(tmp_path: Path) -> None:
    sink = VideoSink(VideoSinkConfig(sync_frames=8), _context(tmp_path))
    sink.on_start()
    rows = [(4, U)]
    for seq in range(30):
        sink.process(_video_frame("cam1", seq, size=(90, 160), tracks=_tracks(rows, [20, 10, 80, 70])))
        sink.process(_crops("cam1", seq, rows))  # the tracker's PersonCrops only, no model blocks
    # waited for labels for sync_frames frames, then writes at once (no deadlock, no growing buffer)
    assert sink._outputs["cam1"].frames == 30 and not sink._streams["cam1"].buffer
    sink.process(_end("cam1", 30, [4]))
    sink.process(_end("cam1", 30, [4]))
    sink.process(EndOfStream("cam1", "finished"))
    assert len(_decode(tmp_path / "cam1.mp4")) == 30


def test_video_frames_without_tracks_do_not_wait(tmp_path: Path) -> None:
    sink = VideoSink(VideoSinkConfig(), _context(tmp_path))
    sink.on_start()
    for seq in range(5):
        sink.process(_video_frame("cam1", seq, size=(64, 96), tracks=_tracks([])))
    assert sink._outputs["cam1"].frames == 5
    sink.on_stop()
    assert len(_decode(tmp_path / "cam1.mp4")) == 5


def test_video_buffer_is_bounded_by_frames_and_bytes(tmp_path: Path) -> None:
    frame_mb = 360 * 640 * 3 / 1e6
    sink = VideoSink(VideoSinkConfig(sync_frames=6, sync_max_mb=4.5 * frame_mb), _context(tmp_path))
    sink.on_start()
    rows = [(4, U)]
    sink.process(_crops("cam1", 0, rows, identities={4: 1}))  # labels flow, but stall from now on
    sink.process(_crops("cam2", 0, rows, identities={4: 1}))
    for seq in range(1, 21):
        for stream in ("cam1", "cam2"):
            sink.process(_video_frame(stream, seq, tracks=_tracks(rows)))
            assert sink._buffered_bytes <= 4.5 * frame_mb * 1e6
            assert all(len(s.buffer) <= 6 for s in sink._streams.values())
    sink.on_stop()  # flushes what waited
    assert len(_decode(tmp_path / "cam1.mp4")) == 20 and len(_decode(tmp_path / "cam2.mp4")) == 20


def test_video_track_end_forgets_labels_after_the_frames_that_need_them(tmp_path: Path) -> None:
    sink = VideoSink(VideoSinkConfig(show_fps=False), _context(tmp_path))
    sink.on_start()
    sink.process(_crops("cam1", 0, [(4, N)], identities={4: 2}))
    sink.process(_video_frame("cam1", 0, tracks=_tracks([(4, N)])))
    sink.process(_video_frame("cam1", 1, tracks=_tracks([(4, U)])))
    sink.process(_video_frame("cam1", 2, tracks=_tracks([(4, E)])))
    sink.process(_end("cam1", 2, [4]))  # from the tracker, before the labels of frames 1-2
    assert sink._labels.get("cam1", 4) is not None  # frame 1 still needs them
    sink.process(_crops("cam1", 1, [(4, U)], identities={4: 2}))
    sink.process(_crops("cam1", 2, [(4, E)], identities={4: 2}))
    assert sink._outputs["cam1"].frames == 3 and sink._labels.get("cam1", 4) is None
    sink.process(_end("cam1", 2, [4], identities={4: 2}))  # the model path's TrackEnd: idempotent
    assert len(sink._labels) == 0
    sink.on_stop()


def test_track_table_expires_idle_tracks() -> None:
    table: TrackTable[int] = TrackTable(idle_s=10.0)
    table.put("cam1", 1, 10, now=0.0)
    table.put("cam1", 2, 20, now=0.0)
    table.put("cam2", 1, 30, now=0.0)
    table.touch("cam1", 2, now=8.0)
    assert table.expire("cam1", 12.0) == 1  # track 1 idle 12 s; track 2 seen at 8 s stays
    assert table.get("cam1", 1) is None and table.get("cam1", 2) == 20 and table.get("cam2", 1) == 30
    assert table.pop("cam1", 2) == 20 and table.pop("cam1", 2) is None
    table.pop_stream("cam2")
    assert len(table) == 0


# -- crops ------------------------------------------------------------------------------------------
def _crop_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "crops/cam1"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_crop_filters_by_identity(tmp_path: Path) -> None:
    sink = CropSink(CropSinkConfig(min_interval_s=0, identities=[7]), _context(tmp_path))
    sink.on_start()
    sink.process(_crops("cam1", 0, [(1, N), (2, N)]))  # no identity yet: nothing
    sink.process(_crops("cam1", 1, [(1, U), (2, U)], identities={1: 7, 2: 8}))
    sink.process(_crops("cam1", 2, [(1, U), (2, U)]))  # identity remembered per track
    assert _crop_files(tmp_path) == ["000001_00000001.jpg", "000001_00000002.jpg"]
    sink.process(_end("cam1", 3, [1, 2]))
    assert len(sink._tracks) == 0


def test_crop_require_identity_attributes_and_restored(tmp_path: Path) -> None:
    config = CropSinkConfig(
        min_interval_s=0,
        require_identity=True,
        attributes=["personalMale", "accessoryHat"],
        prefer_restored=True,
    )
    sink = CropSink(config, _context(tmp_path))
    sink.on_start()
    sink.process(_crops("cam1", 0, [(1, N), (2, N)], decisions={1: [1, 0, 1], 2: [1, 1, 1]}))  # no ids
    sink.process(_crops("cam1", 1, [(1, U), (2, U), (3, N)], identities={1: 4, 3: 5}))
    sink.process(_crops("cam1", 2, [(1, U), (2, U)], identities={2: 6}, restored=(1,)))
    sink.process(_crops("cam1", 3, [(1, U)], decisions={1: [1, 0, -1]}))  # no longer decided hat
    assert _crop_files(tmp_path) == [
        "000001_00000001.jpg",
        "000001_00000002_restored.jpg",
        "000002_00000002.jpg",
    ]
    restored = cv2.imread(str(tmp_path / "crops/cam1/000001_00000002_restored.jpg"))
    assert abs(int(restored.mean()) - 250) <= 3
    sink.process(EndOfStream("cam1", "finished"))
    assert len(sink._tracks) == 0
