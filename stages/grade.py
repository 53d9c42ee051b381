"""Grade stage: OAMN occlusion grade and ReID embedding of each scheduled person, in one pass.

One forward pass of the OAMN network per scheduled crop gives the grader's output (N, 5): four
location scores (OAMN, Chen et al., ICCV 2021, sec. 3.4) and the person's visible fraction v
(``models.reid.grader.VISIBLE``), and the ReID embedding; the grade is decided by eq. 8 (location =
argmax, area by the thresholds; ``pipeline.messages.GRADE_NAMES``). The thresholds are the
checkpoint's calibrated ones, moved per camera by ``CameraThresholds`` from that camera's own recent
grader output (``adapt_thresholds``): a camera whose people the grader scores differently from the
crops it was calibrated on does not get its whole people graded occluded. The block added is
``Grades`` (rows, the four location scores, grade, embedding, visible fraction); the identify stage
reuses the embedding (no second plain pass). Metrics: ``rows_occluded_total`` and the gauge
``visible_fraction_mean`` (mean visible fraction of the rows graded in a stream's latest frame).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from models.reid.camera_thresholds import CameraThresholds
from models.reid.grader import VISIBLE, visible_fraction
from models.reid.predictor import ReidPredictor, ReidPredictorConfig
from pipeline.messages import Grades, PersonCrops
from pipeline.registry import register_stage
from pipeline.stage import StageContext
from stages.person_stage import PersonStage, PersonStageConfig, gather_rows, split_rows

__all__ = ["GradeStage", "GradeConfig"]


class GradeConfig(PersonStageConfig):
    """The OAMN network, the per-camera threshold adaptation, the schedule and batching."""

    model: ReidPredictorConfig = Field(
        default_factory=ReidPredictorConfig, description="OAMN checkpoint and inference backend."
    )
    adapt_thresholds: bool = Field(
        True,
        description="Adapt the eq. 8 thresholds per camera from the median visible fraction (or top "
        "grader score, for the paper's grader) of its recent crops (needs a calibrated checkpoint).",
    )
    adapt_window: int = Field(1000, ge=1, description="Recent crops per camera the adaptation looks at.")
    adapt_min_crops: int = Field(
        100,
        ge=1,
        description="Crops a camera must have shown before its "
        "thresholds move away from the calibrated ones.",
    )


@register_stage("grade")
class GradeStage(PersonStage):
    """Adds ``Grades`` (location scores, eq. 8 grade, ReID embedding, visible fraction) for the
    scheduled rows."""

    Config: ClassVar[type[BaseModel]] = GradeConfig

    def __init__(self, config: GradeConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.config: GradeConfig = config
        self.predictor: ReidPredictor | None = None
        self.cameras: CameraThresholds | None = None

    def on_start(self) -> None:
        self.predictor = ReidPredictor.from_config(
            self.config.model, key=f"{self.context.name}.model.weights"
        )
        median = self.predictor.reference_median
        if self.config.adapt_thresholds and median is not None:
            self.cameras = CameraThresholds(
                self.predictor.thresholds,
                median,
                self.config.adapt_window,
                min(self.config.adapt_min_crops, self.config.adapt_window),
            )
        elif self.config.adapt_thresholds:
            self.context.logger.warning(
                "%s has no grader reference median: per-camera threshold adaptation is off",
                self.predictor.weights.name,
            )
        self.context.logger.info("grade: %s on %s", self.predictor.weights.name, self.predictor.backend_name)

    def run_batch(self, messages: list[PersonCrops]) -> list[Any]:
        assert self.predictor is not None
        rows = [self.scheduler.select(m) for m in messages]
        crops = gather_rows(messages, rows)
        if len(crops):
            embeddings, output = self.timed(self.predictor, crops)
        else:
            embeddings = np.zeros((0, self.predictor.embedding_dim), np.float32)
            output = np.zeros((0, VISIBLE + 1), np.float32)
        out: list[Any] = []
        for message, r, emb, sc in zip(
            messages, rows, split_rows(embeddings, rows), split_rows(output, rows), strict=True
        ):
            if not len(r):  # an empty block: graded by this stage, no row due (later stages count it)
                empty = Grades(
                    r, np.zeros((0, 4), np.float32), np.zeros(0, np.uint8), emb, np.zeros(0, np.float32)
                )
                out.append(replace(message, grades=empty))
                continue
            thresholds = None
            if self.cameras is not None:
                self.cameras.observe(message.stream_id, sc)  # the full output: v adapts ``visible``
                thresholds = self.cameras.get(message.stream_id)
            grade = self.predictor.grades(sc, thresholds).astype(np.uint8)
            visible = np.clip(visible_fraction(sc), 0.0, 1.0).astype(np.float32)
            self.context.count("rows_occluded", float(np.count_nonzero(grade)), stream=message.stream_id)
            self.context.observe("visible_fraction_mean", float(visible.mean()), stream=message.stream_id)
            out.append(replace(message, grades=Grades(r, sc[:, :4], grade, emb, visible)))
        return out
