"""Benchmark the pipeline against its own stages run bare, in the same run (ratios, not absolutes).

    amodal bench ../shared/media/crosswalk-occlusions.mp4 \
        --weights ../shared/models/yolov8n_int8_openvino_model --json bench.json

Measures, on one video:

* ``decode_fps``: PyAV decode to BGR (the ingest decoder, no runtime), and ``ffmpeg_fps``: ``ffmpeg
  -f null`` decode of the same frames (when ffmpeg is installed); ``decode_vs_ffmpeg`` is their ratio;
* each stage of the built-in replay graph (``builtin_replay_graph()``, walked, not listed here) bare on
  recorded inputs: ingest (decode threads + Frame messages), detect on the decoded frames (in batches
  of its ``max_batch``), track on the recorded detections, every model stage after the tracker
  (grade, deocclude, describe, identify: whatever the graph has) on the output of its input stage,
  recorded once (the tracker's PersonCrops / TrackEnd / EndOfStream stream, then each stage's own
  output), in batches of its ``max_batch`` as the runtime feeds it (``on_start`` not timed), and every
  sink on the recorded output of its input stage; ``slowest_stage_fps`` is the minimum. The slowest
  stage is measured again after the graphs run (``--recheck-frames``) and the faster of the two is
  used, so a load spike from other processes during the bare run cannot flatter the ratios;
* ``person_stages``: per model stage, its model calls / rows / seconds and schedule counts in the bare
  run; ``model_calls_per_track``: model rows / tracks that got at least one row, and
  ``model_calls_vs_track_length``: per track, runs against its visible length in seconds
  (``max_runs_over_schedule`` = max over tracks of runs / (1 + seconds x schedule rate), and the
  least-squares slope of runs on seconds), so a schedule whose calls grow with frames shows;
* the detect-and-track graph (``builtin_replay_graph(basic=True)``) and the full graph, end to end on
  the same frames in embedded mode, alternated ``--repeats`` times (basic, full, full, basic, ...):
  ``basic_fps``, ``full_fps`` (means over the runs), ``full_vs_basic`` = full_fps / basic_fps, and
  ``graph_stage_metrics``: each stage's process / model seconds and model counts from the runtime's
  Prometheus registry (first run of each graph);
* the full graph (= ``embedded_fps``: the built-in replay graph, in its own mode) and in process mode
  (one process per stage, ipc://); ``*_ratio`` = graph fps / slowest bare stage fps. A graph's fps is
  taken at a probe fed by the last stage before the sinks (track in the basic graph, identify in the
  full one) over the frames after ``--warmup`` that were decoded after the first frame reached the
  probe (so model loading and the backlog it leaves are not counted, as they are not for bare stages);
* ``latency_ms``: capture (wall clock at decode) to probe, p50/p95 over the frames decoded after the
  first frame reached the probe (steady state), for each mode as fast as possible
  (dominated by queueing behind the slowest stage, by design of ``block`` links) and, with
  ``--realtime-frames``, at the video's native rate over ``drop_oldest`` links (what a live camera
  sees; ``realtime_run.frames`` says how many of the decoded frames got through);
* ``transport_us``: per-message cost of encode + send + receive + decode for a Frame (full image +
  detections) and a PersonCrops over inproc://, ipc:// and tcp://.

The probe stage (``bench_probe``) is registered by this module and loaded into the graph through
``plugins: [tools.bench_pipeline]``, so it also runs inside process-mode workers. Run from the repo
root. The JSON has at least decode_fps, ffmpeg_fps, slowest_stage_fps, embedded_fps, process_fps,
embedded_ratio, process_ratio, basic_fps, full_fps, full_vs_basic and model_calls_per_track.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from amodal.commands import prog_of
from pipeline.messages import DATA_TYPES, EndOfStream, Frame, PersonCrops, TrackEnd
from pipeline.metrics import RuntimeMetrics
from pipeline.registry import register_stage
from pipeline.stage import Stage, StageContext

logger = logging.getLogger("bench_pipeline")

PLUGIN = "amodal.commands.bench_pipeline"


class ProbeConfig(BaseModel):
    """Where the probe writes what it saw."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="JSON file written at on_stop with arrival and capture times.")


@register_stage("bench_probe")
class BenchProbe(Stage):
    """Terminal stage that records when each PersonCrops arrives (throughput and latency)."""

    Config: ClassVar[type[BaseModel]] = ProbeConfig
    accepts: ClassVar[tuple[type, ...]] = (PersonCrops,)
    emits: ClassVar[tuple[type, ...] | None] = ()

    def __init__(self, config: ProbeConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.arrivals: list[float] = []
        self.captures: list[float] = []
        self._last_seq = -1

    def process(self, message: Any) -> tuple:
        if isinstance(message, PersonCrops) and message.seq != self._last_seq:  # skip end-of-stream closings
            self._last_seq = message.seq
            self.arrivals.append(time.time())
            self.captures.append(message.capture_time)
        return ()

    def on_stop(self) -> tuple:
        Path(self.config.path).write_text(json.dumps({"arrivals": self.arrivals, "captures": self.captures}))
        return ()


# ---------------------------------------------------------------------------------------- helpers
def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else float("nan")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan")}
    arr = np.asarray(values) * 1000
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1)}


def probe_stats(path: Path, warmup: int) -> dict[str, Any]:
    """Throughput and latency at the probe.

    fps counts from the first frame after ``warmup`` that was decoded after the first frame reached
    the probe: frames decoded earlier queued behind model loading and arrive in a burst once it is
    done. Runs too short for that (a few frames) fall back to the frames after ``warmup``, then to all.
    """
    data = json.loads(path.read_text())
    arrivals, captures = data["arrivals"], data["captures"]
    n = len(arrivals)
    if n < 2:
        return {"frames": n, "fps": float("nan"), "fps_from_frame": None, "latency_ms": percentiles([])}
    first_steady = next((i for i, c in enumerate(captures) if c >= arrivals[0]), n)
    start = next(s for s in (max(warmup, first_steady), warmup, 0) if n - s >= 2)
    fps = rate(n - 1 - start, arrivals[-1] - arrivals[start])
    # Steady state only: frames decoded before the first one reached the probe waited for model loading.
    latencies = [a - c for a, c in zip(arrivals, captures, strict=True) if c >= arrivals[0]]
    return {
        "frames": n,
        "fps": fps,
        "fps_from_frame": start,
        "latency_ms": percentiles(latencies),
        "latency_samples": len(latencies),
    }


# ---------------------------------------------------------------------------------------- decode
def bench_decode(video: str, frames: int | None) -> tuple[float, list[Frame]]:
    """The ingest decoder alone (PyAV -> BGR); returns fps and the decoded frames for later stages."""
    from stages.media.decoder import DecodedFrame, DecoderOptions, StreamDecoder
    from stages.media.sources import resolve_source

    decoder = StreamDecoder("bench", resolve_source(video), DecoderOptions(max_frames=frames))
    out: list[Frame] = []
    started = time.perf_counter()
    for item in decoder.frames(threading.Event()):
        if isinstance(item, DecodedFrame):
            out.append(Frame(item.stream_id, item.seq, item.pts, item.capture_time, item.image))
    return rate(len(out), time.perf_counter() - started), out


def bench_ffmpeg(video: str, frames: int) -> dict[str, float] | None:
    """``ffmpeg -f null`` decode of the same frames (and with the BGR conversion), when installed.

    The rate uses ffmpeg's own ``-benchmark`` real time (its decode loop, without process start-up,
    which is not part of our decode figure either); the wall-clock rate is reported too.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    out: dict[str, float] = {}
    for key, extra in (("ffmpeg", []), ("ffmpeg_bgr", ["-pix_fmt", "bgr24"])):
        cmd = [
            ffmpeg,
            "-hide_banner",
            "-nostats",
            "-benchmark",
            "-nostdin",
            "-i",
            video,
            "-frames:v",
            str(frames),
            *extra,
            "-f",
            "null",
            "-",
        ]
        started = time.perf_counter()
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - started
        match = re.search(r"rtime=([0-9.]+)s", done.stderr)
        out[f"{key}_fps"] = rate(frames, float(match.group(1)) if match else wall)
        out[f"{key}_wall_fps"] = rate(frames, wall)
    return out


def bench_ingest(config: Any) -> float:
    """The ingest stage's run() with a no-op emit: decode threads, hand-off buffer, Frame messages."""
    from stages.ingest import IngestStage

    count = 0

    def emit(message: Any) -> None:
        nonlocal count
        count += isinstance(message, Frame)

    stage = IngestStage(config, StageContext("ingest"))
    started = time.perf_counter()
    stage.run(emit, threading.Event())
    return rate(count, time.perf_counter() - started)


def run_bare(stage: Stage, inputs: list[Any], warmup: int, batch: int = 1) -> tuple[float, list[Any]]:
    """Feed recorded inputs through a stage's hooks; fps over the frames after ``warmup``."""
    stage.on_start()
    outputs: list[Any] = []
    started = None
    timed = 0
    for index in range(0, len(inputs), batch):
        if started is None and index >= warmup:
            started = time.perf_counter()
        chunk = inputs[index : index + batch]
        outputs.extend(stage.process_batch(chunk) if batch > 1 else stage.process(chunk[0]))
        if started is not None:
            timed += len(chunk)
    stream_ids = sorted({getattr(m, "stream_id", "bench") for m in inputs})
    for stream_id in stream_ids:
        outputs.extend(stage.process(EndOfStream(stream_id, "finished")))
    outputs.extend(stage.on_stop() or ())
    elapsed = time.perf_counter() - started if started is not None else 0.0
    return rate(timed, elapsed), outputs


# ---------------------------------------------------------------------------------------- model stages
def run_stream(
    stage: Stage, inputs: list[Any], warmup: int, metrics: RuntimeMetrics | None = None
) -> tuple[float, list[Any]]:
    """Feed a recorded stream through a stage the way the runtime does (``pipeline/runner.py``).

    Each run of consecutive data messages goes in batches of up to the stage's ``max_batch`` to
    ``process_batch``; each control message alone to ``process`` (a TrackEnd only if the stage accepts
    it); a TrackEnd is forwarded unless the stage answered with its own, an EndOfStream after the
    stage's outputs. ``on_start`` is not timed, ``on_stop`` is; fps over the data messages after
    ``warmup``. With ``metrics``, each call is recorded as the runtime records it (process seconds,
    batch size).
    """
    stage.on_start()
    name = stage.context.name
    max_batch = max(1, int(getattr(stage, "max_batch", 1) or 1))
    takes_ends = TrackEnd in type(stage).accepts
    outputs: list[Any] = []
    seen = timed = 0
    started: float | None = None
    index = 0
    while index < len(inputs):
        if started is None and seen >= warmup:
            started = time.perf_counter()
        message = inputs[index]
        if not isinstance(message, DATA_TYPES):
            handled = takes_ends or isinstance(message, EndOfStream)
            replies = list(stage.process(message) or ()) if handled else []
            outputs.extend(replies)
            if isinstance(message, EndOfStream) or not any(isinstance(r, TrackEnd) for r in replies):
                outputs.append(message)
            index += 1
            continue
        end = index
        while end < len(inputs) and end - index < max_batch and isinstance(inputs[end], DATA_TYPES):
            end += 1
        chunk = inputs[index:end]
        call_started = time.perf_counter()
        outputs.extend(
            stage.process_batch(chunk) if len(chunk) > 1 or max_batch > 1 else (stage.process(chunk[0]) or ())
        )
        if metrics is not None:
            metrics.process_seconds.labels(stage=name).observe(time.perf_counter() - call_started)
            metrics.batch_size.labels(stage=name).observe(len(chunk))
        seen += len(chunk)
        timed += len(chunk) if started is not None else 0
        index = end
    outputs.extend(stage.on_stop() or ())
    elapsed = time.perf_counter() - started if started is not None else 0.0
    return rate(timed, elapsed), outputs


def truncate_stream(messages: list[Any], data_messages: int) -> list[Any]:
    """The first ``data_messages`` data messages of a recorded stream (with the control messages among
    them), closed with an EndOfStream per stream when the cut removed it."""
    out: list[Any] = []
    count = 0
    for message in messages:
        if isinstance(message, DATA_TYPES):
            if count == data_messages:
                break
            count += 1
        out.append(message)
    ended = {m.stream_id for m in out if isinstance(m, EndOfStream)}
    out.extend(EndOfStream(sid, "finished") for sid in sorted({m.stream_id for m in out} - ended))
    return out


def record_runs(stage: Stage) -> Counter[tuple[str, int]] | None:
    """Count, per (stream, track), the rows the stage's scheduler picks (= rows sent to its model)."""
    scheduler = getattr(stage, "scheduler", None)
    if scheduler is None:
        return None
    runs: Counter[tuple[str, int]] = Counter()
    select = scheduler.select

    def counted(message: PersonCrops, *args: Any, **kwargs: Any) -> np.ndarray:
        rows = select(message, *args, **kwargs)
        for row in np.asarray(rows).tolist():
            runs[(message.stream_id, int(message.tracks.track_id[row]))] += 1
        return rows

    scheduler.select = counted
    return runs


def track_spans(messages: list[Any]) -> dict[tuple[str, int], tuple[float, float]]:
    """First and last stream time (pts, else capture time) each track is visible (NEW/UPDATED)."""
    from pipeline.messages import TrackState

    spans: dict[tuple[str, int], tuple[float, float]] = {}
    for message in messages:
        if not isinstance(message, PersonCrops):
            continue
        now = message.pts if message.pts is not None else message.capture_time
        visible = message.tracks.state <= TrackState.UPDATED
        for track_id in message.tracks.track_id[visible].tolist():
            key = (message.stream_id, int(track_id))
            first = spans.get(key, (now, now))[0]
            spans[key] = (first, now)
    return spans


def stream_fps(messages: list[Any]) -> float:
    """Frames per second of stream time of the recorded PersonCrops (the video's rate)."""
    times = [m.pts if m.pts is not None else m.capture_time for m in messages if isinstance(m, PersonCrops)]
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def calls_vs_length(
    runs: Counter[tuple[str, int]],
    spans: dict[tuple[str, int], tuple[float, float]],
    schedule: Any,
    video_fps: float,
) -> dict[str, Any]:
    """Whether a stage's runs per track grow with the track's life faster than its schedule allows.

    ``schedule_rate_per_s``: re-runs per second of a visible track the interval trigger gives
    (1 / every_s, or video fps / every_frames, whichever is faster); ``max_runs_over_schedule``: max
    over tracks of runs / (1 + seconds x that rate), where seconds = the track's visible span (1 = the
    schedule's rate exactly; above 1: better-crop / grade-change re-runs on top; a value near the
    video's fps / rate would mean a run per frame); ``slope_runs_per_s``: least-squares slope of runs on
    seconds over the tracks run (calls that grew with frames would give about the video's fps).
    """
    every_s = getattr(schedule, "every_s", None)
    every_frames = getattr(schedule, "every_frames", None)
    sched_rate = max(
        1.0 / every_s if every_s else 0.0, video_fps / every_frames if every_frames and video_fps > 0 else 0.0
    )
    tracks = [(key, n, spans[key][1] - spans[key][0]) for key, n in runs.items() if n and key in spans]
    out: dict[str, Any] = {
        "tracks_run": len(tracks),
        "runs": int(sum(n for _, n, _ in tracks)),
        "schedule_rate_per_s": round(sched_rate, 3),
        "max_runs_over_schedule": None,
        "worst_track": None,
        "slope_runs_per_s": None,
    }
    if not tracks:
        return out
    ratios = [n / (1.0 + seconds * sched_rate) for _, n, seconds in tracks]
    worst = int(np.argmax(ratios))
    (stream_id, track_id), n, seconds = tracks[worst]
    secs = np.array([t[2] for t in tracks])
    counts = np.array([t[1] for t in tracks], float)
    out.update(
        max_runs_over_schedule=round(ratios[worst], 3),
        worst_track={"stream": stream_id, "track_id": track_id, "runs": n, "seconds": round(seconds, 2)},
        mean_track_seconds=round(float(secs.mean()), 2),
        slope_runs_per_s=round(float(np.polyfit(secs, counts, 1)[0]), 3)
        if len(np.unique(secs)) > 1
        else None,
    )
    return out


_SKIPPED_METRICS = {
    "amodal_messages_in",
    "amodal_messages_out",
    "amodal_queue_depth",
    "amodal_capture_to_sink_seconds",
    "amodal_stage_restarts",
    "amodal_model_batch",
}


def stage_metrics(registry: Any) -> dict[str, dict[str, Any]]:
    """Per stage, from a runtime's Prometheus registry: ``process_calls`` / ``process_s`` /
    ``mean_batch`` (runtime), ``model_calls`` / ``model_s`` / ``model_rows`` / ``rows_per_model_call``
    and every other counter the stage counts (labelled ones as {label values: count})."""
    raw: dict[str, dict[str, Any]] = {}
    for family in registry.collect():
        if family.name in _SKIPPED_METRICS:
            continue
        short = family.name.removeprefix("amodal_")
        for sample in family.samples:
            stage = sample.labels.get("stage")
            suffix = sample.name[len(family.name) :]
            if stage is None or (family.type, suffix) not in {
                ("counter", "_total"),
                ("histogram", "_sum"),
                ("histogram", "_count"),
                ("gauge", ""),
            }:
                continue
            key = short + (suffix if family.type == "histogram" else "")
            extra = ",".join(v for k, v in sorted(sample.labels.items()) if k != "stage")
            entry = raw.setdefault(stage, {})
            if extra:
                entry.setdefault(key, {})[extra] = round(sample.value, 3)
            else:
                entry[key] = round(sample.value, 3)
    out: dict[str, dict[str, Any]] = {}
    for stage, entry in raw.items():
        summary: dict[str, Any] = {}
        for hist, label in (("process_seconds", "process"), ("model_seconds", "model")):
            if f"{hist}_count" in entry:
                summary[f"{label}_calls"] = int(entry.pop(f"{hist}_count"))
                summary[f"{label}_s"] = entry.pop(f"{hist}_sum")
        if "batch_size_count" in entry:
            calls = entry.pop("batch_size_count")
            summary["mean_batch"] = round(entry.pop("batch_size_sum") / calls, 2) if calls else None
        summary.update(entry)
        if summary.get("model_calls") and "model_rows" in summary:
            summary["rows_per_model_call"] = round(summary["model_rows"] / summary["model_calls"], 2)
        out[stage] = summary
    return out


def bench_person_stages(
    specs: list[Any], streams: dict[str, list[Any]], warmup: int, out_dir: Path
) -> dict[str, Any]:
    """Every model stage after the tracker (``PersonStage``), in graph order, bare on the recorded
    output of its input stage; adds each one's output to ``streams``."""
    from pipeline.metrics import RuntimeMetrics
    from stages.person_stage import PersonStage

    metrics = RuntimeMetrics()
    fps: dict[str, float] = {}
    frames: dict[str, int] = {}
    runs: dict[str, Counter[tuple[str, int]] | None] = {}
    for spec in specs:
        if not issubclass(spec.stage_class, PersonStage):
            continue
        sources = [i.source for i in spec.input_specs() if i.source in streams]
        if not sources:
            logger.warning("%s: no recorded input among %s; not measured", spec.name, spec.inputs)
            continue
        print(f"{spec.name} bare ...", file=sys.stderr)
        inputs = streams[sources[-1]]
        stage = spec.stage_class.from_config(
            spec.config, StageContext(spec.name, metrics=metrics, output_dir=out_dir)
        )
        runs[spec.name] = record_runs(stage)
        fps[spec.name], streams[spec.name] = run_stream(stage, inputs, warmup, metrics)
        frames[spec.name] = sum(isinstance(m, DATA_TYPES) for m in inputs)
        del stage
    summary = stage_metrics(metrics.registry)
    details = {name: {"fps": fps[name], "messages": frames[name], **summary.get(name, {})} for name in fps}
    return {"fps": fps, "details": details, "runs": runs}


# ---------------------------------------------------------------------------------------- graph
def build_graph(
    args: argparse.Namespace,
    mode: str,
    out_dir: Path,
    probe_path: Path,
    realtime: bool,
    frames: int | None,
    basic: bool = False,
) -> dict[str, Any]:
    """The built-in replay graph (full, or detect-and-track with ``basic``) on the benchmark video, with
    a probe fed by the last stage before the sinks that sends PersonCrops."""
    from amodal.graphs import builtin_replay_graph, register_stages
    from pipeline.registry import get_stage

    register_stages()
    graph = builtin_replay_graph(basic=basic)
    graph.update(mode=mode, output_dir=str(out_dir), plugins=[PLUGIN])
    graph["logging"]["level"] = "ERROR"
    # A stage process that finishes keeps flushing its last queued messages for linger_s; behind a
    # slow detector the 2 s default can drop the tail (and its EndOfStream), so replay waits it out.
    graph.setdefault("shutdown", {})["linger_s"] = 600.0
    if realtime:  # a live camera: native rate, short drop_oldest links keep latency bounded
        graph["links"].update(policy="drop_oldest", hwm=args.live_hwm)
    stages = []
    for spec in graph["stages"]:
        if spec["type"] == "ingest":
            spec["config"].update(
                streams=[{"id": "bench", "source": str(Path(args.video).resolve())}],
                capture_clock="wall",
                max_frames=frames,
                realtime=realtime,
            )
        elif spec["type"] == "detect":
            spec["config"].update(weights=str(Path(args.weights).resolve()), **args.detect_overrides)
        elif spec["type"].endswith("_sink") and not args.sinks:
            continue
        stages.append(spec)
    last = [
        s["name"]
        for s in stages
        if not s["type"].endswith("_sink") and PersonCrops in (get_stage(s["type"]).emits or ())
    ][-1]
    stages.append(
        {"name": "probe", "type": "bench_probe", "inputs": [last], "config": {"path": str(probe_path)}}
    )
    graph["stages"] = stages
    return graph


def bench_graph(
    args: argparse.Namespace,
    mode: str,
    realtime: bool = False,
    frames: int | None = None,
    basic: bool = False,
) -> dict[str, Any]:
    """One run of the graph; in embedded mode also each stage's metrics (``stage_metrics``)."""
    from amodal.graphs import load_app_graph
    from pipeline.runtime import EmbeddedRuntime
    from pipeline.supervisor import ProcessRuntime

    with tempfile.TemporaryDirectory(prefix=f"bench-{mode}-") as tmp:
        probe = Path(tmp) / "probe.json"
        graph = load_app_graph(
            data=build_graph(args, mode, Path(tmp) / "out", probe, realtime, frames, basic)
        )
        runtime = EmbeddedRuntime(graph) if mode == "embedded" else ProcessRuntime(graph)
        started = time.perf_counter()
        report = runtime.run()
        wall = time.perf_counter() - started
        if report.exit_code != 0:
            raise RuntimeError(f"{mode} run failed (exit {report.exit_code}): {report.error}")
        stats = probe_stats(probe, args.warmup)
        stats["run_seconds_incl_startup"] = round(wall, 2)
        if mode == "embedded":
            stats["stage_metrics"] = stage_metrics(runtime.metrics.registry)
        return stats


def bench_basic_vs_full(args: argparse.Namespace) -> dict[str, Any]:
    """The detect-and-track graph and the full graph, embedded, same frames, ``--repeats`` rounds in
    alternating order (basic, full, full, basic, ...) so drift in the machine's load hits both alike."""
    runs: dict[str, list[dict[str, Any]]] = {"basic": [], "full": []}
    order: list[dict[str, Any]] = []
    for round_ in range(args.repeats):
        for kind in ("basic", "full") if round_ % 2 == 0 else ("full", "basic"):
            print(f"{kind} graph (embedded, round {round_ + 1}/{args.repeats}) ...", file=sys.stderr)
            stats = bench_graph(args, "embedded", frames=args.frames, basic=kind == "basic")
            runs[kind].append(stats)
            order.append(
                {
                    "graph": kind,
                    "fps": stats["fps"],
                    "frames": stats["frames"],
                    "run_seconds_incl_startup": stats["run_seconds_incl_startup"],
                }
            )
    out: dict[str, Any] = {
        f"{kind}_fps": round(float(np.mean([r["fps"] for r in runs[kind]])), 2) for kind in runs
    }
    out["full_vs_basic"] = round(out["full_fps"] / out["basic_fps"], 3)
    out["graph_runs"] = order
    out["graph_stage_metrics"] = {kind: runs[kind][0].pop("stage_metrics") for kind in runs}
    for kind in runs:
        for stats in runs[kind][1:]:
            stats.pop("stage_metrics", None)
    out["basic_run"], out["full_run"] = runs["basic"][0], runs["full"][0]
    return out


# ---------------------------------------------------------------------------------------- transport
def bench_transport(sample_frame: Frame, sample_crops: PersonCrops, count: int) -> dict[str, Any]:
    """Encode + send + receive + decode per message, one sender thread, over each transport."""
    import zmq

    from pipeline.wire import decode, encode

    result: dict[str, Any] = {}
    ctx = zmq.Context()
    tmp = tempfile.mkdtemp(prefix="bench-ipc-")
    try:
        for label, message in (("frame", sample_frame), ("person_crops", sample_crops)):
            started = time.perf_counter()
            for _ in range(count):
                decode(encode(message))
            per = {"codec_only": round((time.perf_counter() - started) / count * 1e6, 1)}
            for kind in ("inproc", "ipc", "tcp"):
                pull = ctx.socket(zmq.PULL)
                if kind == "inproc":
                    endpoint = f"inproc://bench-{label}"
                    pull.bind(endpoint)
                elif kind == "ipc":
                    endpoint = f"ipc://{tmp}/{label}.sock"
                    pull.bind(endpoint)
                else:
                    pull.bind("tcp://127.0.0.1:*")
                    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
                push = ctx.socket(zmq.PUSH)
                push.connect(endpoint)

                def send(sock: Any = push, msg: Any = message) -> None:
                    for _ in range(count):
                        sock.send_multipart(encode(msg), copy=False)

                sender = threading.Thread(target=send)
                started = time.perf_counter()
                sender.start()
                for _ in range(count):
                    decode(pull.recv_multipart(copy=False))
                elapsed = time.perf_counter() - started
                sender.join()
                per[kind] = round(elapsed / count * 1e6, 1)
                push.close(linger=0)
                pull.close(linger=0)
            nbytes = sum(len(memoryview(p)) if not isinstance(p, bytes) else len(p) for p in encode(message))
            result[label] = {"bytes": nbytes, "us_per_message": per}
    finally:
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog_of(__name__), description=__doc__.splitlines()[0])
    parser.add_argument("video", help="video file to benchmark on")
    parser.add_argument("--weights", required=True, help="detector weights (.pt/.onnx/.engine/OpenVINO dir)")
    parser.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    parser.add_argument("--warmup", type=int, default=10, help="frames excluded from every fps measurement")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="rounds of basic + full graph runs, alternating their order (basic, full, "
        "full, basic, ...); the fps are the means over the rounds",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["embedded", "process"],
        choices=["embedded", "process"],
        help="modes the full graph is reported in (embedded = the full runs above)",
    )
    parser.add_argument(
        "--no-sinks",
        dest="sinks",
        action="store_false",
        help="graphs without the sqlite/jsonl/video sinks (... -> probe)",
    )
    parser.add_argument(
        "--realtime-frames",
        type=int,
        default=240,
        help="frames of an extra embedded run at native rate for live latency; 0 = skip",
    )
    parser.add_argument("--live-hwm", type=int, default=2, help="link size of the native-rate run")
    parser.add_argument(
        "--recheck-frames",
        type=int,
        default=200,
        help="re-measure the slowest stage bare on this many frames after the graph runs "
        "(the machine's load drifts); ratios use the faster of the two; 0 = skip",
    )
    parser.add_argument("--transport-messages", type=int, default=300)
    parser.add_argument(
        "--set",
        dest="detect_set",
        action="append",
        default=[],
        help="detect config override key=value (e.g. interval=2)",
    )
    parser.add_argument("--json", dest="json_path", default=None, help="also write the JSON here")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def bench_sinks(
    specs: list[Any], streams: dict[str, list[Any]], annotated: list[Frame], warmup: int
) -> dict[str, float]:
    """Every sink bare: Frame sinks on the tracker's annotated frames, the others on the recorded
    PersonCrops of their (last recorded) input stage."""
    fps: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as tmp:
        for spec in specs:
            if not spec.type.endswith("_sink"):
                continue
            print(f"{spec.name} bare ...", file=sys.stderr)
            cls = spec.stage_class
            sources = [i.source for i in spec.input_specs() if i.source in streams]
            inputs = (
                annotated
                if Frame in cls.accepts or not sources
                else [m for m in streams[sources[-1]] if isinstance(m, PersonCrops)]
            )
            sink = cls.from_config(spec.config, StageContext(spec.name, output_dir=tmp))
            fps[spec.name], _ = run_bare(sink, inputs, warmup)
    return fps


def model_call_report(specs: list[Any], person: dict[str, Any], recorded: list[Any]) -> dict[str, Any]:
    """``model_calls_per_track`` (model rows / tracks with a row) and ``model_calls_vs_track_length``."""
    spans = track_spans(recorded)
    video_fps = stream_fps(recorded)
    by_name = {spec.name: spec for spec in specs}
    per_track: dict[str, float | None] = {}
    growth: dict[str, Any] = {}
    for name, runs in person["runs"].items():
        if runs is None:
            continue
        check = calls_vs_length(runs, spans, getattr(by_name[name].config, "schedule", None), video_fps)
        rows = person["details"][name].get("model_rows", 0)
        per_track[name] = round(rows / check["tracks_run"], 2) if check["tracks_run"] else None
        growth[name] = check
    return {
        "model_calls_per_track": per_track,
        "model_calls_vs_track_length": growth,
        "tracks_seen": len(spans),
        "video_fps": round(video_fps, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.configfile import apply_overrides

    args.detect_overrides = apply_overrides({}, args.detect_set)

    from amodal.graphs import load_app_graph
    from pipeline.registry import get_stage

    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        template = load_app_graph(
            data=build_graph(args, "embedded", Path(tmp) / "out", Path(tmp) / "p.json", False, args.frames)
        )
    specs = [spec for spec in template.stages if spec.type != "bench_probe"]
    configs = {spec.name: spec for spec in specs}

    result: dict[str, Any] = {
        "video": args.video,
        "weights": args.weights,
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "warmup_frames": args.warmup,
        "graph_stages": [spec.name for spec in specs],
    }
    print(f"decode ({args.video}) ...", file=sys.stderr)
    result["decode_fps"], frames = bench_decode(args.video, args.frames)
    result["frames"] = len(frames)
    ff = bench_ffmpeg(args.video, len(frames))
    result.update(ff or {"ffmpeg_fps": None})
    result["decode_vs_ffmpeg"] = round(result["decode_fps"] / ff["ffmpeg_fps"], 3) if ff else None

    stage_fps: dict[str, float] = {}
    print("ingest bare ...", file=sys.stderr)
    stage_fps["ingest"] = bench_ingest(configs["ingest"].config)
    print("detect bare ...", file=sys.stderr)
    detect_cfg = configs["detect"].config
    detect = get_stage("detect")(detect_cfg, StageContext("detect"))
    stage_fps["detect"], detected = run_bare(detect, frames, args.warmup, batch=detect_cfg.max_batch)
    del detect
    print("track bare ...", file=sys.stderr)
    track = get_stage("track")(configs["track"].config, StageContext("track"))
    stage_fps["track"], tracked = run_bare(track, detected, args.warmup)
    annotated = [m for m in tracked if isinstance(m, Frame)]
    crops = [m for m in tracked if isinstance(m, PersonCrops)]
    # The tracker's stream as the next stages receive it: PersonCrops and TrackEnd in order, then the
    # EndOfStream the runtime forwards after the tracker's last outputs.
    recorded = [m for m in tracked if isinstance(m, (PersonCrops, TrackEnd))]
    recorded += [EndOfStream(sid, "finished") for sid in sorted({m.stream_id for m in frames})]
    streams: dict[str, list[Any]] = {"track": recorded}
    with tempfile.TemporaryDirectory(prefix="bench-person-") as tmp:
        person = bench_person_stages(specs, streams, args.warmup, Path(tmp))
    stage_fps.update(person["fps"])
    result["person_stages"] = person["details"]
    result.update(model_call_report(specs, person, recorded))
    stage_fps.update(bench_sinks(specs, streams, annotated, args.warmup))
    result["stage_fps"] = stage_fps
    result["slowest_stage"] = min(stage_fps, key=stage_fps.get)
    result["slowest_stage_fps"] = stage_fps[result["slowest_stage"]]

    sample_frame = next((f for f in detected if f.detections is not None and len(f.detections)), detected[0])
    sample_crops = max(crops, key=lambda c: len(c.tracks))
    result["transport_us"] = bench_transport(sample_frame, sample_crops, args.transport_messages)
    result["sample_sizes"] = {
        "frame_detections": len(sample_frame.detections or ()),
        "crops_per_message": len(sample_crops.tracks),
    }
    slowest = result["slowest_stage"]
    recheck_inputs = {"ingest": None, "detect": frames, "track": detected}.get(slowest)
    if slowest in person["fps"]:
        sources = [i.source for i in configs[slowest].input_specs() if i.source in streams]
        recheck_inputs = streams[sources[-1]]
    del tracked, annotated, crops, streams, recorded, person

    result.update(bench_basic_vs_full(args))
    latency: dict[str, Any] = {}
    for mode in ("embedded", "process"):
        if mode not in args.modes:
            result[f"{mode}_fps"] = result[f"{mode}_ratio"] = None
            continue
        if mode == "embedded":  # the built-in replay graph in its own mode: the full runs above
            stats = result["full_run"]
            result["embedded_fps"] = result["full_fps"]
        else:
            print(f"{mode} graph ...", file=sys.stderr)
            stats = bench_graph(args, mode, frames=args.frames)
            result[f"{mode}_fps"] = stats["fps"]
            result[f"{mode}_run"] = stats
        result[f"{mode}_ratio"] = round(result[f"{mode}_fps"] / result["slowest_stage_fps"], 3)
        latency[f"{mode}_fast"] = stats["latency_ms"]
    if args.recheck_frames and recheck_inputs is not None:
        print(f"{slowest} bare again ...", file=sys.stderr)
        spec = configs[slowest]
        with tempfile.TemporaryDirectory(prefix="bench-recheck-") as tmp:
            stage = spec.stage_class.from_config(spec.config, StageContext(slowest, output_dir=tmp))
            if slowest in result["person_stages"]:
                inputs = truncate_stream(recheck_inputs, args.recheck_frames)
                again, _ = run_stream(stage, inputs, args.warmup)
            else:
                batch = getattr(spec.config, "max_batch", 1) if slowest == "detect" else 1
                again, _ = run_bare(stage, recheck_inputs[: args.recheck_frames], args.warmup, batch=batch)
        result["slowest_stage_fps_first"] = result["slowest_stage_fps"]
        result["slowest_stage_fps_recheck"] = again
        result["slowest_stage_fps"] = max(result["slowest_stage_fps"], again)
        for mode in ("embedded", "process"):
            if result.get(f"{mode}_fps") is not None:
                result[f"{mode}_ratio"] = round(result[f"{mode}_fps"] / result["slowest_stage_fps"], 3)
    del frames, detected, recheck_inputs
    if args.realtime_frames:
        print("embedded graph at native rate ...", file=sys.stderr)
        stats = bench_graph(args, "embedded", realtime=True, frames=args.realtime_frames)
        stats.pop("stage_metrics", None)
        latency["embedded_realtime"] = stats["latency_ms"]
        result["realtime_run"] = stats
    result["latency_ms"] = latency
    result["latency_p50_ms"] = latency.get("embedded_fast", {}).get("p50")
    result["latency_p95_ms"] = latency.get("embedded_fast", {}).get("p95")
    result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
