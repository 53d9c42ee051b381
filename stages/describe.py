"""Describe stage: pedestrian attributes per scheduled crop, decided per track.

The attribute net (part-based, reconstruction paper sec. 3.1, or MAN-PAR) runs on the restored crop
where the deocclude stage made one and on the original otherwise. Each track's probabilities are
averaged with a weight per crop (``TrackAttributeAggregator``: size x sharpness x detector confidence
x visible share from the grade), and decided with hysteresis so an attribute does not flicker. The
checkpoint's per-attribute thresholds t are honoured by mapping each probability p piecewise-linearly
so that t lands on 0.5 (p / 2t below t, 0.5 + (p - t) / 2(1 - t) above): the aggregator's band
around 0.5 is then a band around each attribute's own threshold, and ``track_probabilities`` are on
that calibrated scale (0.5 = the attribute's threshold).

The block added is ``Attributes``: per-crop probabilities for the rows run, and the track's decisions
(1 / 0 / -1 undecided) for the rows whose track's decisions changed. When a track ends (TrackEnd) its
final decisions travel on the TrackEnd that this stage sends on in place of the one it received.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from models.attributes.aggregation import (
    AggregationConfig,
    CropQuality,
    TrackAttributeAggregator,
    laplacian_sharpness,
)
from models.attributes.predictor import AttributePredictor, AttributePredictorConfig
from pipeline.messages import GRADE_NAMES, Attributes, PersonCrops, TrackEnd
from pipeline.registry import register_stage
from pipeline.stage import StageContext
from stages.person_stage import PersonStage, PersonStageConfig, evidence_schedule, split_rows
from stages.scheduling import ScheduleConfig

__all__ = ["DescribeStage", "DescribeConfig", "calibrate_probabilities", "GRADE_VISIBLE_LOSS"]

#: occluded share of the body per grade (0 holistic, 1/4 or 1/2 from the grade's area)
GRADE_VISIBLE_LOSS = np.array(
    [0.0] + [0.25 if n.endswith("1/4") else 0.5 for n in GRADE_NAMES[1:]], np.float32
)


def calibrate_probabilities(probs: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
    """Map each column so that its threshold t becomes 0.5 (monotonic, 0 -> 0, 1 -> 1)."""
    if thresholds is None:
        return probs
    t = np.clip(np.asarray(thresholds, np.float32), 1e-3, 1 - 1e-3)
    low = probs / (2 * t)
    high = 0.5 + (probs - t) / (2 * (1 - t))
    return np.clip(np.where(probs < t, low, high), 0.0, 1.0).astype(np.float32)


class DescribeConfig(PersonStageConfig):
    """The attribute net, the per-track aggregation, the schedule and batching."""

    schedule: ScheduleConfig = Field(
        default_factory=evidence_schedule, description="When a track is run (every 2 s of stream time)."
    )

    model: AttributePredictorConfig = Field(
        default_factory=AttributePredictorConfig, description="Attribute checkpoint and inference backend."
    )
    aggregation: AggregationConfig = Field(
        default_factory=lambda: AggregationConfig(min_evidence=0.0),
        description="Per-track weighting and hysteresis. min_evidence 0 here: the stage sees a track "
        "once per schedule run, not every frame, so the first usable crop decides and the weighted "
        "average with hysteresis corrects it (with 0.5, small or blurred people never got decisions).",
    )
    use_restored: bool = Field(True, description="Classify the de-occluded crop where there is one.")
    idle_s: float = Field(
        120.0,
        gt=0,
        description="Forget a track's attributes after this much stream "
        "time without a row (when its TrackEnd never came).",
    )


@register_stage("describe")
class DescribeStage(PersonStage):
    """Adds ``Attributes`` (per-crop probabilities, per-track decisions when they change)."""

    Config: ClassVar[type[BaseModel]] = DescribeConfig

    def __init__(self, config: DescribeConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.config: DescribeConfig = config
        self.predictor: AttributePredictor | None = None
        self.aggregator: TrackAttributeAggregator | None = None
        self._emitted: dict[tuple[str, int], np.ndarray] = {}  # decisions last sent per track
        self._last_seen: dict[tuple[str, int], float] = {}

    def on_start(self) -> None:
        self.predictor = AttributePredictor.from_config(
            self.config.model, key=f"{self.context.name}.model.weights"
        )
        self.names = tuple(self.predictor.names)
        self.aggregator = TrackAttributeAggregator(self.names, self.config.aggregation)
        self.context.logger.info(
            "describe: %d attributes on %s", len(self.names), self.predictor.backend_name
        )

    def _rows(self, message: PersonCrops) -> np.ndarray:
        grades = message.grades
        if grades is None:  # no grade stage upstream (it adds a block to every message it sees)
            return self.scheduler.select(message)
        return self.scheduler.select(message, grades.rows, grades.grade)

    def _pixels(self, message: PersonCrops, rows: np.ndarray) -> np.ndarray:
        crops = message.crops[rows]
        restored = message.restored
        if self.config.use_restored and restored is not None and len(restored):
            where = {int(r): i for i, r in enumerate(restored.rows)}
            crops = crops.copy()
            for i, row in enumerate(rows.tolist()):
                if row in where:
                    crops[i] = restored.crops[where[row]]
        return crops

    def run_batch(self, messages: list[PersonCrops]) -> list[Any]:
        assert self.predictor is not None
        rows = [self._rows(m) for m in messages]
        pixels = [self._pixels(m, r) for m, r in zip(messages, rows, strict=True)]
        if not any(len(r) for r in rows):
            self._touch(messages)
            return list(messages)
        probs = self.timed(self.predictor.predict_bgr, np.concatenate(pixels))
        out = []
        for message, r, p, px in zip(messages, rows, split_rows(probs, rows), pixels, strict=True):
            out.append(self._describe(message, r, p, px) if len(r) else message)
        self._touch(messages)
        return out

    def _describe(
        self, message: PersonCrops, rows: np.ndarray, probs: np.ndarray, pixels: np.ndarray
    ) -> PersonCrops:
        assert self.aggregator is not None
        calibrated = calibrate_probabilities(probs, self.predictor.thresholds if self.predictor else None)
        grade_of = {}
        if message.grades is not None:
            grade_of = dict(zip(message.grades.rows.tolist(), message.grades.grade.tolist(), strict=True))
        changed_rows, decisions, track_probs = [], [], []
        for i, row in enumerate(rows.tolist()):
            x1, y1, x2, y2 = message.tracks.xyxy[row]
            confidence = float(message.tracks.confidence[row])
            quality = CropQuality(
                height=float(y2 - y1),
                sharpness=laplacian_sharpness(pixels[i][..., ::-1]),  # BGR -> RGB
                confidence=confidence,
                occlusion=float(GRADE_VISIBLE_LOSS[grade_of[row]]) if row in grade_of else None,
            )
            key = (message.stream_id, int(message.tracks.track_id[row]))
            state = self.aggregator.update(key, calibrated[i], quality)
            decided = _decision_vector(state)
            if key not in self._emitted or not np.array_equal(self._emitted[key], decided):
                self._emitted[key] = decided
                changed_rows.append(row)
                decisions.append(decided)
                track_probs.append(_mean(state))
        if changed_rows:
            self.context.count("decisions_changed", float(len(changed_rows)))
        n = len(self.names)
        block = Attributes(
            self.names,
            rows,
            probs,
            np.asarray(changed_rows, np.int32),
            np.asarray(decisions, np.int8).reshape(-1, n),
            np.asarray(track_probs, np.float32).reshape(-1, n),
        )
        return replace(message, attributes=block)

    def end_tracks(self, end: TrackEnd) -> list[Any]:
        assert self.aggregator is not None
        rows, decisions, probs = [], [], []
        for i, track_id in enumerate(end.track_id.tolist()):
            key = (end.stream_id, int(track_id))
            state = self.aggregator.end(key)
            self._emitted.pop(key, None)
            self._last_seen.pop(key, None)
            if state is None:
                continue
            rows.append(i)
            decisions.append(_decision_vector(state))
            probs.append(_mean(state))
        if not rows:
            return []
        self.context.count("tracks_decided", float(sum(int((d >= 0).any()) for d in decisions)))
        n = len(self.names)
        block = Attributes(
            self.names,
            np.asarray(rows, np.int32),
            np.asarray(probs, np.float32).reshape(-1, n),
            np.asarray(rows, np.int32),
            np.asarray(decisions, np.int8).reshape(-1, n),
            np.asarray(probs, np.float32).reshape(-1, n),
        )
        return [replace(end, attributes=block)]

    def end_stream(self, stream_id: str) -> list[Any]:
        assert self.aggregator is not None
        for key in [k for k in self._last_seen if k[0] == stream_id]:
            self._forget(key)
        return []

    def _touch(self, messages: list[PersonCrops]) -> None:
        """Record when each described track was last seen; forget tracks idle for ``idle_s``."""
        for message in messages:
            now = message.pts if message.pts is not None else message.capture_time
            for track_id in message.tracks.track_id.tolist():
                key = (message.stream_id, int(track_id))
                if self.aggregator is not None and self.aggregator.get(key) is not None:
                    self._last_seen[key] = now
            stale = [
                k
                for k, t in self._last_seen.items()
                if k[0] == message.stream_id and now - t > self.config.idle_s
            ]
            for key in stale:
                self._forget(key)

    def _forget(self, key: tuple[str, int]) -> None:
        assert self.aggregator is not None
        self.aggregator.end(key)
        self._emitted.pop(key, None)
        self._last_seen.pop(key, None)


def _decision_vector(state: Any) -> np.ndarray:
    decisions = state.decisions
    return np.array([-1 if d is None else int(d) for d in decisions.values()], np.int8)


def _mean(state: Any) -> np.ndarray:
    return np.array(list(state.probabilities.values()), np.float32)
