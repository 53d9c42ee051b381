"""Benchmark a graph against its own stages run bare, in the same run (ratios, not absolutes).

    amodal bench ../shared/media/crosswalk-occlusions.mp4 \\
        --weights ../shared/models/yolov8n_int8_openvino_model --json bench.json
    amodal bench VIDEO --config GRAPH.yaml [--basic-config BASIC.yaml] [--set detect.conf=0.4] ...

The graphs are ``--config`` (default: the built-in replay graph, ``configs/replay.yaml``) and
``--basic-config`` (default: the built-in detect-and-track graph, ``configs/replay_basic.yaml``). Each
gets the video as its single ingest stage's stream the way ``amodal replay`` does
(``amodal.replay.for_files``), and the ``--set`` overrides in ``amodal replay``'s spelling
(``detect.conf=0.4``, ``links.hwm=32``) apply to both; an override that names a stage only the other
graph has is skipped for this one. ``--weights W`` is short for ``--set detect.weights=W``.

Measures, on one video:

* ``decode_fps``: PyAV decode to BGR (the ingest decoder, no runtime), and ``ffmpeg_fps``: ``ffmpeg
  -f null`` decode of the same frames (when ffmpeg is installed); ``decode_vs_ffmpeg`` is their ratio;
* every stage of the ``--config`` graph bare on recorded inputs (``stage_fps``), walked in topological
  order; no stage is named here. A source stage (ingest) is its ``run()`` decoding into Frame messages,
  timed whole. Every other stage is built from its spec and fed the recorded output of its input
  stage(s): from each input, the data messages its class accepts plus every control message, as the
  links route them. Inputs from several stages (the video sink's ``[track, identify]``) are merged in
  sequence order, and each stream's EndOfStream comes once, after its last message. The stage is fed
  as the runtime feeds it (``run_stream``): runs of data messages in batches of the stage's
  ``max_batch`` (detect's from its config), control messages one at a time, ``on_start`` not timed. Its
  output, with the TrackEnd / EndOfStream the runtime forwards, is recorded and is what the next stages
  get. A stage's fps counts frames (distinct stream and seq of its data messages) after ``--warmup``,
  so a fan-in stage's several messages per frame count once. ``bare_stages`` lists each stage's fps,
  inputs, ``max_batch`` and data messages in; ``slowest_stage_fps`` is the minimum. The slowest stage
  (unless it is a source) is measured again after the graphs run (``--recheck-frames``) and the faster
  of the two is used, so a load spike from other processes during the bare run cannot flatter the
  ratios;
* ``person_stages``: per model stage (a ``PersonStage``), its model calls / rows / seconds and schedule
  counts in the bare run; ``model_calls_per_track``: per stage with a scheduler, model rows / tracks
  that got at least one row, and ``model_calls_vs_track_length``: per track, runs against its visible
  length in seconds (``max_runs_over_schedule`` = max over tracks of runs / (1 + seconds x schedule
  rate), and the least-squares slope of runs on seconds), so a schedule whose calls grow with frames
  shows;
* the basic graph and the full graph (``--config``), end to end on the same frames in embedded mode,
  alternated ``--repeats`` times (basic, full, full, basic, ...): ``basic_fps``, ``full_fps`` (means
  over the runs), ``full_vs_basic`` = full_fps / basic_fps, and ``graph_stage_metrics``: each stage's
  process / model seconds and model counts from the runtime's Prometheus registry (first run of each
  graph);
* the full graph in embedded mode (= ``embedded_fps``: the full runs above) and in process mode (one
  process per stage, ipc://); ``*_ratio`` = graph fps / slowest bare stage fps. A graph's fps is taken
  at a probe over the frames after ``--warmup`` that were decoded after the first frame reached the
  probe (so model loading and the backlog it leaves are not counted, as they are not for bare stages);
* ``latency_ms``: capture (wall clock at decode) to probe, p50/p95 over the frames decoded after the
  first frame reached the probe (steady state), for each mode as fast as possible
  (dominated by queueing behind the slowest stage, by design of ``block`` links) and, with
  ``--realtime-frames``, at the video's native rate over ``drop_oldest`` links (what a live camera
  sees; ``realtime_run.frames`` says how many of the decoded frames got through);
* ``transport_us``: per-message cost of encode + send + receive + decode for a Frame (full image +
  detections: the first recorded Frame that has some) and a PersonCrops (the fullest of the first
  stage that emits them) over inproc://, ipc:// and tcp://.

The probe (stage ``probe`` of type ``bench_probe``) is fed by the deepest stage whose class declares it
emits PersonCrops: the one with the longest input path from a source, the later one in the config on a
tie (``probe_source``). Sinks emit nothing, so in a graph with sinks this is the last stage before them:
identify in the built-in full graph, track in the basic one. ``--no-sinks`` drops every stage that
emits nothing and gives the same answer. The probe type is registered by this module and loaded into
the graph through ``plugins``, so it also runs inside process-mode workers. Run from the repo root. The
JSON has at least decode_fps, ffmpeg_fps, slowest_stage_fps, embedded_fps, process_fps,
embedded_ratio, process_ratio, basic_fps, full_fps, full_vs_basic and model_calls_per_track.
"""

from __future__ import annotations

import argparse
import heapq
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from amodal.commands import prog_of
from pipeline.configfile import ConfigError, load_yaml
from pipeline.graph_settings import GraphConfig
from pipeline.messages import CONTROL_TYPES, DATA_TYPES, EndOfStream, Frame, PersonCrops, TrackEnd
from pipeline.metrics import RuntimeMetrics
from pipeline.registry import register_stage
from pipeline.stage import SourceStage, Stage, StageContext

logger = logging.getLogger("bench_pipeline")

PLUGIN = "amodal.commands.bench_pipeline"
#: the name of the probe stage in the graphs the bench runs
PROBE = "probe"


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
def bench_decode(video: str, frames: int | None) -> tuple[float, int]:
    """The ingest decoder alone (PyAV -> BGR): its fps and the frames it decoded."""
    from stages.media.decoder import DecodedFrame, DecoderOptions, StreamDecoder
    from stages.media.sources import resolve_source

    decoder = StreamDecoder("bench", resolve_source(video), DecoderOptions(max_frames=frames))
    count = 0
    started = time.perf_counter()
    for item in decoder.frames(threading.Event()):
        count += isinstance(item, DecodedFrame)
    return rate(count, time.perf_counter() - started), count


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


# ---------------------------------------------------------------------------------------- bare stages
def frame_key(message: Any) -> tuple[str, int]:
    """The frame a data message belongs to: several messages of one frame (a tracker's Frame and
    PersonCrops, a fan-in stage's inputs) count as one frame in a stage's fps."""
    return (message.stream_id, message.seq)


def run_source(stage: SourceStage) -> tuple[float, list[Any]]:
    """A source stage's ``run()`` with an emit that records: fps over all its frames (the decode threads
    and hand-off buffer included, ``on_start`` not), and its messages, closed as the runtime closes
    them: one EndOfStream per stream that did not end."""
    stage.on_start()
    outputs: list[Any] = []
    started = time.perf_counter()
    stage.run(outputs.append, threading.Event())
    elapsed = time.perf_counter() - started
    outputs.extend(stage.on_stop() or ())
    data = [m for m in outputs if isinstance(m, DATA_TYPES)]
    ended = {m.stream_id for m in outputs if isinstance(m, EndOfStream)}
    outputs.extend(EndOfStream(sid, "finished") for sid in sorted({m.stream_id for m in data} - ended))
    return rate(len({frame_key(m) for m in data}), elapsed), outputs


def run_stream(
    stage: Stage, inputs: list[Any], warmup: int, metrics: RuntimeMetrics | None = None
) -> tuple[float, list[Any]]:
    """Feed a recorded stream through a stage the way the runtime does (``pipeline/runner.py``).

    Each run of consecutive data messages goes in batches of up to the stage's ``max_batch`` to
    ``process_batch``; each control message alone to ``process`` (a TrackEnd only if the stage accepts
    it); a TrackEnd is forwarded unless the stage answered with its own, an EndOfStream after the
    stage's outputs. ``on_start`` is not timed, ``on_stop`` is; fps over the frames (``frame_key``)
    after the first ``warmup``. With ``metrics``, each call is recorded as the runtime records it
    (process seconds, batch size).
    """
    stage.on_start()
    name = stage.context.name
    max_batch = max(1, int(getattr(stage, "max_batch", 1) or 1))
    takes_ends = TrackEnd in type(stage).accepts
    outputs: list[Any] = []
    seen: set[tuple[str, int]] = set()
    timed = 0
    started: float | None = None
    index = 0
    while index < len(inputs):
        if started is None and len(seen) >= warmup:
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
        new = {frame_key(m) for m in chunk} - seen
        seen |= new
        timed += len(new) if started is not None else 0
        index = end
    outputs.extend(stage.on_stop() or ())
    elapsed = time.perf_counter() - started if started is not None else 0.0
    return rate(timed, elapsed), outputs


def truncate_stream(messages: list[Any], frames: int) -> list[Any]:
    """The messages of the first ``frames`` frames (``frame_key``) of a recorded stream, with the
    control messages among them, closed with an EndOfStream per stream when the cut removed it."""
    out: list[Any] = []
    seen: set[tuple[str, int]] = set()
    for message in messages:
        if isinstance(message, DATA_TYPES) and frame_key(message) not in seen:
            if len(seen) == frames:
                break
            seen.add(frame_key(message))
        out.append(message)
    ended = {m.stream_id for m in out if isinstance(m, EndOfStream)}
    out.extend(EndOfStream(sid, "finished") for sid in sorted({m.stream_id for m in out} - ended))
    return out


def merge_inputs(spec: Any, outputs: dict[str, list[Any]]) -> list[Any]:
    """What a stage receives from the recorded outputs of its input stages, as the links route them:
    from each input, the data messages the stage's class accepts and every control message.

    From one input, that stream as it is. From several, merged in sequence order (each input's own
    order kept, the earlier-listed input first on a tie), and each stream's EndOfStream once, after the
    stream's last message, as the runtime hands it over once every input carrying it has ended.
    """
    wanted = (*spec.stage_class.accepts, *CONTROL_TYPES)
    streams = [[m for m in outputs[item.source] if isinstance(m, wanted)] for item in spec.input_specs()]
    if len(streams) == 1:
        return streams[0]
    ends: dict[str, EndOfStream] = {}
    for stream in streams:
        for message in stream:
            if isinstance(message, EndOfStream):
                ends.setdefault(message.stream_id, message)
    body = list(
        heapq.merge(
            *([m for m in stream if not isinstance(m, EndOfStream)] for stream in streams),
            key=lambda m: m.seq,
        )
    )
    last = {m.stream_id: index for index, m in enumerate(body)}
    merged: list[Any] = []
    for index, message in enumerate(body):
        merged.append(message)
        if last[message.stream_id] == index and message.stream_id in ends:
            merged.append(ends.pop(message.stream_id))
    merged.extend(ends.values())  # streams that ended without a message on these links
    return merged


def topological_order(graph: GraphConfig) -> list[Any]:
    """The graph's stage specs, each after all its inputs (config order among those ready)."""
    remaining = list(graph.stages)
    done: set[str] = set()
    order: list[Any] = []
    while remaining:
        spec = next(s for s in remaining if all(i.source in done for i in s.input_specs()))
        order.append(spec)
        done.add(spec.name)
        remaining.remove(spec)
    return order


def stage_depths(graph: GraphConfig) -> dict[str, int]:
    """Per stage, the length of the longest input path from a source (a source: 0)."""
    depth: dict[str, int] = {}
    for spec in topological_order(graph):
        depth[spec.name] = 1 + max((depth[i.source] for i in spec.input_specs()), default=-1)
    return depth


def probe_source(graph: GraphConfig) -> str:
    """The stage the probe listens to: the deepest stage whose class declares it emits PersonCrops
    (``stage_depths``; on a tie, the later one in the config). Sinks emit nothing, so with sinks this
    is the last stage before them (identify in the built-in full graph, track in the basic one), and
    the same stage without them."""
    depth = stage_depths(graph)
    candidates = [s for s in graph.stages if PersonCrops in (s.stage_class.emits or ())]
    if not candidates:
        raise ConfigError(
            "amodal bench measures a graph at a probe fed PersonCrops, but no stage of this graph "
            f"emits PersonCrops ({[s.name for s in graph.stages]})"
        )
    return max(reversed(candidates), key=lambda s: depth[s.name]).name


def sink_names(graph: GraphConfig) -> set[str]:
    """The stages whose class declares it emits nothing (what ``--no-sinks`` drops)."""
    return {s.name for s in graph.stages if s.stage_class.emits == ()}


@dataclass
class BareRun:
    """Every stage of a graph run bare: per stage (walk order), its fps, recorded input and output."""

    order: list[str]
    fps: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, list[Any]] = field(default_factory=dict)  # non-source stages only
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # fps, inputs, max_batch, ...
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage_metrics of the bare run
    runs: dict[str, Counter[tuple[str, int]]] = field(default_factory=dict)  # stages with a scheduler

    def first_output(self, kind: type) -> list[Any]:
        """The recorded output of the first stage (walk order) that emitted a ``kind`` message."""
        for name in self.order:
            if any(isinstance(m, kind) for m in self.outputs[name]):
                return self.outputs[name]
        return []


def bench_stages(graph: GraphConfig, warmup: int, out_dir: Path) -> BareRun:
    """Every stage of ``graph`` bare on recorded inputs, in topological order (module docstring)."""
    order = topological_order(graph)
    bare = BareRun(order=[spec.name for spec in order])
    metrics = RuntimeMetrics()
    for spec in order:
        print(f"{spec.name} bare ...", file=sys.stderr)
        context = StageContext(spec.name, metrics=metrics, output_dir=out_dir)
        stage = spec.stage_class.from_config(spec.config, context)
        sources = [item.source for item in spec.input_specs()]
        if isinstance(stage, SourceStage):
            fps, outputs = run_source(stage)
            messages = sum(isinstance(m, DATA_TYPES) for m in outputs)
        else:
            inputs = bare.inputs[spec.name] = merge_inputs(spec, bare.outputs)
            runs = record_runs(stage)
            if runs is not None:
                bare.runs[spec.name] = runs
            fps, outputs = run_stream(stage, inputs, warmup, metrics)
            messages = sum(isinstance(m, DATA_TYPES) for m in inputs)
        bare.fps[spec.name], bare.outputs[spec.name] = fps, outputs
        batch = None if isinstance(stage, SourceStage) else max(1, int(getattr(stage, "max_batch", 1) or 1))
        bare.details[spec.name] = {"fps": fps, "inputs": sources, "max_batch": batch, "messages": messages}
        del stage
    bare.metrics = stage_metrics(metrics.registry)
    return bare


# ---------------------------------------------------------------------------------------- model stages
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


# ---------------------------------------------------------------------------------------- graph
def raw_graph(args: argparse.Namespace, basic: bool = False) -> dict[str, Any]:
    """The raw ``--config`` graph (``--basic-config`` with ``basic``), or the built-in one."""
    from amodal.graphs import builtin_replay_graph

    path = args.basic_config if basic else args.config
    return load_yaml(path) if path else builtin_replay_graph(basic=basic)


def stage_names(raw: dict[str, Any]) -> set[str]:
    stages = raw.get("stages")
    return {s.get("name") for s in stages if isinstance(s, dict)} if isinstance(stages, list) else set()


def bench_overrides(weights: str | None, items: list[str], known: set[str]) -> list[str]:
    """``--weights`` and ``--set`` as graph overrides (``amodal replay --set``'s spelling): ``--weights
    W`` is ``detect.weights=W`` (resolved). ``known``: the stage names of both graphs."""
    out: list[str] = []
    if weights is not None:
        if "detect" not in known:
            raise ConfigError(
                "--weights sets detect.weights, but no graph has a stage named detect; "
                "use --set STAGE.weights=PATH"
            )
        out.append(f"detect.weights={json.dumps(str(Path(weights).resolve()))}")
    return out + list(items)


def overrides_for(items: list[str], here: set[str], known: set[str]) -> list[str]:
    """The overrides for a graph with stages ``here``: those naming a stage of ``known`` that this
    graph lacks are skipped (the other graph's stages); everything else stays, so a typo still fails."""
    heads = [item.partition("=")[0].strip().partition(".")[0] for item in items]
    return [item for item, head in zip(items, heads, strict=True) if head in here or head not in known]


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    if not isinstance(raw.get(key), dict):
        raw[key] = {}
    return raw[key]


def build_graph(
    args: argparse.Namespace,
    mode: str,
    out_dir: Path,
    probe_path: Path | None,
    realtime: bool,
    frames: int | None,
    basic: bool = False,
) -> GraphConfig:
    """The ``--config`` graph (``--basic-config`` with ``basic``) on the benchmark video in ``mode``,
    with the ``--set`` overrides, without its sinks under ``--no-sinks``, and with the probe fed by
    ``probe_source`` when ``probe_path`` is given."""
    from amodal.graphs import load_app_graph
    from amodal.replay import for_files, stream_ids

    video = Path(args.video).resolve()
    raw = for_files(raw_graph(args, basic), [video], stream_ids([video]), str(out_dir))
    own = raw.get("plugins")
    raw.update(mode=mode, plugins=[*(own if isinstance(own, list) else []), PLUGIN])
    _section(raw, "logging")["level"] = "ERROR"
    if realtime:  # a live camera: native rate, short drop_oldest links keep latency bounded
        _section(raw, "links").update(policy="drop_oldest", hwm=args.live_hwm)
    names = stage_names(raw)
    graph = load_app_graph(data=raw, overrides=overrides_for(args.overrides, names, args.known_stages))
    sources = [s.name for s in graph.stages if issubclass(s.stage_class, SourceStage)]
    if len(sources) != 1:
        raise ConfigError(f"amodal bench needs a graph with one source stage, this one has {sources}")
    by_name = {s["name"]: s for s in raw["stages"]}
    source = by_name[sources[0]]
    source["config"] = {
        **(source.get("config") or {}),
        "capture_clock": "wall",
        "max_frames": frames,
        "realtime": realtime,
    }
    drop = set() if args.sinks else sink_names(graph)
    raw["stages"] = [s for s in raw["stages"] if s["name"] not in drop]
    if probe_path is not None:
        if PROBE in names:
            raise ConfigError(f"stage name {PROBE!r} is the bench's probe; rename that stage of the graph")
        raw["stages"].append(
            {
                "name": PROBE,
                "type": "bench_probe",
                "inputs": [probe_source(graph)],
                "config": {"path": str(probe_path)},
            }
        )
    return load_app_graph(data=raw, overrides=overrides_for(args.overrides, names - drop, args.known_stages))


def bench_graph(
    args: argparse.Namespace,
    mode: str,
    realtime: bool = False,
    frames: int | None = None,
    basic: bool = False,
) -> dict[str, Any]:
    """One run of the graph; in embedded mode also each stage's metrics (``stage_metrics``)."""
    from pipeline.runtime import EmbeddedRuntime
    from pipeline.supervisor import ProcessRuntime

    with tempfile.TemporaryDirectory(prefix=f"bench-{mode}-") as tmp:
        probe = Path(tmp) / "probe.json"
        graph = build_graph(args, mode, Path(tmp) / "out", probe, realtime, frames, basic)
        runtime = EmbeddedRuntime(graph) if mode == "embedded" else ProcessRuntime(graph)
        started = time.perf_counter()
        report = runtime.run()
        wall = time.perf_counter() - started
        if report.exit_code != 0:
            raise RuntimeError(f"{mode} run failed (exit {report.exit_code}): {report.error}")
        stats = probe_stats(probe, args.warmup)
        stats["probe_source"] = graph.stage(PROBE).input_specs()[0].source
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
def bench_transport(sample_frame: Frame, sample_crops: PersonCrops | None, count: int) -> dict[str, Any]:
    """Encode + send + receive + decode per message, one sender thread, over each transport (the
    PersonCrops only when the graph makes one)."""
    import zmq

    from pipeline.wire import decode, encode

    result: dict[str, Any] = {}
    ctx = zmq.Context()
    tmp = tempfile.mkdtemp(prefix="bench-ipc-")
    try:
        for label, message in (("frame", sample_frame), ("person_crops", sample_crops)):
            if message is None:
                continue
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
    parser.add_argument(
        "--config",
        default=None,
        metavar="GRAPH.yaml",
        help="graph YAML benchmarked end to end and stage by stage bare (default: the built-in "
        "replay graph, configs/replay.yaml)",
    )
    parser.add_argument(
        "--basic-config",
        default=None,
        metavar="GRAPH.yaml",
        help="graph YAML the full graph is compared with end to end (default: the built-in "
        "detect-and-track graph, configs/replay_basic.yaml)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help="detector weights (.pt/.onnx/.engine/OpenVINO dir): short for --set detect.weights=PATH",
    )
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
        help="graphs without their sinks, the stages that emit nothing (... -> probe)",
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
    parser.add_argument(
        "--transport-messages",
        type=int,
        default=300,
        help="messages per transport in the transport_us figure",
    )
    parser.add_argument(
        "--set",
        dest="set_items",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="graph override as in amodal replay --set (detect.conf=0.4, links.hwm=32), for both "
        "graphs (skipped for a graph without the stage it names)",
    )
    parser.add_argument("--json", dest="json_path", default=None, help="also write the JSON here")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, plus ``known_stages`` (the stage names of both graphs) and ``overrides`` (``--weights``
    and ``--set`` as graph overrides, ``bench_overrides``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.known_stages = stage_names(raw_graph(args)) | stage_names(raw_graph(args, basic=True))
    args.overrides = bench_overrides(args.weights, args.set_items, args.known_stages)
    return args


def model_call_report(graph: GraphConfig, bare: BareRun) -> dict[str, Any]:
    """``model_calls_per_track`` (model rows / tracks with a row) and ``model_calls_vs_track_length``
    for every stage with a scheduler, each against the tracks of its own recorded input; ``tracks_seen``
    and ``video_fps`` from the first stage that emits PersonCrops (the tracker)."""
    per_track: dict[str, float | None] = {}
    growth: dict[str, Any] = {}
    for name, runs in bare.runs.items():
        inputs = bare.inputs[name]
        schedule = getattr(graph.stage(name).config, "schedule", None)
        check = calls_vs_length(runs, track_spans(inputs), schedule, stream_fps(inputs))
        rows = bare.metrics.get(name, {}).get("model_rows", 0)
        per_track[name] = round(rows / check["tracks_run"], 2) if check["tracks_run"] else None
        growth[name] = check
    crops = bare.first_output(PersonCrops)
    return {
        "model_calls_per_track": per_track,
        "model_calls_vs_track_length": growth,
        "tracks_seen": len(track_spans(crops)),
        "video_fps": round(stream_fps(crops), 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from stages.person_stage import PersonStage

    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        graph = build_graph(args, "embedded", Path(tmp) / "out", None, False, args.frames)

    result: dict[str, Any] = {
        "video": args.video,
        "config": args.config or "built-in replay graph",
        "basic_config": args.basic_config or "built-in basic replay graph",
        "weights": args.weights,
        "overrides": args.overrides,
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "warmup_frames": args.warmup,
        "graph_stages": [spec.name for spec in graph.stages],
    }
    print(f"decode ({args.video}) ...", file=sys.stderr)
    result["decode_fps"], result["frames"] = bench_decode(args.video, args.frames)
    ff = bench_ffmpeg(args.video, result["frames"])
    result.update(ff or {"ffmpeg_fps": None})
    result["decode_vs_ffmpeg"] = round(result["decode_fps"] / ff["ffmpeg_fps"], 3) if ff else None

    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        bare = bench_stages(graph, args.warmup, Path(tmp))
    result["stage_fps"] = stage_fps = bare.fps
    result["bare_stages"] = bare.details
    result["person_stages"] = {
        spec.name: {"fps": bare.fps[spec.name], "messages": bare.details[spec.name]["messages"]}
        | bare.metrics.get(spec.name, {})
        for spec in graph.stages
        if issubclass(spec.stage_class, PersonStage)
    }
    result.update(model_call_report(graph, bare))
    result["slowest_stage"] = min(stage_fps, key=stage_fps.get)
    result["slowest_stage_fps"] = stage_fps[result["slowest_stage"]]

    frames = [m for name in bare.order for m in bare.outputs[name] if isinstance(m, Frame)]
    sample_frame = next((f for f in frames if f.detections is not None and len(f.detections)), frames[0])
    crops = [m for m in bare.first_output(PersonCrops) if isinstance(m, PersonCrops)]
    sample_crops = max(crops, key=lambda c: len(c.tracks)) if crops else None
    result["transport_us"] = bench_transport(sample_frame, sample_crops, args.transport_messages)
    result["sample_sizes"] = {
        "frame_detections": len(sample_frame.detections or ()),
        "crops_per_message": len(sample_crops.tracks) if sample_crops is not None else None,
    }
    slowest = result["slowest_stage"]
    recheck_inputs = bare.inputs.get(slowest)  # none for a source: not measured again
    if recheck_inputs is not None:
        recheck_inputs = truncate_stream(recheck_inputs, args.recheck_frames)
    del bare, frames, crops, sample_frame, sample_crops

    result.update(bench_basic_vs_full(args))
    latency: dict[str, Any] = {}
    for mode in ("embedded", "process"):
        if mode not in args.modes:
            result[f"{mode}_fps"] = result[f"{mode}_ratio"] = None
            continue
        if mode == "embedded":  # the full graph in its own mode: the full runs above
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
        spec = graph.stage(slowest)
        with tempfile.TemporaryDirectory(prefix="bench-recheck-") as tmp:
            stage = spec.stage_class.from_config(spec.config, StageContext(slowest, output_dir=tmp))
            again, _ = run_stream(stage, recheck_inputs, args.warmup)
        result["slowest_stage_fps_first"] = result["slowest_stage_fps"]
        result["slowest_stage_fps_recheck"] = again
        result["slowest_stage_fps"] = max(result["slowest_stage_fps"], again)
        for mode in ("embedded", "process"):
            if result.get(f"{mode}_fps") is not None:
                result[f"{mode}_ratio"] = round(result[f"{mode}_fps"] / result["slowest_stage_fps"], 3)
    del recheck_inputs
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
