"""Ingest on clips encoded in tmp_path: every container the issue names, playlists, broken files,
pacing, the frame-rate cap, config errors and the stage's run() contract."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.configfile import ConfigError, load_config
from pipeline.messages import EndOfStream, Frame
from pipeline.stage import MetricSink, StageContext
from stages.ingest import IngestConfig, IngestStage
from stages.media.backoff import Backoff
from stages.media.buffer import StreamBuffer
from stages.media.decoder import DecodedFrame, DecoderOptions, StreamDecoder, StreamEnded
from stages.media.sources import resolve_source, scrub
from stages.media.testclip import synthetic_frame, write_clip


class RecordingMetrics(MetricSink):
    """Keeps every count so tests can assert on them."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def count(self, stage: str, metric: str, amount: float, labels: dict[str, str]) -> None:
        key = (metric, tuple(sorted(labels.items())))
        self.counts[key] = self.counts.get(key, 0) + amount

    def total(self, metric: str) -> float:
        return sum(v for (m, _), v in self.counts.items() if m == metric)


def decode_all(source, **options) -> tuple[list[DecodedFrame], StreamEnded]:
    decoder = StreamDecoder("s", resolve_source(source), DecoderOptions(**options))
    items = list(decoder.frames(threading.Event()))
    assert isinstance(items[-1], StreamEnded)
    assert all(isinstance(i, DecodedFrame) for i in items[:-1])
    return items[:-1], items[-1]


def run_stage(config: dict, timeout: float = 30.0) -> tuple[list, RecordingMetrics]:
    metrics = RecordingMetrics()
    stage = IngestStage(IngestConfig.model_validate(config), StageContext("ingest", metrics=metrics))
    out: list = []
    stop = threading.Event()
    thread = threading.Thread(target=stage.run, args=(out.append, stop), daemon=True)
    thread.start()
    thread.join(timeout)
    stop.set()
    assert not thread.is_alive(), "ingest run() did not return"
    return out, metrics


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mkv", "clip.avi", "clip.264", "clip.265"])
def test_decodes_every_container(tmp_path: Path, name: str) -> None:
    path = write_clip(tmp_path / name, frames=20, width=160, height=96, fps=25)
    frames, end = decode_all(str(path))
    assert end.reason == "finished", end.detail
    assert len(frames) == 20
    assert [f.seq for f in frames] == list(range(20))
    first = frames[0].image
    assert first.shape == (96, 160, 3) and first.dtype == np.uint8 and first.flags.c_contiguous
    # Content survives the codec: the moving box is where the generator put it (BGR order kept).
    expected = synthetic_frame(5, 160, 96).astype(int)
    assert np.abs(frames[5].image.astype(int) - expected).mean() < 12
    pts = [f.pts for f in frames]
    assert pts[0] == pytest.approx(0.0, abs=1e-6)
    assert np.allclose(np.diff(pts), 1 / 25, atol=2e-3), "pts must follow the 25 fps timeline"


def test_replay_capture_time_is_start_plus_pts(tmp_path: Path) -> None:
    frames, _ = decode_all(str(write_clip(tmp_path / "a.mp4", frames=10)))
    starts = [f.capture_time - f.pts for f in frames]
    assert max(starts) - min(starts) < 1e-6
    assert abs(starts[0] - time.time()) < 60


def test_directory_is_played_in_natural_order_with_monotonic_pts(tmp_path: Path) -> None:
    folder = tmp_path / "day"
    folder.mkdir()
    write_clip(folder / "cam_10.mp4", frames=6)
    write_clip(folder / "cam_2.mkv", frames=4)
    (folder / "notes.txt").write_text("not a video")
    assert [Path(p).name for p in resolve_source(str(folder)).inputs] == ["cam_2.mkv", "cam_10.mp4"]
    frames, end = decode_all(str(folder))
    assert end.reason == "finished"
    assert len(frames) == 10
    assert [f.seq for f in frames] == list(range(10))
    assert np.all(np.diff([f.pts for f in frames]) > 0), "pts restart at every file"


def test_truncated_file_ends_with_error_and_the_playlist_goes_on(tmp_path: Path) -> None:
    good = write_clip(tmp_path / "good.mp4", frames=8)
    mkv = write_clip(tmp_path / "cut.mkv", frames=60)
    data = mkv.read_bytes()
    mkv.write_bytes(data[: len(data) * 2 // 3])
    frames, end = decode_all([str(mkv), str(good)])
    assert end.reason == "error"
    assert "cut.mkv" in end.detail and "truncated" in end.detail
    assert 0 < len(frames) - 8 < 60, "the readable part of the cut file and all of the good file play"


def test_mp4_without_index_is_an_error_not_a_crash(tmp_path: Path) -> None:
    mp4 = write_clip(tmp_path / "cut.mp4", frames=30)
    mp4.write_bytes(mp4.read_bytes()[:2000])
    frames, end = decode_all(str(mp4))
    assert frames == []
    assert end.reason == "error" and "cut.mp4" in end.detail


def test_missing_source_is_a_clear_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.mp4.*neither a video file"):
        resolve_source(str(tmp_path / "nope.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no video files"):
        resolve_source(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="only source"):
        resolve_source(["rtsp://cam/1", str(tmp_path)])


def test_realtime_paces_at_native_rate_and_max_fps_caps(tmp_path: Path) -> None:
    path = str(write_clip(tmp_path / "a.mp4", frames=25, fps=25))
    started = time.monotonic()
    frames, _ = decode_all(path, realtime=True)
    elapsed = time.monotonic() - started
    assert len(frames) == 25
    assert 0.85 <= elapsed < 3.0, f"25 frames at 25 fps should take ~0.96 s, took {elapsed:.2f}"
    capped, _ = decode_all(path, max_fps=10)
    assert 9 <= len(capped) <= 11
    assert min(np.diff([f.pts for f in capped])) >= 0.08 - 1e-6


def test_stop_interrupts_realtime_replay(tmp_path: Path) -> None:
    path = str(write_clip(tmp_path / "a.mp4", frames=50, fps=5))  # 10 s at native rate
    decoder = StreamDecoder("s", resolve_source(path), DecoderOptions(realtime=True))
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    items = list(decoder.frames(stop))
    assert time.monotonic() - started < 2.0
    assert items[-1] == StreamEnded("s", "stopped")


def test_backoff_grows_with_jitter_and_caps() -> None:
    backoff = Backoff(0.5, 4.0, multiplier=2.0, jitter=0.5)
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(c * 0.5 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len({round(d, 6) for d in delays[3:]}) > 1, "jitter must spread the capped delays"
    backoff.reset()
    assert backoff.next_delay() <= 0.5
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(5.0, 1.0)


def test_buffer_drops_oldest_for_live_and_never_drops_end_markers() -> None:
    buffer: StreamBuffer = StreamBuffer(2)
    buffer.add_stream("cam")
    stop = threading.Event()
    dropped = sum(buffer.put("cam", i, drop_oldest=True, stop=stop) for i in range(5))
    assert dropped == 3
    buffer.put("cam", "end", drop_oldest=True, stop=stop, force=True)
    assert [buffer.get(0.1) for _ in range(3)] == [3, 4, "end"]
    assert buffer.get(0.05) is None


def test_scrub_removes_passwords() -> None:
    url = "rtsp://admin:hunter22@10.1.2.3:554/live"
    text = f"Connection refused: '{url}' (password hunter22)"
    cleaned = scrub(text, [url])
    assert "hunter22" not in cleaned and "admin:***@10.1.2.3" in cleaned


def test_stage_emits_frames_then_one_eos_per_stream(tmp_path: Path) -> None:
    a = write_clip(tmp_path / "a.mp4", frames=12)
    b = write_clip(tmp_path / "b.264", frames=7)
    out, metrics = run_stage(
        {
            "streams": [
                {"id": "a", "source": str(a)},
                {"id": "b", "source": [str(b)]},
                {"id": "gone", "source": str(tmp_path / "missing.mp4")},
            ],
            "buffer_frames": 2,
        }
    )
    for stream_id, count in (("a", 12), ("b", 7)):
        frames = [m for m in out if isinstance(m, Frame) and m.stream_id == stream_id]
        assert [f.seq for f in frames] == list(range(count))
        eos = [i for i, m in enumerate(out) if isinstance(m, EndOfStream) and m.stream_id == stream_id]
        assert len(eos) == 1 and out[eos[0]].reason == "finished"
        assert eos[0] > max(out.index(f) for f in frames), "EndOfStream must come after the stream's frames"
    gone = [m for m in out if isinstance(m, EndOfStream) and m.stream_id == "gone"]
    assert len(gone) == 1 and gone[0].reason == "error" and "missing.mp4" in gone[0].detail
    assert metrics.total("frames_decoded") == 19


def test_stage_stop_ends_every_stream_with_stopped(tmp_path: Path) -> None:
    path = str(write_clip(tmp_path / "a.mp4", frames=100, fps=10))
    stage = IngestStage(
        IngestConfig.model_validate({"streams": [{"id": "a", "source": path}], "realtime": True}),
        StageContext("ingest"),
    )
    out: list = []
    stop = threading.Event()
    threading.Timer(0.4, stop.set).start()
    started = time.monotonic()
    stage.run(out.append, stop)
    assert time.monotonic() - started < 3.0
    assert isinstance(out[-1], EndOfStream) and out[-1].reason == "stopped"
    assert 1 <= sum(isinstance(m, Frame) for m in out) < 100


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("streams:\n  - id: a\n    source: x.mp4\n    fps: 5\n")
    with pytest.raises(ConfigError, match=r"streams\[0\]\.fps: unknown key"):
        load_config(IngestConfig, cfg)
    cfg.write_text("streams:\n  - {id: a, source: x.mp4}\n  - {id: a, source: y.mp4}\n")
    with pytest.raises(ConfigError, match="stream id 'a' is used by more than one stream"):
        load_config(IngestConfig, cfg)
    cfg.write_text("streams:\n  - {id: a, source: x.mp4}\nrtsp_transport: quic\n")
    with pytest.raises(ConfigError, match="rtsp_transport: bad value 'quic'"):
        load_config(IngestConfig, cfg)
    cfg.write_text("streams:\n  - {id: a, source: x.mp4}\nreconnect: {initial_s: 5, max_s: 1}\n")
    with pytest.raises(ConfigError, match=r"max_s \(1.0\) must be >= initial_s"):
        load_config(IngestConfig, cfg)
    cfg.write_text("streams:\n  - {id: cam, source: 'rtsp://u:${CAM_PW}@h/s'}\n")
    loaded = load_config(IngestConfig, cfg, env={"CAM_PW": "pw"})
    assert loaded.streams[0].source == "rtsp://u:pw@h/s"


def test_max_frames_and_wall_clock(tmp_path: Path) -> None:
    path = str(write_clip(tmp_path / "a.mp4", frames=30))
    before = time.time()
    frames, end = decode_all([path, path], max_frames=12, capture_clock="wall")
    assert len(frames) == 12 and end.reason == "finished"
    assert all(before <= f.capture_time <= time.time() for f in frames)
    assert frames[-1].capture_time - frames[0].capture_time < 0.4, "wall clock at decode, not start + pts"
