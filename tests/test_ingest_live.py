"""Adding, removing and changing streams while ingest runs (the watched ``streams_file``).

Real components only: clips encoded with PyAV in tmp_path and replayed at their native rate
(``realtime: true``) so streams are still playing when the file changes, the real stage run loop in a
thread, a closed local port for a camera that never answers, and the embedded runtime end to end.
Every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from amodal.graphs import load_app_graph
from pipeline.configfile import ConfigError, validate
from pipeline.links import free_tcp_port
from pipeline.messages import EndOfStream, Frame
from pipeline.runtime import EmbeddedRuntime
from pipeline.stage import StageContext
from stages.ingest import IngestConfig, IngestStage, load_streams_file
from stages.media.buffer import StreamBuffer
from stages.media.testclip import write_clip
from stages.media.watch import WatchedFile
from tests.test_pipeline_support import PLUGIN

FPS = 25
REMOVED = "removed from streams file"
CHANGED = "changed in streams file"


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """12 s at 25 fps, 64x48: in realtime mode it outlasts every test that uses it."""
    return str(
        write_clip(
            tmp_path_factory.mktemp("clips") / "long.mp4", frames=12 * FPS, width=64, height=48, fps=FPS
        )
    )


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """10 frames, played as fast as possible: a stream that ends on its own."""
    return str(
        write_clip(tmp_path_factory.mktemp("clips") / "short.mp4", frames=10, width=64, height=48, fps=FPS)
    )


def write_streams(path: Path, streams: list[dict[str, Any]]) -> None:
    """Replace the file atomically, as editors and config tools do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(streams))
    os.replace(tmp, path)


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


class LiveIngest:
    """``IngestStage.run`` on its own thread with a collecting ``emit`` that notes arrival times."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.stage = IngestStage(IngestConfig.model_validate(config), StageContext("ingest"))
        self.out: list[tuple[float, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.stage.run, args=(self._emit, self.stop), daemon=True)
        self.thread.start()

    def _emit(self, message: Any) -> None:
        self.out.append((time.monotonic(), message))

    def messages(self) -> list[Any]:
        return [m for _, m in list(self.out)]

    def frames(self, stream_id: str, after: int = -1) -> list[Frame]:
        return [
            m
            for i, m in enumerate(self.messages())
            if isinstance(m, Frame) and m.stream_id == stream_id and i > after
        ]

    def eos(self, stream_id: str) -> list[EndOfStream]:
        return [m for m in self.messages() if isinstance(m, EndOfStream) and m.stream_id == stream_id]

    def index(self, message: Any) -> int:
        return next(i for i, m in enumerate(self.messages()) if m is message)

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "ingest run() did not return after stop"


@pytest.fixture
def ingest() -> Iterator[Callable[..., LiveIngest]]:
    started: list[LiveIngest] = []

    def start(listing: Path, **config: Any) -> LiveIngest:
        settings = {"streams": [], "streams_file": str(listing), "watch_interval_s": 0.1, "realtime": True}
        run = LiveIngest(settings | config)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop.set()
        run.thread.join(10)


def consecutive(frames: list[Frame]) -> bool:
    return [f.seq for f in frames] == list(range(len(frames)))


def test_a_stream_added_to_the_file_starts_and_the_others_do_not_notice(
    tmp_path: Path, long_clip: str, ingest
) -> None:
    listing = tmp_path / "cameras.yaml"
    write_streams(listing, [{"id": "a", "source": long_clip}])
    run = ingest(listing)
    wait_until(lambda: len(run.frames("a")) >= 5, "frames of a")

    write_streams(listing, [{"id": "a", "source": long_clip}, {"id": "b", "source": long_clip}])
    written = time.monotonic()
    wait_until(lambda: run.frames("b"), "frames of the added stream b")
    first_b = next(t for t, m in list(run.out) if isinstance(m, Frame) and m.stream_id == "b")
    assert first_b - written < 2.0, "an added stream starts within about one poll interval"
    a_then = len(run.frames("a"))
    wait_until(
        lambda: len(run.frames("a")) >= a_then + 10 and len(run.frames("b")) >= 10, "both streams playing"
    )
    run.close()

    a_frames, b_frames = run.frames("a"), run.frames("b")
    assert consecutive(a_frames) and consecutive(b_frames)
    assert np.allclose(np.diff([f.pts for f in a_frames]), 1 / FPS, atol=2e-3), "a was not restarted"
    arrivals = [t for t, m in list(run.out) if isinstance(m, Frame) and m.stream_id == "a"]
    assert max(np.diff(arrivals)) < 1.0, "a kept playing while b was opened"
    assert run.eos("a") == [EndOfStream("a", "stopped")]
    assert run.eos("b") == [EndOfStream("b", "stopped")]
    assert isinstance(run.messages()[-1], EndOfStream)


def test_a_removed_stream_ends_once_and_can_be_added_again(tmp_path: Path, long_clip: str, ingest) -> None:
    listing = tmp_path / "cameras.yaml"
    write_streams(listing, [{"id": "a", "source": long_clip}, {"id": "b", "source": long_clip}])
    run = ingest(listing, stop_grace_s=5.0)
    wait_until(lambda: len(run.frames("a")) >= 5 and len(run.frames("b")) >= 5, "frames of a and b")

    write_streams(listing, [{"id": "b", "source": long_clip}])
    written = time.monotonic()
    eos = wait_until(lambda: run.eos("a"), "EndOfStream of the removed stream a")[0]
    assert eos == EndOfStream("a", "stopped", REMOVED)
    ended = next(t for t, m in list(run.out) if m is eos)
    assert ended - written < 2.0, "the removed stream's own decoder stopped (not the stop_grace_s fallback)"
    ended_at = run.index(eos)
    b_then = len(run.frames("b"))
    wait_until(lambda: len(run.frames("b")) >= b_then + 10, "b playing on after a was removed")
    assert run.frames("a", after=ended_at) == [], "no frame of a after its EndOfStream"
    assert run.eos("b") == [] and consecutive(run.frames("b"))

    write_streams(listing, [{"id": "b", "source": long_clip}, {"id": "a", "source": long_clip}])
    wait_until(lambda: len(run.frames("a", after=ended_at)) >= 3, "frames of the re-added stream a")
    run.close()

    again = run.frames("a", after=ended_at)
    before = run.frames("a")[: len(run.frames("a")) - len(again)]
    assert consecutive(before)
    # a fresh decoder, but the stream's frame numbers go on growing (duplicates are told by them)
    assert [f.seq for f in again] == list(range(len(before), len(before) + len(again)))
    assert run.eos("a") == [EndOfStream("a", "stopped", REMOVED), EndOfStream("a", "stopped")]
    assert run.eos("b") == [EndOfStream("b", "stopped")]
    assert consecutive(run.frames("b"))


def test_a_changed_stream_restarts_with_credentials_masked(
    tmp_path: Path, long_clip: str, ingest, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("CAM_PW", "s3cretpw")
    port = free_tcp_port()  # nothing listens there: the camera is refused and retried
    camera = {"id": "cam", "source": f"rtsp://viewer:${{CAM_PW}}@127.0.0.1:{port}/live"}
    listing = tmp_path / "cameras.yaml"
    write_streams(listing, [camera, {"id": "a", "source": long_clip}])
    run = ingest(listing, open_timeout_s=1, reconnect={"initial_s": 0.05, "max_s": 0.2})

    def reading_cam() -> int:
        return sum(r.getMessage().startswith("stream cam: reading") for r in caplog.records)

    wait_until(lambda: reading_cam() == 1 and len(run.frames("a")) >= 5, "cam started and a playing")
    write_streams(listing, [camera | {"max_fps": 5}, {"id": "a", "source": long_clip}])
    eos = wait_until(lambda: run.eos("cam"), "EndOfStream of the changed stream")
    assert eos == [EndOfStream("cam", "stopped", CHANGED)]
    wait_until(lambda: reading_cam() == 2, "cam started again")
    a_then = len(run.frames("a"))
    wait_until(lambda: len(run.frames("a")) >= a_then + 5, "a playing on")
    run.close()

    assert run.eos("cam") == [EndOfStream("cam", "stopped", CHANGED), EndOfStream("cam", "stopped")]
    assert run.eos("a") == [EndOfStream("a", "stopped")] and consecutive(run.frames("a"))
    changed = [r.getMessage() for r in caplog.records if "changed in" in r.getMessage()]
    assert changed and "max_fps" in changed[0] and f"rtsp://viewer:***@127.0.0.1:{port}/live" in changed[0]
    assert "s3cretpw" not in caplog.text
    assert all("s3cretpw" not in m.detail for m in run.messages() if isinstance(m, EndOfStream))


def test_an_invalid_or_missing_file_is_logged_and_changes_nothing(
    tmp_path: Path, long_clip: str, ingest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    listing = tmp_path / "cameras.yaml"
    a = {"id": "a", "source": long_clip}
    write_streams(listing, [a])
    run = ingest(listing)
    wait_until(lambda: len(run.frames("a")) >= 3, "frames of a")

    def errors(text: str) -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and text in r.getMessage()
        ]

    listing.write_text(f"- {{id: a, source: {long_clip}}}\n- {{id: b, source: {long_clip}\n")
    wait_until(lambda: errors("not valid YAML"), "the YAML error")
    assert str(listing) in errors("not valid YAML")[0] and "line 3" in errors("not valid YAML")[0]
    write_streams(listing, [a, {"id": "b", "source": long_clip, "fps": 5}])
    wait_until(lambda: errors("[1].fps: unknown key"), "the unknown-key error")
    assert str(listing) in errors("[1].fps")[0] and "running streams are kept (a)" in errors("[1].fps")[0]
    listing.unlink()
    wait_until(lambda: errors("does not exist"), "the missing-file error")

    a_then = len(run.frames("a"))
    write_streams(listing, [a, {"id": "b", "source": long_clip}])
    wait_until(lambda: len(run.frames("b")) >= 3, "the fixed file applied: b playing")
    assert len(run.frames("a")) > a_then
    assert run.eos("a") == [] and consecutive(run.frames("a")), "a ran through every bad version"
    run.close()
    # one error per bad version of the file, not one per poll
    assert [len(errors(t)) for t in ("not valid YAML", "unknown key", "does not exist")] == [1, 1, 1]
    assert run.eos("a") == [EndOfStream("a", "stopped")] and run.eos("b") == [EndOfStream("b", "stopped")]


def test_with_a_streams_file_the_stage_runs_until_stopped(
    tmp_path: Path, short_clip: str, ingest, caplog: pytest.LogCaptureFixture
) -> None:
    """Streams that end on their own end the way they always did; the stage keeps watching the file,
    and a file stream that finished is not replayed while the file lists it unchanged."""
    caplog.set_level(logging.INFO)
    listing = tmp_path / "cameras.yaml"  # missing at start
    run = ingest(listing, realtime=False, streams=[{"id": "s", "source": short_clip}])
    wait_until(lambda: run.eos("s"), "the static stream to finish")
    assert run.eos("s") == [EndOfStream("s", "finished")] and len(run.frames("s")) == 10
    assert any("does not exist" in r.getMessage() for r in caplog.records)
    assert run.thread.is_alive()

    f, g = {"id": "f", "source": short_clip}, {"id": "g", "source": short_clip}
    write_streams(listing, [f])
    wait_until(lambda: run.eos("f"), "the file stream to finish")
    write_streams(listing, [f, g])
    wait_until(lambda: run.eos("g"), "a second file stream to finish")
    assert len(run.eos("f")) == 1 and len(run.frames("f")) == 10, "f finished and was not replayed"

    write_streams(listing, [g])
    wait_until(lambda: any("removed: f" in r.getMessage() for r in caplog.records), "f removed")
    write_streams(listing, [f, g])
    wait_until(lambda: len(run.eos("f")) == 2, "f re-added and finished again")
    assert run.thread.is_alive()
    run.close()
    assert run.eos("f") == [EndOfStream("f", "finished")] * 2 and len(run.frames("f")) == 20
    assert run.eos("g") == [EndOfStream("g", "finished")] and run.eos("s") == [EndOfStream("s", "finished")]


def test_stream_ids_must_be_unique_across_streams_and_the_file(
    tmp_path: Path, long_clip: str, ingest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    listing = tmp_path / "cameras.yaml"
    write_streams(listing, [{"id": "x", "source": long_clip}, {"id": "s", "source": long_clip}])
    run = ingest(listing, streams=[{"id": "s", "source": long_clip}])
    wait_until(lambda: len(run.frames("s")) >= 3, "the static stream playing")
    message = wait_until(
        lambda: [r.getMessage() for r in caplog.records if "already used" in r.getMessage()],
        "the duplicate-id error",
    )[0]
    assert "[1].id: stream id 's' is already used by the stage's streams" in message
    assert run.frames("x") == [], "an invalid file is not applied in part"
    run.close()
    assert run.eos("s") == [EndOfStream("s", "stopped")] and consecutive(run.frames("s"))


# -- config, preflight and the pieces ----------------------------------------------------------------
def test_config_streams_may_be_empty_only_with_a_streams_file() -> None:
    with pytest.raises(ConfigError, match=r"streams: bad value \[\]: List should have at least 1 item"):
        validate(IngestConfig, {"streams": []})
    with pytest.raises(ConfigError, match="streams: required key is missing"):
        validate(IngestConfig, {})
    assert validate(IngestConfig, {"streams_file": "cams.yaml"}).streams == []
    with pytest.raises(ConfigError, match=r"watch_interval_s: bad value 0"):
        validate(IngestConfig, {"streams_file": "cams.yaml", "watch_interval_s": 0})


def test_check_files_reports_the_streams_file(tmp_path: Path, short_clip: str) -> None:
    listing = tmp_path / "cameras.yaml"
    config = IngestConfig.model_validate({"streams_file": str(listing)})
    assert IngestStage.check_files(config, "ingest") == [
        f"ingest.streams_file: streams file '{listing}' does not exist"
    ]
    listing.write_text("- {id: a, source: 'rtsp://u:hunter22@cam/1', fps: 5}\n")
    (problem,) = IngestStage.check_files(config, "ingest")
    assert problem.startswith(f"ingest.streams_file: {listing}: [0].fps: unknown key")
    listing.write_text(f"- {{id: a, source: {tmp_path / 'nope.mp4'}}}\n- {{id: b, source: {short_clip}}}\n")
    (problem,) = IngestStage.check_files(config, "ingest")
    assert problem.startswith(f"ingest.streams_file: {listing}: [0].source: source ")
    assert "nope.mp4" in problem
    listing.write_text("- {id: a, source: 'rtsp://u:${NO_SUCH_CAM_PW_XYZ}@cam/1'}\n")
    (problem,) = IngestStage.check_files(config, "ingest")
    assert problem == (
        f"ingest.streams_file: {listing}: [0].source: environment variable ${{NO_SUCH_CAM_PW_XYZ}} is not set"
    )
    listing.write_text(f"- {{id: a, source: {short_clip}}}\n")
    assert IngestStage.check_files(config, "ingest") == []
    assert [s.id for s in load_streams_file(listing)] == ["a"]


def test_watched_file_reports_content_changes_only(tmp_path: Path) -> None:
    path = tmp_path / "cameras.yaml"
    watcher = WatchedFile(path)
    with pytest.raises(FileNotFoundError):
        watcher.poll()
    assert watcher.poll() is None, "the same failure is reported once"
    path.write_text("[]\n")
    assert watcher.poll() == b"[]\n"
    assert watcher.poll() is None
    os.utime(path)  # touched, same content
    assert watcher.poll() is None
    path.write_text("[1]\n")  # same size, possibly the same mtime tick
    assert watcher.poll() == b"[1]\n"
    path.unlink()
    with pytest.raises(FileNotFoundError):
        watcher.poll()
    path.write_text("[1]\n")
    assert watcher.poll() == b"[1]\n", "content after a failure counts as a change"


def test_buffer_streams_can_be_removed_while_others_flow() -> None:
    buffer: StreamBuffer = StreamBuffer(4)
    stop = threading.Event()
    for key in ("a", "b", "c"):
        buffer.add_stream(key)
        buffer.put(key, key + "1", drop_oldest=False, stop=stop)
    assert buffer.get(0.1) == "a1"
    buffer.remove_stream("b")
    assert buffer.put("b", "b2", drop_oldest=False, stop=stop) == 0  # a late producer is ignored
    assert [buffer.get(0.1), buffer.get(0.05)] == ["c1", None]
    buffer.add_stream("b")
    buffer.put("b", "b3", drop_oldest=False, stop=stop)
    assert buffer.get(0.1) == "b3"


# -- end to end -------------------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def test_a_stream_added_at_run_time_reaches_the_sink(tmp_path: Path, long_clip: str) -> None:
    listing = tmp_path / "cameras.yaml"
    write_streams(listing, [{"id": "a", "source": long_clip}])
    data = {
        "plugins": [PLUGIN],
        "output_dir": str(tmp_path),
        "shutdown": {"linger_s": 1.0, "idle_drain_s": 3.0, "drain_timeout_s": 20.0},
        "stages": [
            {
                "name": "ingest",
                "type": "ingest",
                "config": {"streams_file": str(listing), "watch_interval_s": 0.1, "realtime": True},
            },
            {"name": "relay", "type": "test_relay", "inputs": ["ingest"], "config": {"to_crops": True}},
            {"name": "events", "type": "jsonl_sink", "inputs": ["relay"], "config": {"path": "events.jsonl"}},
        ],
    }
    runtime = EmbeddedRuntime(load_app_graph(data=data))
    holder: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: holder.setdefault("report", runtime.run()), daemon=True)
    thread.start()
    events = tmp_path / "events.jsonl"

    def seqs(stream_id: str) -> list[int]:
        return [r["seq"] for r in _jsonl(events) if r["type"] == "tracks" and r["stream_id"] == stream_id]

    try:
        wait_until(lambda: len(seqs("a")) >= 5, "a's events in the sink", timeout=20)
        write_streams(listing, [{"id": "a", "source": long_clip}, {"id": "b", "source": long_clip}])
        wait_until(lambda: len(seqs("b")) >= 5, "events of the added stream b in the sink", timeout=20)
    finally:
        runtime.request_stop()
        thread.join(30)
    assert not thread.is_alive(), "the runtime did not stop"
    assert holder["report"].exit_code == 0, holder["report"].error
    rows = _jsonl(events)
    ends = [(r["stream_id"], r["reason"]) for r in rows if r["type"] == "end_of_stream"]
    assert sorted(ends) == [("a", "stopped"), ("b", "stopped")]
    assert seqs("b")[:5] == [0, 1, 2, 3, 4] and seqs("a")[:5] == [0, 1, 2, 3, 4]
