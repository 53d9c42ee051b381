"""Per-track scheduling shared by the model stages: which rows of a frame a model runs on.

Running a model on every person in every frame makes cost grow with frames; a person seen for a
minute at 25 fps does not need 1,500 grades. A track is (re)run when

* ``new``: it has been seen in ``confirm_frames`` frames (a one-frame false detection costs nothing);
* ``interval``: ``every_s`` seconds of stream time (pts, or capture time) or ``every_frames`` frames
  passed since its last run (whichever comes first; either may be off);
* ``better``: its crop is clearly better than the best one it was run on (quality >= ``better_ratio``
  x that one; quality = size x sharpness x detector confidence, each in [0, 1]), at least
  ``min_gap_frames`` after the last run;
* ``grade``: the occlusion grade the grade stage gave this frame differs from the one of its last
  run (only for stages that see grades);

never on LOST / ENDED rows (the box is a prediction, the crop shows no person), and at most
``max_runs_per_track`` times (0 = no limit) and ``max_rows_per_frame`` rows per frame (new tracks
first, then the longest waiting; the others wait for the next frame). A track's state is freed on
TrackEnd / EndOfStream and, as a second guard for tracks whose end never arrived, after
``idle_s`` of stream time without a row, so state stays bounded on a camera that runs for weeks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import PersonCrops, TrackState

__all__ = ["ScheduleConfig", "TrackScheduler", "crop_quality", "REASONS"]

REASONS = ("new", "interval", "better", "grade")


class ScheduleConfig(BaseModel):
    """When a model stage runs on a track (defaults: every track living >= 10 frames is run, and a
    visible track is re-run at least once per second of stream time)."""

    model_config = ConfigDict(extra="forbid")

    confirm_frames: int = Field(3, ge=1, description="Frames a track must be seen before its first run.")
    every_s: float | None = Field(
        1.0,
        gt=0,
        description="Re-run a visible track after this much stream time (seconds of pts); null = off.",
    )
    every_frames: int | None = Field(
        None, ge=1, description="Re-run after this many frames of the track; null = off."
    )
    better_ratio: float | None = Field(
        1.3,
        gt=1,
        description="Re-run when the crop's quality reaches "
        "this multiple of the best one run so far; null = off.",
    )
    min_gap_frames: int = Field(
        3, ge=1, description="Least frames between two runs triggered by a better crop or a grade change."
    )
    on_grade_change: bool = Field(
        True, description="Re-run when the track's occlusion grade changes (stages after the grade stage)."
    )
    max_runs_per_track: int = Field(0, ge=0, description="Most runs per track; 0 = no limit.")
    max_rows_per_frame: int = Field(
        0,
        ge=0,
        description="Most rows run per frame (new tracks first, then the longest waiting); 0 = no limit.",
    )
    full_height: float = Field(160.0, gt=0, description="Box height (frame pixels) of full size quality.")
    idle_s: float = Field(120.0, gt=0, description="Forget a track not seen for this much stream time.")


def crop_quality(crop: np.ndarray, box_height: float, confidence: float, full_height: float) -> float:
    """Size x sharpness x confidence in [0, 1]; sharpness = Laplacian variance v as v / (v + 100),
    on the half-resolution grey crop (cheap: a 128x64 image)."""
    grey = cv2.cvtColor(np.ascontiguousarray(crop[::2, ::2]), cv2.COLOR_BGR2GRAY)
    v = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    return _size_confidence(box_height, confidence, full_height) * (v / (v + 100.0))


def _size_confidence(box_height: float, confidence: float, full_height: float) -> float:
    """The size x confidence part of ``crop_quality``: an upper bound of it (sharpness is < 1)."""
    return min(1.0, max(0.0, box_height / full_height)) * min(1.0, max(0.0, confidence))


@dataclass
class _Track:
    seen: int = 0
    runs: int = 0
    last_run_frame: int = -(10**9)
    last_run_time: float = float("-inf")
    best_quality: float = 0.0
    last_grade: int = -1
    last_seen_time: float = 0.0


class TrackScheduler:
    """Per-stream, per-track schedule state; ``select`` picks the rows to run and records the runs."""

    def __init__(self, config: ScheduleConfig | None = None) -> None:
        self.config = config or ScheduleConfig()
        self._tracks: dict[tuple[str, int], _Track] = {}
        self._last_sweep: dict[str, float] = {}
        #: rows chosen per reason, and visible candidate rows not chosen, since the last ``take_counts``
        self.counts: dict[str, int] = dict.fromkeys((*REASONS, "skipped"), 0)

    def __len__(self) -> int:
        return len(self._tracks)

    def select(
        self,
        message: PersonCrops,
        candidates: np.ndarray | None = None,
        grades: np.ndarray | None = None,
    ) -> np.ndarray:
        """Rows of ``message`` to run now (int32, increasing), recorded as run.

        ``candidates``: rows this stage could run at all (e.g. the graded ones), default every row;
        ``grades``: the grade of each candidate row (for the grade-change trigger).
        """
        cfg = self.config
        tracks = message.tracks
        now = message.pts if message.pts is not None else message.capture_time
        rows = np.arange(len(tracks)) if candidates is None else np.asarray(candidates, np.int64)
        grade_of = (
            {} if grades is None else dict(zip(rows.tolist(), np.asarray(grades).tolist(), strict=True))
        )
        visible = {int(r) for r in np.flatnonzero(tracks.state <= TrackState.UPDATED)}
        chosen: list[tuple[int, int, float, str]] = []  # (priority, row, waited, reason)
        for row in range(len(tracks)):
            if row not in visible:
                continue
            key = (message.stream_id, int(tracks.track_id[row]))
            state = self._tracks.get(key)
            if state is None:
                state = self._tracks[key] = _Track()
            state.seen += 1
            state.last_seen_time = now
        for row in rows.tolist():
            if row not in visible:
                continue
            state = self._tracks[(message.stream_id, int(tracks.track_id[row]))]
            reason = self._reason(state, message, row, now, grade_of.get(row))
            if reason is None:
                continue
            if cfg.max_runs_per_track and state.runs >= cfg.max_runs_per_track:
                continue
            chosen.append((0 if reason == "new" else 1, row, now - state.last_run_time, reason))
        if cfg.max_rows_per_frame and len(chosen) > cfg.max_rows_per_frame:
            chosen.sort(key=lambda c: (c[0], -c[2]))
            chosen = chosen[: cfg.max_rows_per_frame]
        selected = sorted(c[1] for c in chosen)
        self.counts["skipped"] += sum(1 for row in rows.tolist() if row in visible) - len(selected)
        for _, row, _, reason in chosen:
            state = self._tracks[(message.stream_id, int(tracks.track_id[row]))]
            state.runs += 1
            state.last_run_frame = state.seen
            state.last_run_time = now
            if row in grade_of:
                state.last_grade = int(grade_of[row])
            if cfg.better_ratio is not None:
                state.best_quality = max(state.best_quality, self._quality(message, row))
            self.counts[reason] += 1
        self._sweep(message.stream_id, now)
        return np.asarray(selected, np.int32)

    def _reason(
        self, state: _Track, message: PersonCrops, row: int, now: float, grade: int | None
    ) -> str | None:
        cfg = self.config
        if state.seen < cfg.confirm_frames:
            return None
        if state.runs == 0:
            return "new"
        since_frames = state.seen - state.last_run_frame
        if cfg.every_s is not None and now - state.last_run_time >= cfg.every_s:
            return "interval"
        if cfg.every_frames is not None and since_frames >= cfg.every_frames:
            return "interval"
        if since_frames < cfg.min_gap_frames:
            return None
        if cfg.on_grade_change and grade is not None and state.last_grade >= 0 and grade != state.last_grade:
            return "grade"
        if cfg.better_ratio is not None:
            wanted = cfg.better_ratio * max(state.best_quality, 1e-3)
            # the Laplacian only when size x confidence alone could reach it: most rows of most frames
            # are ruled out for free (every model stage asks this of every visible row)
            x1, y1, x2, y2 = message.tracks.xyxy[row]
            bound = _size_confidence(float(y2 - y1), float(message.tracks.confidence[row]), cfg.full_height)
            if bound >= wanted and self._quality(message, row) >= wanted:
                return "better"
        return None

    def _quality(self, message: PersonCrops, row: int) -> float:
        x1, y1, x2, y2 = message.tracks.xyxy[row]
        return crop_quality(
            message.crops[row], float(y2 - y1), float(message.tracks.confidence[row]), self.config.full_height
        )

    def end(self, stream_id: str, track_ids: Iterable[int]) -> None:
        """Forget ended tracks (TrackEnd); unknown ids are ignored (it may arrive twice)."""
        for track_id in track_ids:
            self._tracks.pop((stream_id, int(track_id)), None)

    def end_stream(self, stream_id: str) -> None:
        for key in [k for k in self._tracks if k[0] == stream_id]:
            del self._tracks[key]
        self._last_sweep.pop(stream_id, None)

    def _sweep(self, stream_id: str, now: float) -> None:
        """Drop tracks of this stream idle for ``idle_s`` (checked at most every ``idle_s / 4``)."""
        idle = self.config.idle_s
        if now - self._last_sweep.get(stream_id, now - idle) < idle / 4:
            return
        self._last_sweep[stream_id] = now
        stale = [k for k, s in self._tracks.items() if k[0] == stream_id and now - s.last_seen_time > idle]
        for key in stale:
            del self._tracks[key]

    def take_counts(self) -> dict[str, int]:
        """Rows chosen per reason and skipped since the last call (for the stage's metrics)."""
        counts, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return counts
