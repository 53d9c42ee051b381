"""End-to-end `amodal replay --basic`: real ingest, detect, track and sinks; database, JSONL and video agree.

These check detect-and-track behaviour, so they run the basic graph (``configs/replay_basic.yaml``);
the full occlusion-aware graph that ``amodal replay`` runs by default: tests/test_occlusion_e2e.py.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from amodal.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory) -> Path:
    """YOLOv8n built from ultralytics' YAML, saved as .pt: random weights, no download involved."""
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("weights") / "yolov8n_untrained.pt"
    YOLO("yolov8n.yaml").save(str(path))
    return path


def _outputs(out: Path, stream: str) -> dict:
    """What the three sinks recorded, reduced to comparable numbers."""
    db = sqlite3.connect(out / "events.db")
    try:
        frames, reason = db.execute(
            "SELECT frames, ended_reason FROM streams WHERE stream_id=?", (stream,)
        ).fetchone()
        observations = db.execute(
            "SELECT COUNT(*) FROM observations WHERE stream_id=?", (stream,)
        ).fetchone()[0]
        track_ids = {r[0] for r in db.execute("SELECT track_id FROM tracks WHERE stream_id=?", (stream,))}
        long_tracks = db.execute(
            "SELECT COUNT(*) FROM (SELECT track, COUNT(*) AS n FROM observations "
            "WHERE stream_id=? AND state IN ('new', 'updated') GROUP BY track) WHERE n >= 20",
            (stream,),
        ).fetchone()[0]
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()
    lines = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    rows = [
        t
        for line in lines
        if line["type"] == "tracks" and line["stream_id"] == stream
        for t in line["tracks"]
    ]
    eos = [line for line in lines if line["type"] == "end_of_stream" and line["stream_id"] == stream]
    with av.open(str(out / f"{stream}.mp4")) as video:
        video_frames = sum(1 for _ in video.decode(video=0))
    return {
        "db_frames": frames,
        "db_reason": reason,
        "db_observations": observations,
        "db_track_ids": track_ids,
        "long_tracks": long_tracks,
        "integrity": integrity,
        "jsonl_observations": len(rows),
        "jsonl_track_ids": {r["track_id"] for r in rows},
        "jsonl_eos": [e["reason"] for e in eos],
        "video_frames": video_frames,
    }


def _assert_agree(got: dict, frames: int, reason: str) -> None:
    assert got["integrity"] == "ok"
    assert got["db_frames"] == got["video_frames"] == frames
    assert got["db_reason"] == reason and got["jsonl_eos"] == [reason]
    assert got["db_observations"] == got["jsonl_observations"]
    assert got["db_track_ids"] == got["jsonl_track_ids"]


def test_replay_generated_clip_with_untrained_yolo(tmp_path: Path, untrained_weights: Path, capsys) -> None:
    from stages.media.testclip import write_clip

    clip = write_clip(tmp_path / "walk.mp4", frames=24, width=160, height=96)
    out = tmp_path / "out"
    code = main(
        [
            "replay",
            str(clip),
            "--basic",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            f"detect.weights={untrained_weights}",
            "--set",
            "detect.imgsz=64",
            "--set",
            "detect.conf=0.01",
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = capsys.readouterr().out
    assert "frames: 24" in summary and "mean fps:" in summary and "events.db" in summary
    _assert_agree(_outputs(out, "walk"), frames=24, reason="finished")


def test_sigint_during_replay_leaves_consistent_outputs(tmp_path: Path, untrained_weights: Path) -> None:
    """Ctrl-C in the middle of a (realtime-paced) replay: exit 0, and every sink holds the same frames.

    The replay runs as its own process, as a user's would: the signal goes to the amodal command,
    not to the test runner (whose other tests have loaded native libraries that handle signals).
    """
    from stages.media.testclip import write_clip

    clip = write_clip(tmp_path / "long.mp4", frames=250, width=160, height=96, fps=25)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "amodal", "replay", str(clip), "--out", str(out), "--no-progress",
        "--basic", "--set", f"detect.weights={untrained_weights}", "--set", "detect.imgsz=64",
        "--set", "ingest.realtime=true",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / "long.mp4").exists() and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(1.0)  # realtime pacing: about 25 more frames
        assert proc.poll() is None, "the replay ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "stopping: draining the pipeline" in stderr
    got = _outputs(out, "long")
    assert 0 < got["db_frames"] < 250
    _assert_agree(got, frames=got["db_frames"], reason="stopped")
    assert f"frames: {got['db_frames']}" in stdout


def test_run_in_process_mode_with_the_real_stages(tmp_path: Path, untrained_weights: Path, capsys) -> None:
    """The basic replay graph as one supervised process per stage over ipc://: same outputs, exit 0."""
    import yaml

    from amodal.graphs import builtin_replay_graph
    from stages.media.testclip import write_clip

    clip = write_clip(tmp_path / "cam.mp4", frames=20, width=160, height=96)
    graph = builtin_replay_graph(basic=True)
    graph.update(mode="process", output_dir=str(tmp_path / "out"))
    graph["stages"] = [s for s in graph["stages"] if s["name"] != "jsonl"]  # one process fewer to start
    graph["stages"][0]["config"]["streams"] = [{"id": "cam", "source": str(clip)}]
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump(graph))
    code = main(
        ["run", str(config), "--set", f"detect.weights={untrained_weights}", "--set", "detect.imgsz=64"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "restarts" not in captured.out
    out = tmp_path / "out"
    db = sqlite3.connect(out / "events.db")
    assert db.execute("SELECT frames, ended_reason FROM streams").fetchall() == [(20, "finished")]
    db.close()
    with av.open(str(out / "cam.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 20


@pytest.mark.shared_assets
def test_replay_crosswalk_finds_and_tracks_people(shared_dir: Path, tmp_path: Path, capsys) -> None:
    """The real footage with the shared OpenVINO YOLOv8n: first 100 frames (about 15 s on 2 loaded cores)."""
    weights = shared_dir / "models/yolov8n_int8_openvino_model"
    out = tmp_path / "out"
    code = main(
        [
            "replay",
            str(shared_dir / "media/crosswalk-occlusions.mp4"),
            "--basic",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            f"detect.weights={weights}",
            "--set",
            "ingest.max_frames=100",
            "--set",
            "detect.interval=2",  # detector on every other frame, the tracker predicts between (edge setting)
        ]
    )
    assert code == 0, capsys.readouterr().err
    got = _outputs(out, "crosswalk-occlusions")
    _assert_agree(got, frames=100, reason="finished")
    assert got["long_tracks"] >= 5, got
    assert len(got["db_track_ids"]) >= 5
