"""kill -9 of every stage kind in process mode: every frame ends in the database and the JSONL log
exactly once, every track is ended, one session per stream (pipeline.delivery)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from amodal.graphs import load_app_graph
from pipeline.supervisor import ProcessRuntime

pytestmark = [pytest.mark.shared_assets, pytest.mark.slow]

FRAMES = 200
#: (stage, kill it once the database holds this many frames): the source, a model stage, the
#: stateful tracker and both sinks, one after the other in the same run. The stream does not move
#: while a stage restarts (lossless links, no realtime pacing) and at most a small delivery window
#: is in flight, so each kill lands close to its mark and the last one well before the end.
KILLS = [("ingest", 15), ("detect", 50), ("track", 85), ("jsonl", 120), ("events", 155)]


def _graph(out: Path, video: Path, detector: Path) -> dict:
    return {
        "mode": "process",
        "output_dir": str(out),
        "links": {"policy": "block", "hwm": 8},
        "delivery": {"window": 16},
        "supervisor": {"backoff_initial_s": 0.1, "max_restarts": 2},
        "logging": {"level": "WARNING"},
        "stages": [
            {
                "name": "ingest",
                "type": "ingest",
                "config": {
                    "streams": [{"id": "video", "source": str(video)}],
                    "realtime": False,
                    "max_frames": FRAMES,
                },
            },
            {"name": "detect", "type": "detect", "inputs": ["ingest"], "config": {"weights": str(detector)}},
            {"name": "track", "type": "track", "inputs": ["detect"], "config": {}},
            {"name": "events", "type": "sqlite_sink", "inputs": ["track"], "config": {"path": "events.db"}},
            {
                "name": "jsonl",
                "type": "jsonl_sink",
                "inputs": ["track"],
                "config": {"path": "events.jsonl", "include_empty": True},
            },
        ],
    }


def _frames_committed(db_path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT frames FROM streams WHERE stream_id='video'").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def test_every_stage_killed_once_loses_and_repeats_nothing(tmp_path: Path, shared_dir: Path) -> None:
    video = shared_dir / "media" / "crosswalk-occlusions.mp4"
    detector = shared_dir / "models" / "yolov8n_int8_openvino_model"
    if not video.exists() or not detector.exists():
        pytest.skip("needs the shared footage and the OpenVINO detector")
    runtime = ProcessRuntime(load_app_graph(data=_graph(tmp_path, video, detector)))
    holder: dict = {}
    thread = threading.Thread(target=lambda: holder.setdefault("report", runtime.run()))
    thread.start()
    killed = []
    try:
        for stage, after in KILLS:
            deadline = time.monotonic() + 90
            while _frames_committed(tmp_path / "events.db") < after and time.monotonic() < deadline:
                time.sleep(0.05)
            pid = runtime.stage_pid(stage)
            assert pid is not None, f"{stage} is not running"
            os.kill(pid, signal.SIGKILL)
            killed.append((stage, _frames_committed(tmp_path / "events.db")))
    finally:
        thread.join(timeout=180)
        if thread.is_alive():
            runtime.abort()
            thread.join(timeout=30)
    report = holder["report"]
    print("killed at", killed, "in per stage", {n: r.messages_in for n, r in report.stages.items()})
    assert report.exit_code == 0, report.error
    assert report.restarts == {"ingest": 1, "detect": 1, "track": 1, "events": 1, "jsonl": 1}, killed
    assert all(n < FRAMES for _, n in killed), f"a kill came after the end of the stream: {killed}"

    db = sqlite3.connect(tmp_path / "events.db")
    frames, reason = db.execute("SELECT frames, ended_reason FROM streams WHERE stream_id='video'").fetchone()
    assert (frames, reason) == (FRAMES, "finished"), killed
    assert db.execute("SELECT COUNT(DISTINCT session) FROM tracks").fetchone()[0] == 1
    assert db.execute("SELECT COUNT(*) FROM tracks WHERE state != 'ended'").fetchone()[0] == 0
    repeated = db.execute(
        "SELECT track, seq, state, COUNT(*) FROM observations GROUP BY track, seq, state HAVING COUNT(*) > 1"
    ).fetchall()
    assert repeated == [], killed
    assert db.execute("SELECT MAX(seq) FROM observations").fetchone()[0] <= FRAMES - 1

    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    seqs = [line["seq"] for line in lines if line["type"] == "tracks"]
    # one line per frame (include_empty), plus the tracker's closing line for the last frame
    assert sorted(set(seqs)) == list(range(FRAMES)), killed
    assert len(seqs) - len(set(seqs)) <= 1 and all(s == FRAMES - 1 for s in seqs if seqs.count(s) > 1)
    assert [line["reason"] for line in lines if line["type"] == "end_of_stream"] == ["finished"]
