"""The ``amodal`` command: replay footage, run a live graph, check a config.

Exit codes: 0 done, 2 config error (bad key/value, missing file or weights), 1 runtime failure;
on 1 and 2 one line on stderr says why.

* ``amodal replay VIDEO... [--config C] [--out DIR] [--set k=v ...]``: embedded mode, lossless,
  progress bar (frames, fps, ETA), summary at the end (frames, tracks, mean fps, outputs).
* ``amodal run CONFIG [--set k=v ...]``: the graph's own mode (``process`` for an edge box:
  one supervised process per stage); Ctrl-C / SIGTERM drains and exits 0.
* ``amodal check CONFIG [--set k=v ...]``: validate and print the resolved graph; starts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.config_docs import option_description
from pipeline.configfile import ConfigError, load_yaml
from pipeline.defaults import default_replay_graph
from pipeline.graph import GraphConfig, load_graph
from pipeline.logs import setup_logging
from pipeline.messages import EndOfStream, Frame, PersonCrops, TrackEnd
from pipeline.program_env import set_program_env_defaults
from pipeline.runtime import EmbeddedRuntime, RunReport
from pipeline.security import add_keys_parser, check_security, keys_command
from pipeline.urls import mask_url, mask_urls_in

__all__ = ["main", "describe_graph"]

logger = logging.getLogger("amodal")

_VIDEO_EXT = {
    ".mp4",
    ".mkv",
    ".avi",
    ".mov",
    ".264",
    ".h264",
    ".265",
    ".h265",
    ".hevc",
    ".ts",
    ".webm",
    ".m4v",
}


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amodal", description="Occlusion-aware people analytics pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value; STAGE.key addresses the stage named STAGE "
            "(detect.weights=models/yolov8n.pt), other keys the top level (metrics.port=9100)",
        )
        p.add_argument(
            "--log-level",
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            default=None,
            help="override logging.level",
        )

    replay = sub.add_parser("replay", help="run recorded videos through the graph (embedded mode)")
    replay.add_argument("videos", nargs="+", help="video files (or folders of videos) to replay")
    replay.add_argument(
        "--config", help="graph YAML (default: the built-in replay graph = configs/replay.yaml)"
    )
    replay.add_argument("--out", help="output folder for events.db, events.jsonl and videos (default: out)")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")
    earlier = replay.add_mutually_exclusive_group()
    earlier.add_argument(
        "--overwrite",
        action="store_true",
        help="the output folder holds an earlier run's results: delete them first",
    )
    earlier.add_argument(
        "--append",
        action="store_true",
        help="the output folder holds an earlier run's results: add this run to them (same database, "
        "JSONL and gallery; each run's tracks keep their own session)",
    )
    replay.add_argument(
        "--basic",
        action="store_true",
        help="detect-and-track only (configs/replay_basic.yaml): no grade, deocclude, describe, identify",
    )
    common(replay)

    run = sub.add_parser("run", help="run a graph config until its sources end or Ctrl-C")
    run.add_argument("config", help="graph YAML (e.g. configs/edge.yaml)")
    run.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="STAGE",
        help="run only these stages on this host (repeatable; links to the others need explicit "
        "tcp:// endpoints); they run as threads of this process",
    )
    common(run)

    add_keys_parser(sub)

    check = sub.add_parser("check", help="validate a graph config and print the resolved graph")
    check.add_argument("config", help="graph YAML")
    check.add_argument("--json", action="store_true", help="print the resolved graph as JSON")
    common(check)
    return parser


def main(argv: list[str] | None = None) -> int:
    set_program_env_defaults()  # before any stage imports ultralytics
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "keys":
            return keys_command(args)
        return _run(args)
    except _Fail as exc:
        print(
            f"amodal: {'config error' if exc.code == 2 else 'error'}: {mask_urls_in(str(exc))}",
            file=sys.stderr,
        )
        return exc.code
    except ConfigError as exc:
        print(f"amodal: config error: {mask_urls_in(str(exc))}", file=sys.stderr)
        return 2


# -- check ------------------------------------------------------------------------------------------
def describe_graph(graph: GraphConfig) -> dict[str, Any]:
    """The resolved graph as plain data (credentials masked): what ``amodal check`` prints."""
    kind = graph.transport_kind
    stages = []
    for index, spec in enumerate(graph.stages):
        links = []
        for item in spec.input_specs():
            tag = f"{item.source}--{spec.name}"
            if kind == "inproc":
                endpoint = f"inproc://amodal-<run>/{tag}"
            elif kind == "ipc":
                endpoint = f"ipc://{graph.transport.ipc_dir or '<private temp dir>'}/{tag}.sock"
            else:
                endpoint = item.endpoint or f"tcp://{graph.transport.tcp_host}:<auto>"
            links.append(
                {
                    "from": item.source,
                    "policy": item.policy or graph.links.policy,
                    "hwm": item.hwm or graph.links.hwm,
                    "endpoint": endpoint,
                }
            )
        cls = spec.stage_class
        entry = {
            "name": spec.name,
            "type": spec.type,
            "class": f"{cls.__module__}.{cls.__name__}",
            "accepts": [t.__name__ for t in cls.accepts],
            "inputs": links,
            "config": json.loads(mask_urls_in(json.dumps(spec.config.model_dump(mode="json")))),
        }
        entry["descriptions"] = {
            key: text
            for key, _ in _flatten(entry["config"])
            if (text := option_description(type(spec.config), key))
        }
        if graph.metrics.port and graph.mode == "process":
            entry["metrics_port"] = graph.metrics.port + 1 + index
        stages.append(entry)
    return {
        "mode": graph.mode,
        "transport": kind,
        "output_dir": graph.output_dir,
        "metrics": f"http://{graph.metrics.host}:{graph.metrics.port}/metrics"
        if graph.metrics.port
        else "off",
        "stages": stages,
    }


def _print_description(desc: dict[str, Any]) -> None:
    print(
        f"mode: {desc['mode']}   transport: {desc['transport']}   output_dir: {desc['output_dir']}   "
        f"metrics: {desc['metrics']}"
    )
    for stage in desc["stages"]:
        accepts = ", ".join(stage["accepts"]) or "- (source)"
        port = f"   metrics port {stage['metrics_port']}" if "metrics_port" in stage else ""
        print(f"\n[{stage['name']}] type={stage['type']} ({stage['class']}) accepts: {accepts}{port}")
        for link in stage["inputs"]:
            print(
                f"  <- {link['from']:<12} policy={link['policy']:<11} hwm={link['hwm']:<5} {link['endpoint']}"
            )
        for key, value in _flatten(stage["config"]):
            text = stage["descriptions"].get(key)
            print(f"    {key} = {json.dumps(value)}" + (f"   # {text}" if text else ""))


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested config -> [("reconnect.max_s", 30.0), ("streams[0].id", "cam1"), ...]."""
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for key, item in value.items():
            out.extend(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and any(isinstance(v, dict | list) for v in value):
        out = []
        for index, item in enumerate(value):
            out.extend(_flatten(item, f"{prefix}[{index}]"))
        return out
    return [(prefix, value)]


def _preflight(graph: GraphConfig, only: list[str] | None = None) -> None:
    """Every file the graph names (weights, input videos, link keys) exists, before anything starts:
    exit 2 naming each key otherwise. ``only``: the stages this host runs (their peers need only their
    public keys here)."""
    local = [spec for spec in graph.stages if not only or spec.name in only]
    problems = [p for spec in local for p in spec.stage_class.check_files(spec.config, spec.name)]
    peers = [spec.name for spec in graph.stages if spec not in local]
    problems += check_security(graph.transport_kind, graph.security, [s.name for s in local], peers)
    if problems:
        raise _Fail(2, "; ".join(problems))


def _earlier_results(graph: GraphConfig, overwrite: bool, append: bool) -> None:
    """A replay never mixes its results with an earlier run's without being told: refuse (exit 2), or
    delete them first (``--overwrite``), or add to them (``--append``)."""
    out = Path(graph.output_dir)
    found: list[Path] = []
    for spec in graph.stages:
        for pattern in spec.stage_class.output_files(spec.config, out):
            found += sorted(pattern.parent.glob(pattern.name)) if "*" in pattern.name else [pattern]
    found = [p for p in dict.fromkeys(found) if p.exists()]
    if not found or append:
        return
    if not overwrite:
        shown = ", ".join(str(p) for p in found[:6]) + (", ..." if len(found) > 6 else "")
        raise _Fail(
            2,
            f"{out} already holds the results of an earlier run ({shown}); add --overwrite to "
            "replace them or --append to add this run to them",
        )
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    logger.info("removed %d results of an earlier run from %s", len(found), out)


def _check(args: argparse.Namespace) -> int:
    graph = load_graph(args.config, args.overrides)
    _preflight(graph)
    desc = describe_graph(graph)
    if args.json:
        print(json.dumps(desc, indent=2))
    else:
        _print_description(desc)
        print(f"\nOK: {args.config} is valid ({len(graph.stages)} stages)")
    return 0


# -- replay -----------------------------------------------------------------------------------------
def _expand_videos(items: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in _VIDEO_EXT)
            if not found:
                raise _Fail(2, f"folder {item!r} contains no video files ({', '.join(sorted(_VIDEO_EXT))})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise _Fail(2, f"video file {item!r} does not exist")
    return paths


def _stream_ids(paths: list[Path]) -> list[str]:
    ids: list[str] = []
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("._-") or "video"
        if not base[0].isalnum():
            base = "v" + base
        candidate, n = base, 2
        while candidate in ids:
            candidate, n = f"{base}-{n}", n + 1
        ids.append(candidate)
    return ids


def _count_frames(path: Path) -> int | None:
    """Frames in a file from its container metadata (no decoding); None if it does not say."""
    try:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            if stream.duration and stream.time_base and stream.average_rate:
                return int(float(stream.duration * stream.time_base) * float(stream.average_rate))
    except Exception:  # noqa: BLE001 - only a progress-bar estimate
        return None
    return None


class _Progress:
    """Counts frames and tracks reaching one terminal stage (thread-safe; called by the runtime)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.frames = 0
        self.tracks: set[tuple[str, int]] = set()
        self._last_seq: dict[str, int] = {}
        self.ended: list[EndOfStream] = []
        self.identities: set[int] = set()
        self.graded = 0
        self.occluded = 0
        self.restored = 0
        self.decided_tracks = 0
        self._lock = threading.Lock()

    def __call__(self, stage: str, message: Any) -> None:
        if stage != self.stage:
            return
        with self._lock:
            if isinstance(message, EndOfStream):
                self.ended.append(message)
            elif isinstance(message, Frame | PersonCrops):
                # the tracker may send a frame's tracks twice (ended tracks at end of stream)
                if self._last_seq.get(message.stream_id) != message.seq:
                    self.frames += 1
                    self._last_seq[message.stream_id] = message.seq
                tracks = message.tracks
                if tracks is not None:
                    self.tracks.update((message.stream_id, int(t)) for t in tracks.track_id)
                if isinstance(message, PersonCrops):
                    self._blocks(message)
            elif isinstance(message, TrackEnd) and message.attributes is not None:
                self.decided_tracks += int((message.attributes.decisions >= 0).any(axis=1).sum())

    def _blocks(self, message: PersonCrops) -> None:
        """What the model stages added (``_summary`` reports it)."""
        if message.grades is not None:
            self.graded += len(message.grades)
            self.occluded += int((message.grades.grade > 0).sum())
        if message.restored is not None:
            self.restored += len(message.restored)
        if message.identities is not None:
            self.identities.update(int(i) for i in message.identities.identity)


def _progress_stage(graph: GraphConfig) -> str:
    terminal = [s for s in graph.stages if not graph.downstream_of(s.name)]
    for wanted in (PersonCrops, Frame):
        for spec in terminal:
            if wanted in spec.stage_class.accepts:
                return spec.name
    return terminal[0].name


def _replay(args: argparse.Namespace) -> int:
    videos = _expand_videos(args.videos)
    raw = load_yaml(args.config) if args.config else default_replay_graph(basic=args.basic)
    ingest = [s for s in raw.get("stages", []) if isinstance(s, dict) and s.get("type") == "ingest"]
    if len(ingest) != 1:
        raise _Fail(2, f"replay needs exactly one stage of type ingest in the graph, found {len(ingest)}")
    ids = _stream_ids(videos)
    config = dict(ingest[0].get("config") or {})
    config["streams"] = [{"id": sid, "source": str(path)} for sid, path in zip(ids, videos, strict=True)]
    ingest[0]["config"] = config
    raw["mode"] = "embedded"
    if args.out:
        raw["output_dir"] = args.out
    graph = load_graph(data=raw, overrides=args.overrides)
    _preflight(graph)
    _earlier_results(graph, overwrite=args.overwrite, append=args.append)
    setup_logging(args.log_level or graph.logging.level, graph.logging.format)
    progress = _Progress(_progress_stage(graph))
    totals = [_count_frames(p) for p in videos]
    total = sum(t for t in totals if t) if all(totals) else None
    runtime = EmbeddedRuntime(graph, observer=progress)
    report = _run_with_signals(runtime, progress if not args.no_progress else None, total)
    _summary(graph, progress, report, ids)
    return _finish(report) or _failed_sources(report.failed_streams)


def _run_with_signals(runtime: Any, progress: _Progress | None, total: int | None) -> RunReport:
    """Run ``runtime`` in a thread; the main thread shows progress and turns signals into stop/abort."""
    result: list[RunReport] = []

    def target() -> None:
        try:
            result.append(runtime.run())
        except Exception as exc:  # noqa: BLE001 - e.g. an endpoint already in use: one line, exit 1
            logger.debug("runtime failed", exc_info=True)
            result.append(RunReport(1, f"{type(exc).__name__}: {exc}", 0.0))

    thread = threading.Thread(target=target, name="runtime", daemon=True)
    presses = [0]

    def on_signal(signum: int, frame: Any) -> None:
        presses[0] += 1
        if presses[0] == 1:
            print("\namodal: stopping: draining the pipeline (again to abort)", file=sys.stderr)
            runtime.request_stop()
        else:
            runtime.abort()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = None
    try:
        if progress is not None:
            from tqdm import tqdm

            interactive = sys.stderr.isatty()
            bar = tqdm(
                total=total,
                unit="frame",
                desc="replay",
                dynamic_ncols=True,
                smoothing=0.1,
                mininterval=0.2 if interactive else 5.0,
            )
        thread.start()
        shown = 0
        while thread.is_alive():
            thread.join(timeout=0.2)
            if bar is not None and progress is not None:
                now = progress.frames
                bar.update(now - shown)
                shown = now
                bar.set_postfix(tracks=len(progress.tracks), refresh=False)
    finally:
        if bar is not None:
            bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not result:
        raise _Fail(1, "the runtime thread ended without a report")
    return result[0]


def _summary(graph: GraphConfig, progress: _Progress, report: RunReport, ids: list[str]) -> None:
    seconds = max(report.seconds, 1e-9)
    out = Path(graph.output_dir)
    lines = [
        f"frames: {progress.frames}",
        f"tracks: {len(progress.tracks)}",
        f"mean fps: {progress.frames / seconds:.1f} ({seconds:.1f} s)",
    ]
    if progress.graded:
        lines += [
            f"identities: {len(progress.identities)}",
            f"occluded: {100.0 * progress.occluded / progress.graded:.0f} % of {progress.graded} graded "
            f"crops ({progress.restored} de-occluded)",
            f"attributes decided: {progress.decided_tracks} tracks",
        ]
    ended = {e.stream_id: e for e in progress.ended}
    for sid in ids:
        eos = ended.get(sid)
        if eos is not None and eos.reason != "finished":
            lines.append(f"stream {sid}: ended {eos.reason}: {mask_urls_in(eos.detail)}")
    outputs = sorted(str(p) for p in out.glob("*") if p.is_file()) if out.is_dir() else []
    if outputs:
        lines.append("outputs: " + ", ".join(outputs))
    print("\n".join(lines))


#: exit code of a run that finished, but in which a source could not be read (each stream's row says why)
EXIT_SOURCE_ERROR = 3


def _failed_sources(failed: list[str]) -> int:
    """``EXIT_SOURCE_ERROR`` when a source could not read a stream (the others were finished first)."""
    if not failed:
        return 0
    print(
        f"amodal: error: {len(failed)} source(s) could not be read: {', '.join(failed)} "
        "(see the streams' ended_detail)",
        file=sys.stderr,
    )
    return EXIT_SOURCE_ERROR


def _finish(report: RunReport) -> int:
    if report.exit_code:
        print(
            f"amodal: {'config error' if report.exit_code == 2 else 'error'}: "
            f"{mask_urls_in(report.error or 'failed')}",
            file=sys.stderr,
        )
    return report.exit_code


# -- run --------------------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    graph = load_graph(args.config, args.overrides)
    _preflight(graph, args.only or None)
    setup_logging(args.log_level or graph.logging.level, graph.logging.format)
    if graph.mode == "process" and not args.only:
        from pipeline.supervisor import ProcessRuntime

        runtime: Any = ProcessRuntime(graph)
    else:
        runtime = EmbeddedRuntime(graph, only=args.only or None)
    logger.info("running %s in %s mode (%d stages)", mask_url(args.config), graph.mode, len(graph.stages))
    started = time.monotonic()
    report = _run_with_signals(runtime, None, None)
    frames = {name: r.messages_in for name, r in report.stages.items()}
    restarts = {k: v for k, v in report.restarts.items() if v}
    print(
        f"done in {time.monotonic() - started:.1f} s; messages in per stage: {frames}"
        + (f"; restarts: {restarts}" if restarts else "")
    )
    return _finish(report) or _failed_sources(report.failed_streams)


if __name__ == "__main__":
    sys.exit(main())
