"""Grade stage: OAMN occlusion grade and ReID embedding of each scheduled person, in one pass.

One forward pass of the OAMN network per scheduled crop gives the grader's four location scores
(OAMN, Chen et al., ICCV 2021, sec. 3.4) and the ReID embedding; the grade is decided by eq. 8
(location = argmax, area by the two thresholds; ``pipeline.messages.GRADE_NAMES``). The thresholds
are the checkpoint's calibrated ones, moved per camera by ``CameraThresholds`` from that camera's own
recent scores (``adapt_thresholds``): a camera whose people the grader scores higher than the crops it
was calibrated on does not get its whole people graded occluded. The block added is ``Grades``
(rows, scores, grade, embedding); the identify stage reuses the embedding (no second plain pass).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from models.reid.camera_thresholds import CameraThresholds
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
        description="Adapt the eq. 8 thresholds per camera from the "
        "median grader score of its recent crops (needs a calibrated checkpoint).",
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
    """Adds ``Grades`` (grader scores, eq. 8 grade, ReID embedding) for the scheduled rows."""

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
            embeddings, scores = self.timed(self.predictor, crops)
        else:
            embeddings = np.zeros((0, self.predictor.embedding_dim), np.float32)
            scores = np.zeros((0, 4), np.float32)
        out: list[Any] = []
        for message, r, emb, sc in zip(
            messages, rows, split_rows(embeddings, rows), split_rows(scores, rows), strict=True
        ):
            if not len(r):  # an empty block: graded by this stage, no row due (later stages count it)
                out.append(replace(message, grades=Grades(r, sc, np.zeros(0, np.uint8), emb)))
                continue
            thresholds = None
            if self.cameras is not None:
                self.cameras.observe(message.stream_id, sc)
                thresholds = self.cameras.get(message.stream_id)
            grade = self.predictor.grades(sc, thresholds).astype(np.uint8)
            self.context.count("rows_occluded", float(np.count_nonzero(grade)), stream=message.stream_id)
            out.append(replace(message, grades=Grades(r, sc, grade, emb)))
        return out
