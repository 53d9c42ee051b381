"""One stream's tracker: ultralytics' BYTETracker / BOTSORT plus the lifecycle we report.

ultralytics' trackers keep three pools (tracked, lost, removed) and answer "which tracks are
visible now". We add what the event sinks need, by diffing the pools against what was already
reported for this stream:

* NEW     - a confirmed track reported for the first time;
* UPDATED - a reported track seen (matched, or predicted on a frame without detections) again,
            including a lost track that was found again;
* LOST    - reported once, on the frame the tracker moves a reported track to its lost pool;
* ENDED   - reported once, when a reported track leaves both pools (lost for longer than
            ``track_buffer`` frames, de-duplicated by the tracker, or the stream ended).

Frames without detections (the detector's ``interval``) are *predicted*, not updated: the
trackers' Kalman filters advance one step (the same constant-velocity model ByteTrack uses between
frames, ByteTrack paper sec. 3 / BoT-SORT sec. 3.1), the frame counter advances so lost tracks
age in frames, but no track is marked lost, because nothing was missed, nothing was observed.
The next real update then predicts its one remaining step, so positions stay on the video's
timeline whatever the interval. ultralytics' ``update`` is not called on those frames.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Literal

import numpy as np

from pipeline.messages import Detections, Tracks, TrackState

__all__ = ["StreamTracker", "TrackerKind"]

TrackerKind = Literal["bytetrack", "botsort"]


class _Boxes:
    """The slice of ultralytics' ``Boxes`` API its trackers read: conf, cls, xywh, xyxy, masks."""

    __slots__ = ("xyxy", "conf", "cls")

    def __init__(self, xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray) -> None:
        self.xyxy, self.conf, self.cls = xyxy, conf, cls

    @property
    def xywh(self) -> np.ndarray:
        out = np.empty_like(self.xyxy)
        out[:, :2] = (self.xyxy[:, :2] + self.xyxy[:, 2:]) / 2
        out[:, 2:] = self.xyxy[:, 2:] - self.xyxy[:, :2]
        return out

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index: Any) -> _Boxes:
        return _Boxes(self.xyxy[index], self.conf[index], self.cls[index])

    @classmethod
    def from_detections(cls, detections: Detections) -> _Boxes:
        return cls(
            detections.xyxy.astype(np.float32),
            detections.confidence.astype(np.float32),
            detections.class_id.astype(np.float32),
        )


class StreamTracker:
    """Track one stream; ``step`` returns the ``Tracks`` (with lifecycle states) of each frame."""

    def __init__(self, kind: TrackerKind, args: dict[str, Any], encoder: Any = None) -> None:
        """``encoder``: BoT-SORT's appearance model (``TrackerReidEncoder``); with it the tracker matches
        on appearance too (``with_reid``), never loading a model of its own."""
        namespace = SimpleNamespace(**{**args, "with_reid": False})
        if kind == "bytetrack":
            from ultralytics.trackers.byte_tracker import BYTETracker

            self.tracker = BYTETracker(namespace)
        elif kind == "botsort":
            from ultralytics.trackers.bot_sort import BOTSORT

            self.tracker = BOTSORT(namespace)
            if encoder is not None:
                namespace.with_reid = True
                namespace.model = "external"  # not "auto": ultralytics then hands the encoder the frame
                self.tracker.encoder = encoder
        else:
            raise ValueError(f"tracker must be 'bytetrack' or 'botsort', got {kind!r}")
        self._reported: dict[int, TrackState] = {}
        self._last_box: dict[int, np.ndarray] = {}
        self._last_score: dict[int, float] = {}

    @property
    def active_ids(self) -> list[int]:
        """Ids reported and not yet ended."""
        return sorted(self._reported)

    def step(self, detections: Detections | None, image: np.ndarray | None = None) -> Tracks:
        """Advance one frame: update with ``detections``, or predict when they are None."""
        if detections is None:
            self._predict_only()
        else:
            self.tracker.update(_Boxes.from_detections(detections), image)
        return self._diff()

    def end_all(self) -> Tracks:
        """End every reported track (the stream is over); each is reported ENDED once."""
        rows = [
            (tid, self._last_box[tid], self._last_score[tid], TrackState.ENDED) for tid in self.active_ids
        ]
        self._reported.clear()
        self._last_box.clear()
        self._last_score.clear()
        self.tracker.reset()
        return _tracks(rows)

    def _predict_only(self) -> None:
        tracker = self.tracker
        if tracker.frame_id == 0:
            return  # nothing to predict before the first detections
        tracker.frame_id += 1
        confirmed = [t for t in tracker.tracked_stracks if t.is_activated]
        tracker.multi_predict(confirmed + tracker.lost_stracks)
        removed: list[Any] = []
        tracker._remove_stale_lost(removed)  # lost tracks keep ageing in frames, as in update()
        if removed:
            from ultralytics.trackers.utils.stracks import sub_stracks

            tracker.lost_stracks = sub_stracks(tracker.lost_stracks, removed)
            tracker.removed_stracks.extend(removed)

    def _diff(self) -> Tracks:
        tracker = self.tracker
        rows: list[tuple[int, np.ndarray, float, TrackState]] = []
        visible = {t.track_id: t for t in tracker.tracked_stracks if t.is_activated}
        lost = {t.track_id: t for t in tracker.lost_stracks}
        for tid, track in visible.items():
            state = TrackState.UPDATED if tid in self._reported else TrackState.NEW
            box = track.xyxy.astype(np.float32)
            rows.append((tid, box, float(track.score), state))
            self._reported[tid] = state
            self._last_box[tid], self._last_score[tid] = box, float(track.score)
        for tid, track in lost.items():
            if self._reported.get(tid, TrackState.LOST) != TrackState.LOST:
                box = track.xyxy.astype(np.float32)
                rows.append((tid, box, float(track.score), TrackState.LOST))
                self._reported[tid] = TrackState.LOST
                self._last_box[tid] = box
        for tid in [t for t in self._reported if t not in visible and t not in lost]:
            rows.append((tid, self._last_box.pop(tid), self._last_score.pop(tid), TrackState.ENDED))
            del self._reported[tid]
        return _tracks(rows)


def _tracks(rows: list[tuple[int, np.ndarray, float, TrackState]]) -> Tracks:
    if not rows:
        return Tracks.empty()
    return Tracks(
        track_id=np.array([r[0] for r in rows], np.int64),
        xyxy=np.stack([r[1] for r in rows]).astype(np.float32),
        confidence=np.array([r[2] for r in rows], np.float32),
        state=np.array([int(r[3]) for r in rows], np.uint8),
    )
