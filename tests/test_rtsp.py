"""RTSP ingest against a real GStreamer RTSP server (tests/rtsp_server.py, run by Debian's python3).

Covers the live-camera failure modes the issue lists: the server stopped mid-stream and restarted
(the stream resumes, the reconnect is counted), a server that completes the handshake but never
sends, one that goes silent mid-stream, a TCP port that accepts and never answers, UDP transport,
and credentials that must never reach logs, metrics or EndOfStream details. Every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.messages import EndOfStream, Frame
from pipeline.stage import MetricSink, StageContext
from stages.ingest import IngestConfig, IngestStage
from tools.soak import SYSTEM_PYTHON, rtsp_unavailable

pytestmark = pytest.mark.rtsp

SERVER = Path(__file__).with_name("rtsp_server.py")


@pytest.fixture(scope="module")
def rtsp_ok() -> None:
    reason = rtsp_unavailable()
    if reason:
        if os.environ.get("AMODAL_REQUIRE_RTSP"):
            pytest.fail(f"AMODAL_REQUIRE_RTSP is set but {reason}")
        pytest.skip(f"{reason}; install python3-gi gir1.2-gst-rtsp-server-1.0 (Debian)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RtspServer:
    """One tests/rtsp_server.py process."""

    def __init__(self, port: int, *args: str) -> None:
        self.port, self.args = port, args
        self.proc: subprocess.Popen | None = None

    def url(self, credentials: str = "") -> str:
        return f"rtsp://{credentials}127.0.0.1:{self.port}/test"

    def start(self, timeout: float = 15.0) -> RtspServer:
        cmd = [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        lines = []
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                lines.append(line)
                if line.startswith("READY"):
                    return self
                if not line:
                    break
        self.stop()
        raise RuntimeError(f"RTSP server did not start: {''.join(lines)[-500:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def rtsp_server(rtsp_ok) -> Iterator[Callable[..., RtspServer]]:
    started: list[RtspServer] = []

    def start(*args: str, port: int | None = None) -> RtspServer:
        server = RtspServer(port or free_port(), *args).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class Recorder(MetricSink):
    """Counts and collected messages, shared safely with the ingest thread."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple], float] = {}
        self.messages: list = []
        self.cond = threading.Condition()

    def count(self, stage: str, metric: str, amount: float, labels: dict[str, str]) -> None:
        with self.cond:
            key = (metric, tuple(sorted(labels.items())))
            self.counts[key] = self.counts.get(key, 0) + amount

    def total(self, metric: str) -> float:
        with self.cond:
            return sum(v for (m, _), v in self.counts.items() if m == metric)

    def emit(self, message) -> None:
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[list], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.messages), timeout)

    def frames(self) -> list[Frame]:
        with self.cond:
            return [m for m in self.messages if isinstance(m, Frame)]

    def ends(self) -> list[EndOfStream]:
        with self.cond:
            return [m for m in self.messages if isinstance(m, EndOfStream)]


class RunningIngest:
    def __init__(self, url: str, **overrides) -> None:
        config = {
            "streams": [{"id": "cam", "source": url}],
            "open_timeout_s": 3.0,
            "read_timeout_s": 1.0,
            "stall_timeout_s": 1.0,
            "probe_s": 0.3,
            "reconnect": {"initial_s": 0.2, "max_s": 0.5},
        }
        config.update(overrides)
        self.recorder = Recorder()
        self.stage = IngestStage(
            IngestConfig.model_validate(config), StageContext("ingest", metrics=self.recorder)
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self.stage.run, args=(self.recorder.emit, self.stop), daemon=True
        )
        self.thread.start()

    def finish(self, timeout: float = 10.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "ingest did not stop"

    def wait_frames(self, count: int, timeout: float, after: float = 0.0) -> list[Frame]:
        def enough(messages: list) -> bool:
            return sum(isinstance(m, Frame) and m.capture_time > after for m in messages) >= count

        self.recorder.wait(enough, timeout)
        return [f for f in self.recorder.frames() if f.capture_time > after]


def test_stream_decodes_with_live_timestamps(rtsp_server) -> None:
    server = rtsp_server("--fps", "15")
    ingest = RunningIngest(server.url())
    try:
        frames = ingest.wait_frames(12, timeout=15)
    finally:
        ingest.finish()
    assert len(frames) >= 12
    assert frames[0].image.shape == (240, 320, 3)
    assert [f.seq for f in frames[:12]] == list(range(12))
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:], strict=False)), "pts must increase"
    assert abs(frames[-1].capture_time - time.time()) < 10
    ends = ingest.recorder.ends()
    assert len(ends) == 1 and ends[0].reason == "stopped"


def test_server_restart_resumes_stream_and_counts_reconnect(rtsp_server) -> None:
    server = rtsp_server()
    ingest = RunningIngest(server.url())
    try:
        assert len(ingest.wait_frames(8, timeout=15)) >= 8
        server.stop()  # the camera goes away mid-stream
        cut = time.time()
        time.sleep(0.5)
        rtsp_server(port=server.port)
        resumed = ingest.wait_frames(8, timeout=20, after=cut + 0.5)
    finally:
        ingest.finish()
    assert len(resumed) >= 8, "the stream must resume after the server comes back"
    assert ingest.recorder.total("reconnects") >= 1
    assert ingest.recorder.total("disconnects") >= 1
    seqs = [f.seq for f in ingest.recorder.frames()]
    assert seqs == list(range(len(seqs))), "seq keeps counting across the reconnect"
    pts = [f.pts for f in ingest.recorder.frames()]
    assert all(b >= a for a, b in zip(pts, pts[1:], strict=False)), "pts stay monotonic across sessions"


def test_server_that_never_sends_ends_the_stream_in_bounded_time(rtsp_server) -> None:
    server = rtsp_server("--stall")
    started = time.monotonic()
    ingest = RunningIngest(server.url(), reconnect={"initial_s": 0.1, "max_s": 0.2, "max_attempts": 2})
    ingest.recorder.wait(lambda ms: any(isinstance(m, EndOfStream) for m in ms), timeout=20)
    ingest.finish()
    assert time.monotonic() - started < 15
    ends = ingest.recorder.ends()
    assert len(ends) == 1 and ends[0].reason == "error"
    assert "gave up after 2 attempts" in ends[0].detail
    assert ingest.recorder.frames() == []


def test_stream_that_goes_silent_is_dropped_by_the_watchdog_and_reconnected(rtsp_server) -> None:
    server = rtsp_server("--stall-after", "0.8")
    ingest = RunningIngest(server.url())
    try:
        # Each session sends ~0.8 s then goes silent: frames from a second session prove the reconnect.
        ok = ingest.recorder.wait(
            lambda ms: ingest.recorder.total("reconnects") >= 1 and any(isinstance(m, Frame) for m in ms),
            timeout=20,
        )
        first_reconnect = time.time()
        more = ingest.wait_frames(3, timeout=10, after=first_reconnect)
    finally:
        ingest.finish()
    assert ok
    assert ingest.recorder.total("stalls") >= 1
    assert len(more) >= 3


def test_port_that_accepts_but_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/test"
        started = time.monotonic()
        ingest = RunningIngest(
            url, open_timeout_s=1.0, reconnect={"initial_s": 0.1, "max_s": 0.1, "max_attempts": 1}
        )
        ingest.recorder.wait(lambda ms: any(isinstance(m, EndOfStream) for m in ms), timeout=15)
        ingest.finish()
    assert time.monotonic() - started < 10
    ends = ingest.recorder.ends()
    assert len(ends) == 1 and ends[0].reason == "error"
    assert ingest.recorder.total("connect_failures") == 1


def test_udp_transport(rtsp_server) -> None:
    server = rtsp_server()
    ingest = RunningIngest(server.url(), rtsp_transport="udp")
    try:
        frames = ingest.wait_frames(5, timeout=15)
    finally:
        ingest.finish()
    assert len(frames) >= 5 and frames[0].image.shape == (240, 320, 3)


def test_credentials_never_reach_logs_metrics_or_events(rtsp_server, caplog) -> None:
    secret = "Sup3rS3cret"
    server = rtsp_server("--user", "admin", "--password", secret)
    caplog.set_level(logging.DEBUG)
    good = RunningIngest(server.url(f"admin:{secret}@"))
    try:
        assert len(good.wait_frames(5, timeout=15)) >= 5, "the right credentials must be accepted"
    finally:
        good.finish()
    bad = RunningIngest(
        server.url("admin:WrongPass1@"), reconnect={"initial_s": 0.1, "max_s": 0.1, "max_attempts": 1}
    )
    bad.recorder.wait(lambda ms: any(isinstance(m, EndOfStream) for m in ms), timeout=15)
    bad.finish()
    (end,) = bad.recorder.ends()
    assert end.reason == "error" and "401" in end.detail and "admin:***@" in end.detail
    texts = [
        caplog.text,
        end.detail,
        repr(good.recorder.counts),
        repr(bad.recorder.counts),
        *(e.detail for e in good.recorder.ends()),
    ]
    for text in texts:
        assert secret not in text and "WrongPass1" not in text
    assert "admin:***@" in caplog.text


if __name__ == "__main__":  # pragma: no cover - manual run
    sys.exit(pytest.main([__file__, "-q"]))
