"""Per-track scheduling on constructed track sequences: when a model stage runs on which rows."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.messages import PersonCrops, Tracks, TrackState
from stages.scheduling import ScheduleConfig, TrackScheduler

FPS = 25.0
_RNG = np.random.default_rng(0)
SHARP = _RNG.integers(0, 255, (64, 32, 3), dtype=np.uint8)  # noise: high Laplacian variance
FLAT = np.full((64, 32, 3), 120, np.uint8)  # no detail at all


def frame(
    seq: int,
    rows: list[tuple[int, int]],
    height: float = 160.0,
    conf: float = 0.9,
    crop: np.ndarray = SHARP,
    stream: str = "cam",
    pts: float | None = None,
) -> PersonCrops:
    """rows: (track_id, TrackState) pairs."""
    n = len(rows)
    tracks = Tracks(
        np.array([r[0] for r in rows], np.int64),
        np.tile(np.array([[10, 10, 60, 10 + height]], np.float32), (n, 1)),
        np.full(n, conf, np.float32),
        np.array([r[1] for r in rows], np.uint8),
    )
    crops = np.repeat(crop[None], n, 0) if n else np.zeros((0, *crop.shape), np.uint8)
    return PersonCrops(
        stream, seq, seq / FPS if pts is None else pts, 1000.0 + seq / FPS, (480, 640), tracks, crops
    )


def run_sequence(scheduler: TrackScheduler, frames: int, track_ids: list[int]) -> dict[int, list[int]]:
    """Frames in which each track was selected."""
    runs: dict[int, list[int]] = {t: [] for t in track_ids}
    for seq in range(frames):
        state = TrackState.NEW if seq == 0 else TrackState.UPDATED
        msg = frame(seq, [(t, state) for t in track_ids])
        for row in scheduler.select(msg).tolist():
            runs[int(msg.tracks.track_id[row])].append(seq)
    return runs


def test_a_track_of_ten_frames_is_run_once_when_confirmed() -> None:
    runs = run_sequence(TrackScheduler(), 10, [1])
    assert runs == {1: [2]}, "confirm_frames=3: first run on the third frame"


def test_a_visible_track_is_rerun_at_least_once_per_second_of_stream_time() -> None:
    scheduler = TrackScheduler(ScheduleConfig(better_ratio=None))
    runs = run_sequence(scheduler, 250, [1])[1]
    gaps = np.diff(runs) / FPS
    assert runs[0] == 2 and gaps.max() <= 1.0 + 1e-9, runs
    assert len(runs) == 1 + (250 - 3) // 25, "cost follows the schedule's rate, not the frame rate"


def test_cost_grows_with_tracks_not_frames() -> None:
    short = run_sequence(TrackScheduler(ScheduleConfig(better_ratio=None, every_s=None)), 50, [1, 2])
    long = run_sequence(TrackScheduler(ScheduleConfig(better_ratio=None, every_s=None)), 500, [1, 2])
    assert short == long == {1: [2], 2: [2]}


def test_lost_and_ended_rows_are_never_run() -> None:
    scheduler = TrackScheduler(ScheduleConfig(confirm_frames=1))
    assert scheduler.select(frame(0, [(1, TrackState.LOST), (2, TrackState.ENDED)])).tolist() == []
    assert scheduler.select(frame(1, [(1, TrackState.UPDATED), (2, TrackState.NEW)])).tolist() == [0, 1]


def test_a_clearly_better_crop_triggers_a_run_after_the_minimum_gap() -> None:
    scheduler = TrackScheduler(ScheduleConfig(confirm_frames=1, every_s=None, min_gap_frames=3))
    assert scheduler.select(frame(0, [(1, TrackState.NEW)], height=60, crop=FLAT)).tolist() == [0]
    assert scheduler.select(frame(1, [(1, TrackState.UPDATED)], height=160)).tolist() == [], "gap"
    assert scheduler.select(frame(2, [(1, TrackState.UPDATED)], height=160)).tolist() == [], "gap"
    assert scheduler.select(frame(3, [(1, TrackState.UPDATED)], height=160)).tolist() == [0]
    assert scheduler.take_counts()["better"] == 1
    for seq in range(4, 20):  # the same quality again is not better
        assert scheduler.select(frame(seq, [(1, TrackState.UPDATED)], height=160)).tolist() == []


def test_a_grade_change_triggers_a_run() -> None:
    scheduler = TrackScheduler(ScheduleConfig(confirm_frames=1, every_s=None, better_ratio=None))
    rows = np.array([0])
    assert scheduler.select(frame(0, [(1, TrackState.NEW)]), rows, np.array([0])).tolist() == [0]
    for seq in range(1, 5):
        assert scheduler.select(frame(seq, [(1, TrackState.UPDATED)]), rows, np.array([0])).tolist() == []
    assert scheduler.select(frame(5, [(1, TrackState.UPDATED)]), rows, np.array([3])).tolist() == [0]
    assert scheduler.take_counts() == {"new": 1, "interval": 0, "better": 0, "grade": 1, "skipped": 4}


def test_candidates_limit_the_rows() -> None:
    scheduler = TrackScheduler(ScheduleConfig(confirm_frames=1))
    msg = frame(0, [(1, TrackState.NEW), (2, TrackState.NEW), (3, TrackState.NEW)])
    assert scheduler.select(msg, np.array([2])).tolist() == [2]
    assert scheduler.select(frame(1, [(1, 1), (2, 1), (3, 1)]), np.array([0, 1])).tolist() == [0, 1]


def test_per_frame_budget_serves_new_tracks_first_then_the_longest_waiting() -> None:
    scheduler = TrackScheduler(ScheduleConfig(confirm_frames=1, max_rows_per_frame=1, better_ratio=None))
    assert scheduler.select(frame(0, [(1, TrackState.NEW)])).tolist() == [0]
    # a second later track 1 is due again, but the new track 2 goes first
    msg = frame(25, [(1, TrackState.UPDATED), (2, TrackState.NEW)])
    assert scheduler.select(msg).tolist() == [1]
    assert scheduler.select(frame(26, [(1, TrackState.UPDATED), (2, TrackState.UPDATED)])).tolist() == [0]


def test_per_track_budget() -> None:
    scheduler = TrackScheduler(ScheduleConfig(max_runs_per_track=2, better_ratio=None))
    assert len(run_sequence(scheduler, 250, [1])[1]) == 2


def test_state_is_freed_on_track_end_stream_end_and_idle_expiry() -> None:
    scheduler = TrackScheduler(ScheduleConfig(idle_s=10))
    run_sequence(scheduler, 5, [1, 2])
    assert len(scheduler) == 2
    scheduler.end("cam", [1, 1, 99])  # twice and unknown: fine
    assert len(scheduler) == 1
    scheduler.select(frame(0, [(5, TrackState.NEW)], stream="other"))
    scheduler.end_stream("cam")
    assert len(scheduler) == 1
    # a track whose end never arrives is forgotten after idle_s of stream time
    scheduler.select(frame(1000, [(6, TrackState.NEW)], stream="other", pts=1000.0))
    assert len(scheduler) == 1


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="every_second"):
        ScheduleConfig.model_validate({"every_second": 1})
    with pytest.raises(ValidationError, match="better_ratio"):
        ScheduleConfig(better_ratio=0.5)
