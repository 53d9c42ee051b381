"""Small real stages for exercising the runtime without video or models, plus their own checks.

They are registered under ``test_*`` type names and loaded through the graph's ``plugins:`` list
(``tests.test_pipeline_support``), which also makes them importable by stage processes in
process mode. They are test inputs for the runtime, not stand-ins for shipped stages.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import EndOfStream, Frame, PersonCrops, Tracks
from pipeline.registry import register_stage
from pipeline.stage import SourceStage, Stage

PLUGIN = "tests.test_pipeline_support"


class SynthSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    streams: list[str] = Field(default=["s0"], description="Stream ids to emit.")
    frames: int = Field(default=10, ge=0, description="Frames per stream (0 = until stopped).")
    height: int = Field(default=24, description="Image height.")
    width: int = Field(default=32, description="Image width.")
    fps: float = Field(default=0.0, ge=0, description="Pace per stream; 0 = as fast as possible.")


@register_stage("test_source")
class SynthSource(SourceStage):
    """Emits frames whose pixels all equal ``seq % 256`` so a receiver can verify content."""

    Config = SynthSourceConfig

    def run(self, emit: Callable[[Any], None], stop: threading.Event) -> None:
        cfg = self.config
        seq = 0
        while not stop.is_set() and (cfg.frames == 0 or seq < cfg.frames):
            for stream in cfg.streams:
                image = np.full((cfg.height, cfg.width, 3), seq % 256, np.uint8)
                emit(Frame(stream, seq, seq / 25.0, time.time(), image))
            seq += 1
            if cfg.fps:
                time.sleep(1.0 / cfg.fps)
        for stream in cfg.streams:
            emit(EndOfStream(stream, "stopped" if stop.is_set() else "finished"))


class RelayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay_s: float = Field(default=0.0, ge=0, description="Sleep per message (a slow stage).")
    fail_on_seq: list[int] = Field(default_factory=list, description="Raise on these seq numbers.")
    crash_on_seq: int = Field(default=-1, description="os._exit(3) on this seq (process mode crash test).")
    crash_marker: str = Field(
        default="", description="Crash only if this file does not exist (then create it)."
    )
    batch: int = Field(default=1, ge=1, description="max_batch.")
    to_crops: bool = Field(
        default=False, description="Emit PersonCrops with one fake track instead of Frame."
    )
    flush_seq_on_eos: int = Field(default=-1, description="On EndOfStream emit one last frame with this seq.")


@register_stage("test_relay")
class Relay(Stage):
    """Passes frames on (or turns them into PersonCrops); can be slow, raise, or crash on demand."""

    Config = RelayConfig

    def on_start(self) -> None:
        self.max_batch = self.config.batch
        self.max_wait_s = 0.01
        self.batches: list[int] = []

    def process_batch(self, messages: list) -> Iterable[Any]:
        self.batches.append(len(messages))
        self.context.observe("batch_len", len(messages))
        return super().process_batch(messages)

    def process(self, message: Any) -> Iterable[Any]:
        cfg = self.config
        if isinstance(message, EndOfStream):
            if cfg.flush_seq_on_eos >= 0:
                image = np.full((4, 4, 3), cfg.flush_seq_on_eos % 256, np.uint8)
                return [Frame(message.stream_id, cfg.flush_seq_on_eos, None, time.time(), image)]
            return []
        if message.seq in cfg.fail_on_seq:
            raise ValueError(f"refusing seq {message.seq}")
        if message.seq == cfg.crash_on_seq and cfg.crash_marker and not Path(cfg.crash_marker).exists():
            Path(cfg.crash_marker).write_text("crashed")
            os._exit(3)
        if cfg.delay_s:
            time.sleep(cfg.delay_s)
        self.context.count("relayed", stream=message.stream_id)
        if cfg.to_crops:
            h, w = message.image.shape[:2]
            tracks = Tracks(
                np.array([1 + message.seq % 3], np.int64),
                np.array([[1, 2, 10, 20]], np.float32),
                np.array([0.9], np.float32),
                np.array([0], np.uint8),
            )
            crop = np.ascontiguousarray(message.image[:8, :4])[None]
            return [
                PersonCrops(
                    message.stream_id, message.seq, message.pts, message.capture_time, (h, w), tracks, crop
                )
            ]
        return [message]


class CollectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="JSONL file to append one line per received message to.")
    delay_s: float = Field(default=0.0, ge=0, description="Sleep per message (a slow sink).")


@register_stage("test_collect")
class Collect(Stage):
    """Records every message it gets (stream, seq, pixel check) in a file, flushed per line."""

    Config = CollectConfig
    accepts = (Frame, PersonCrops)

    def on_start(self) -> None:
        path = Path(self.config.path)
        if not path.is_absolute():
            path = self.context.output_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a")

    def process(self, message: Any) -> Iterable[Any]:
        if self.config.delay_s:
            time.sleep(self.config.delay_s)
        if isinstance(message, EndOfStream):
            row = {"eos": message.stream_id, "reason": message.reason}
        else:
            pixels = message.image if isinstance(message, Frame) else message.crops
            ok = bool((pixels == message.seq % 256).all())
            row = {"stream": message.stream_id, "seq": message.seq, "ok": ok, "type": type(message).__name__}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        return []

    def on_stop(self) -> Iterable[Any]:
        self._file.write(json.dumps({"stopped": True}) + "\n")
        self._file.close()
        return []


class Background:
    """A runtime running in a thread, for tests that act on a run while it goes (kill, stop, forge)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self._holder: dict = {}
        self.thread = threading.Thread(target=lambda: self._holder.setdefault("report", runtime.run()))
        self.thread.start()

    def wait_for_lines(self, path: Path, count: int, timeout_s: float = 40.0) -> None:
        """Until ``path`` has ``count`` lines (or the timeout: the assertions that follow say what is off)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if path.exists() and len(path.read_text().splitlines()) >= count:
                return
            time.sleep(0.01)

    def report(self, timeout_s: float = 60.0) -> Any:
        self.thread.join(timeout=timeout_s)
        assert not self.thread.is_alive(), "the run did not finish"
        return self._holder["report"]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def chain_graph(
    out: Path,
    source: dict | None = None,
    relay: dict | None = None,
    sink: dict | None = None,
    link: dict | None = None,
    **top: Any,
) -> dict:
    """source -> relay -> sink with the test stages; ``link`` sets the relay->sink input options."""
    sink_input: Any = dict({"source": "relay"}, **link) if link else "relay"
    graph = {
        "plugins": [PLUGIN],
        "output_dir": str(out),
        "shutdown": {"linger_s": 1.0, "idle_drain_s": 3.0, "drain_timeout_s": 20.0},
        "stages": [
            {
                "name": "src",
                "type": "test_source",
                "config": dict({"streams": ["a", "b"], "frames": 20}, **(source or {})),
            },
            {"name": "relay", "type": "test_relay", "inputs": ["src"], "config": relay or {}},
            {
                "name": "sink",
                "type": "test_collect",
                "inputs": [sink_input],
                "config": dict({"path": "rows.jsonl"}, **(sink or {})),
            },
        ],
    }
    graph.update(top)
    return graph


def frames_and_eos(rows: list[dict]) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    frames = [(r["stream"], r["seq"]) for r in rows if "seq" in r]
    eos = [(r["eos"], r["reason"]) for r in rows if "eos" in r]
    return frames, eos


def test_synth_source_runs_bare() -> None:
    """The helper source itself: frames carry their seq in the pixels, and one EndOfStream per stream."""
    from pipeline.stage import StageContext

    out: list[Any] = []
    source = SynthSource(SynthSourceConfig(streams=["a", "b"], frames=3), StageContext("src"))
    source.run(out.append, threading.Event())
    frames = [m for m in out if isinstance(m, Frame)]
    assert [(f.stream_id, f.seq) for f in frames][:2] == [("a", 0), ("b", 0)]
    assert len(frames) == 6 and all((f.image == f.seq).all() for f in frames)
    assert [m.stream_id for m in out if isinstance(m, EndOfStream)] == ["a", "b"]


def test_relay_rejects_configured_seq() -> None:
    from pipeline.stage import StageContext

    relay = Relay(RelayConfig(fail_on_seq=[2]), StageContext("r"))
    relay.on_start()
    frame = Frame("a", 2, None, 0.0, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="refusing seq 2"):
        relay.process(frame)
