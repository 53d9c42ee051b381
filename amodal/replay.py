"""``amodal replay VIDEO...``: recorded files through a graph in embedded mode, with progress and summary.

The graph (``--config``, or the built-in one) gets its single ingest stage's ``streams`` replaced by
the files named on the command line (stream id = file name without extension), ``mode: embedded``,
and ``output_dir`` from ``--out``; ``--set`` overrides apply on top.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from amodal.check import preflight
from amodal.graphs import builtin_replay_graph, load_app_graph
from amodal.outcome import CommandFailed, failed_sources, finish
from amodal.progress import Progress, print_summary, progress_stage, run_with_signals
from pipeline.configfile import load_yaml
from pipeline.graph import GraphConfig
from pipeline.logs import setup_logging
from pipeline.runtime import EmbeddedRuntime

__all__ = ["replay", "for_files", "VIDEO_SUFFIXES"]

logger = logging.getLogger("amodal")

#: what a folder named on the command line is searched for
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mkv", ".avi", ".mov", ".264", ".h264", ".265", ".h265", ".hevc", ".ts", ".webm", ".m4v"}
)


def replay(args: argparse.Namespace) -> int:
    """Run ``args.videos`` through the graph; the exit code (0, 1, 2 or 3)."""
    videos = expand_videos(args.videos)
    ids = stream_ids(videos)
    raw = load_yaml(args.config) if args.config else builtin_replay_graph(basic=args.basic)
    graph = load_app_graph(data=for_files(raw, videos, ids, args.out), overrides=args.overrides)
    preflight(graph)
    earlier_results(graph, overwrite=args.overwrite, append=args.append)
    setup_logging(args.log_level or graph.logging.level, graph.logging.format)
    progress = Progress(progress_stage(graph))
    totals = [count_frames(p) for p in videos]
    total = sum(t for t in totals if t) if all(totals) else None
    runtime = EmbeddedRuntime(graph, observer=progress)
    report = run_with_signals(runtime, progress if not args.no_progress else None, total)
    print_summary(graph, progress, report, ids)
    return finish(report) or failed_sources(report.failed_streams)


def for_files(raw: dict[str, Any], videos: list[Path], ids: list[str], out: str | None) -> dict[str, Any]:
    """The raw graph with its ingest stage reading ``videos``, embedded, writing to ``out``."""
    ingest = [s for s in raw.get("stages", []) if isinstance(s, dict) and s.get("type") == "ingest"]
    if len(ingest) != 1:
        raise CommandFailed(
            2, f"replay needs exactly one stage of type ingest in the graph, found {len(ingest)}"
        )
    config = dict(ingest[0].get("config") or {})
    config["streams"] = [{"id": sid, "source": str(path)} for sid, path in zip(ids, videos, strict=True)]
    ingest[0]["config"] = config
    raw["mode"] = "embedded"
    if out:
        raw["output_dir"] = out
    return raw


def expand_videos(items: list[str]) -> list[Path]:
    """Files as given, folders as their video files (sorted); exit 2 naming a missing one."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise CommandFailed(
                    2, f"folder {item!r} contains no video files ({', '.join(sorted(VIDEO_SUFFIXES))})"
                )
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise CommandFailed(2, f"video file {item!r} does not exist")
    return paths


def stream_ids(paths: list[Path]) -> list[str]:
    """One stream id per file: its name without extension, made safe and unique."""
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


def count_frames(path: Path) -> int | None:
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


def earlier_results(graph: GraphConfig, overwrite: bool, append: bool) -> None:
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
        raise CommandFailed(
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
