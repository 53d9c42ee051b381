"""A source's acknowledged progress per stream, kept in a file so a restarted source resumes after it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.delivery import Sent
from pipeline.transport import Outlet

__all__ = ["SourceProgress"]


class SourceProgress:
    """What a source's outlets have had acknowledged per stream, kept in a file across its restarts.

    ``{stream: {"acked": seq, "sent": seq, "ended": bool}}``: ``acked`` = every frame up to it is done in
    every sink (on every outlet), ``ended`` = its EndOfStream is, ``sent`` = the highest frame number
    handed out (a restarted live source numbers on above it). Written atomically, at most every 0.2 s.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._base: dict[str, dict[str, Any]] = {}
        self._acked: list[dict[str, int]] = []
        self._ended: list[set[str]] = []
        self._sent: dict[str, int] = {}
        self._dirty = False
        self._saved_at = 0.0

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self._base = {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}
        self._sent = {k: int(v.get("sent", -1)) for k, v in self._base.items()}
        return self._base

    def released_by(self, outlet: Outlet) -> Callable[[list[Sent]], None]:
        acked: dict[str, int] = {}
        ended: set[str] = set()
        self._acked.append(acked)
        self._ended.append(ended)

        def released(entries: list[Sent]) -> None:
            for entry in entries:
                if entry.stream_id is None:
                    continue
                if entry.seq is not None:
                    acked[entry.stream_id] = max(acked.get(entry.stream_id, -1), entry.seq)
                elif entry.kind == "end_of_stream":
                    ended.add(entry.stream_id)
            self._dirty = True

        return released

    def sent(self, stream: str, seq: int) -> None:
        if seq > self._sent.get(stream, -1):
            self._sent[stream] = seq
            self._dirty = True

    def snapshot(self) -> dict[str, dict[str, Any]]:
        streams = set(self._base) | set(self._sent)
        state = {}
        for stream in sorted(streams):
            base = self._base.get(stream, {})
            before = int(base.get("acked", -1))
            acked = [a.get(stream, before) for a in self._acked] or [before]
            ended = bool(base.get("ended")) or bool(self._ended) and all(stream in e for e in self._ended)
            state[stream] = {"acked": min(acked), "sent": self._sent.get(stream, -1), "ended": ended}
        return state

    def save_every(self, interval_s: float) -> None:
        if self._dirty and time.monotonic() - self._saved_at >= interval_s:
            self.save()

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        tmp.replace(self.path)
        self._dirty = False
        self._saved_at = time.monotonic()
