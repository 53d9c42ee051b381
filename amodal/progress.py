"""What ``amodal replay`` shows while it runs and prints when it ends.

``Progress`` watches the messages reaching one terminal stage of the graph (the runtime's observer
hook). It counts any message that carries a ``stream_id`` and a ``seq``: a frame is counted once
per stream and sequence number, a ``tracks`` block adds its track ids, and the model stages' blocks
(grades, restored crops, identities, a TrackEnd's attribute decisions) are tallied where present. So a
new stage, or a graph without some of ours, never breaks the bar or the summary.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from amodal.outcome import CommandFailed
from pipeline.graph import GraphConfig
from pipeline.messages import EndOfStream, TrackEnd
from pipeline.runtime import RunReport
from pipeline.urls import mask_urls_in

__all__ = ["Progress", "progress_stage", "run_with_signals", "print_summary"]

logger = logging.getLogger("amodal")


class Progress:
    """Counts frames, tracks and model results reaching one stage (thread-safe; called by the runtime)."""

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
                return
            stream, seq = getattr(message, "stream_id", None), getattr(message, "seq", None)
            if not isinstance(stream, str) or not isinstance(seq, int):
                return
            if isinstance(message, TrackEnd):
                # its seq is the frame the tracks ended at, counted already
                attributes = message.attributes
                if attributes is not None:
                    self.decided_tracks += int((attributes.decisions >= 0).any(axis=1).sum())
                return
            # a frame's message can arrive twice (the tracker re-sends ended tracks at end of stream)
            if seq > self._last_seq.get(stream, -1):
                self.frames += 1
                self._last_seq[stream] = seq
            tracks = getattr(message, "tracks", None)
            if tracks is not None:
                self.tracks.update((stream, int(t)) for t in tracks.track_id)
            self._tally(message)

    def _tally(self, message: Any) -> None:
        """What the model stages added, where the message carries it (``print_summary`` reports it)."""
        grades = getattr(message, "grades", None)
        if grades is not None:
            self.graded += len(grades)
            self.occluded += int((grades.grade > 0).sum())
        restored = getattr(message, "restored", None)
        if restored is not None:
            self.restored += len(restored)
        identities = getattr(message, "identities", None)
        if identities is not None:
            self.identities.update(int(i) for i in identities.identity)


def progress_stage(graph: GraphConfig) -> str:
    """The terminal stage the furthest from the sources (first in the file on a tie): what reaches it
    has passed every stage on its way."""
    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:
        if name not in depth:
            depth[name] = 0  # a cycle is refused by graph.check(); this only stops a runaway recursion
            spec = next(s for s in graph.stages if s.name == name)
            depth[name] = 1 + max((depth_of(i.source) for i in spec.input_specs()), default=-1)
        return depth[name]

    terminal = [s.name for s in graph.stages if not graph.downstream_of(s.name)]
    return max(terminal, key=lambda name: (depth_of(name), -terminal.index(name)))


def run_with_signals(runtime: Any, progress: Progress | None, total: int | None) -> RunReport:
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
        raise CommandFailed(1, "the runtime thread ended without a report")
    return result[0]


def print_summary(graph: GraphConfig, progress: Progress, report: RunReport, ids: list[str]) -> None:
    """Frames, tracks, mean fps, the model stages' tallies, streams that did not finish, the outputs."""
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
