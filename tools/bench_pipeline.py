"""Benchmark the pipeline against its own stages run bare, in the same run (ratios, not absolutes).

    python tools/bench_pipeline.py ../shared/media/crosswalk-occlusions.mp4 \
        --weights ../shared/models/yolov8n_int8_openvino_model --json bench.json

Measures, on one video:

* ``decode_fps``: PyAV decode to BGR (the ingest decoder, no runtime), and ``ffmpeg_fps``: ``ffmpeg
  -f null`` decode of the same frames (when ffmpeg is installed); ``decode_vs_ffmpeg`` is their ratio;
* each stage bare on recorded inputs: ingest (decode threads + Frame messages), detect on the
  decoded frames (in batches of its ``max_batch``), track on the recorded detections, and every
  sink on the recorded tracks; ``slowest_stage_fps`` is the minimum. The slowest stage is measured
  again after the graph runs (``--recheck-frames``) and the faster of the two is used, so a load
  spike from other processes during the bare run cannot flatter the ratios;
* the whole graph (the built-in replay graph: ingest -> detect -> track -> sqlite/jsonl/video sinks,
  plus a probe sink) in embedded mode (threads, inproc://) and in process mode (one process per
  stage, ipc://); ``*_ratio`` = graph fps / slowest bare stage fps. The graph's fps is taken at the
  probe, after ``--warmup`` frames (so model loading is not counted, as it is not for bare stages);
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
embedded_ratio and process_ratio.
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
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from pipeline.messages import EndOfStream, Frame, PersonCrops  # noqa: E402
from pipeline.registry import register_stage  # noqa: E402
from pipeline.stage import Stage, StageContext  # noqa: E402

logger = logging.getLogger("bench_pipeline")

PLUGIN = "tools.bench_pipeline"


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
    data = json.loads(path.read_text())
    arrivals, captures = data["arrivals"], data["captures"]
    n = len(arrivals)
    if n <= warmup + 1:
        return {"frames": n, "fps": float("nan"), "latency_ms": percentiles([])}
    fps = rate(n - 1 - warmup, arrivals[-1] - arrivals[warmup])
    # Steady state only: frames decoded before the first one reached the probe waited for model loading.
    latencies = [a - c for a, c in zip(arrivals, captures, strict=True) if c >= arrivals[0]]
    return {"frames": n, "fps": fps, "latency_ms": percentiles(latencies), "latency_samples": len(latencies)}


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
        cmd = [ffmpeg, "-hide_banner", "-nostats", "-benchmark", "-nostdin", "-i", video,
               "-frames:v", str(frames), *extra, "-f", "null", "-"]
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
        chunk = inputs[index:index + batch]
        outputs.extend(stage.process_batch(chunk) if batch > 1 else stage.process(chunk[0]))
        if started is not None:
            timed += len(chunk)
    stream_ids = sorted({getattr(m, "stream_id", "bench") for m in inputs})
    for stream_id in stream_ids:
        outputs.extend(stage.process(EndOfStream(stream_id, "finished")))
    outputs.extend(stage.on_stop() or ())
    elapsed = time.perf_counter() - started if started is not None else 0.0
    return rate(timed, elapsed), outputs


# ---------------------------------------------------------------------------------------- graph
def build_graph(args: argparse.Namespace, mode: str, out_dir: Path, probe_path: Path, realtime: bool,
                frames: int | None) -> dict[str, Any]:
    from pipeline.defaults import default_replay_graph

    graph = default_replay_graph()
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
            spec["config"].update(streams=[{"id": "bench", "source": str(Path(args.video).resolve())}],
                                  capture_clock="wall", max_frames=frames, realtime=realtime)
        elif spec["type"] == "detect":
            spec["config"].update(weights=str(Path(args.weights).resolve()), **args.detect_overrides)
        elif spec["type"].endswith("_sink") and not args.sinks:
            continue
        stages.append(spec)
    stages.append({"name": "probe", "type": "bench_probe", "inputs": ["track"],
                   "config": {"path": str(probe_path)}})
    graph["stages"] = stages
    return graph


def bench_graph(args: argparse.Namespace, mode: str, realtime: bool = False,
                frames: int | None = None) -> dict[str, Any]:
    from pipeline.graph import load_graph
    from pipeline.runtime import EmbeddedRuntime
    from pipeline.supervisor import ProcessRuntime

    with tempfile.TemporaryDirectory(prefix=f"bench-{mode}-") as tmp:
        probe = Path(tmp) / "probe.json"
        graph = load_graph(data=build_graph(args, mode, Path(tmp) / "out", probe, realtime, frames))
        runtime = EmbeddedRuntime(graph) if mode == "embedded" else ProcessRuntime(graph)
        started = time.perf_counter()
        report = runtime.run()
        wall = time.perf_counter() - started
        if report.exit_code != 0:
            raise RuntimeError(f"{mode} run failed (exit {report.exit_code}): {report.error}")
        stats = probe_stats(probe, args.warmup)
        stats["run_seconds_incl_startup"] = round(wall, 2)
        return stats


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
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", help="video file to benchmark on")
    parser.add_argument("--weights", required=True, help="detector weights (.pt/.onnx/.engine/OpenVINO dir)")
    parser.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    parser.add_argument("--warmup", type=int, default=10, help="frames excluded from every fps measurement")
    parser.add_argument("--modes", nargs="+", default=["embedded", "process"],
                        choices=["embedded", "process"])
    parser.add_argument("--no-sinks", dest="sinks", action="store_false",
                        help="graph without the sqlite/jsonl/video sinks (ingest->detect->track->probe)")
    parser.add_argument("--realtime-frames", type=int, default=240,
                        help="frames of an extra embedded run at native rate for live latency; 0 = skip")
    parser.add_argument("--live-hwm", type=int, default=2, help="link size of the native-rate run")
    parser.add_argument("--recheck-frames", type=int, default=200,
                        help="re-measure the slowest stage bare on this many frames after the graph runs "
                        "(the machine's load drifts); ratios use the faster of the two; 0 = skip")
    parser.add_argument("--transport-messages", type=int, default=300)
    parser.add_argument("--set", dest="detect_set", action="append", default=[],
                        help="detect config override key=value (e.g. interval=2)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.configfile import apply_overrides

    args.detect_overrides = apply_overrides({}, args.detect_set)

    from pipeline.graph import load_graph
    from pipeline.registry import get_stage

    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        template = load_graph(data=build_graph(args, "embedded", Path(tmp) / "out", Path(tmp) / "p.json",
                                               False, args.frames))
    configs = {spec.name: spec for spec in template.stages}

    result: dict[str, Any] = {"video": args.video, "weights": args.weights, "cpu_count": os.cpu_count(),
                              "warmup_frames": args.warmup}
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
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as tmp:
        for name, spec in configs.items():
            if not spec.type.endswith("_sink"):
                continue
            print(f"{name} bare ...", file=sys.stderr)
            cls = get_stage(spec.type)
            inputs = annotated if Frame in cls.accepts else crops
            sink = cls(spec.config, StageContext(name, output_dir=tmp))
            stage_fps[name], _ = run_bare(sink, inputs, args.warmup)
    result["stage_fps"] = stage_fps
    result["slowest_stage"] = min(stage_fps, key=stage_fps.get)
    result["slowest_stage_fps"] = stage_fps[result["slowest_stage"]]

    tracks_frames = max(1, len(crops))
    sample_frame = next((f for f in detected if f.detections is not None and len(f.detections)), detected[0])
    sample_crops = max(crops[:tracks_frames], key=lambda c: len(c.tracks))
    result["transport_us"] = bench_transport(sample_frame, sample_crops, args.transport_messages)
    result["sample_sizes"] = {"frame_detections": len(sample_frame.detections or ()),
                              "crops_per_message": len(sample_crops.tracks)}
    recheck_inputs = {"ingest": None, "detect": frames, "track": detected}.get(result["slowest_stage"])
    del tracked, annotated, crops

    latency: dict[str, Any] = {}
    for mode in ("embedded", "process"):
        if mode not in args.modes:
            result[f"{mode}_fps"] = result[f"{mode}_ratio"] = None
            continue
        print(f"{mode} graph ...", file=sys.stderr)
        stats = bench_graph(args, mode, frames=args.frames)
        result[f"{mode}_fps"] = stats["fps"]
        result[f"{mode}_ratio"] = round(stats["fps"] / result["slowest_stage_fps"], 3)
        result[f"{mode}_run"] = stats
        latency[f"{mode}_fast"] = stats["latency_ms"]
    if args.recheck_frames and recheck_inputs is not None:
        name = result["slowest_stage"]
        print(f"{name} bare again ...", file=sys.stderr)
        stage = get_stage(configs[name].type)(configs[name].config, StageContext(name))
        batch = getattr(configs[name].config, "max_batch", 1) if name == "detect" else 1
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
        latency["embedded_realtime"] = stats["latency_ms"]
        result["realtime_run"] = stats
    result["latency_ms"] = latency
    result["latency_p50_ms"] = latency.get("embedded_fast", {}).get("p50")
    result["latency_p95_ms"] = latency.get("embedded_fast", {}).get("p95")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
