"""De-occlude stage: occluded crops go through the de-occlusion generator; the others cost nothing.

Two generator kinds run here: the U-Net GAN (``deocclusion_unet16_*.pt``) and the two-stage mask-
guided de-occluder (``deocclusion_two_stage_*.pt``, ``models/deocclusion/two_stage.py``), which
finds the occluder itself and restores only its region. Routing reads the grade stage's block: a
graded row is routed when its grade's location and area are in ``route`` (default: every occluded
grade) and its box is at least ``route.min_height`` frame pixels tall (the generator cannot invent
a body from a few pixels). The generator runs through the backend layer in the configured order
(TensorRT, ONNX Runtime, torch; the log says which ran and why not the others), batched across
streams. The block added is ``Restored`` (rows, crops of the same size); the original crops stay,
because the grader and the gallery need to see the real occluder and the describe stage prefers
the restored pixels.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.deocclusion.predictor import DeocclusionPredictor, DeocclusionPredictorConfig
from models.reid.occlusion_augment import union_mask
from pipeline.messages import GRADE_NAMES, PersonCrops, Restored
from pipeline.registry import register_stage
from pipeline.stage import StageContext
from stages.person_stage import PersonStage, PersonStageConfig, gather_rows, split_rows

__all__ = ["DeoccludeStage", "DeoccludeConfig", "RouteConfig", "routed_grades"]

Location = Literal["top", "bottom", "left", "right"]


class RouteConfig(BaseModel):
    """Which graded crops are de-occluded."""

    model_config = ConfigDict(extra="forbid")

    locations: list[Location] = Field(
        default_factory=lambda: ["top", "bottom", "left", "right"],
        description="Occlusion locations routed to the generator.",
    )
    areas: list[Literal["1/4", "1/2"]] = Field(
        default_factory=lambda: ["1/4", "1/2"], description="Occluded areas routed (grader eq. 8)."
    )
    min_height: float = Field(
        48.0, ge=0, description="Least box height in frame pixels for a crop to be routed."
    )


def keep_visible_pixels(crops: np.ndarray, generated: np.ndarray, grades: np.ndarray) -> np.ndarray:
    """The original pixels outside each crop's graded region, the generator's inside it (the
    de-occlusion papers recover the hidden part only)."""
    out = crops.copy()
    height, width = crops.shape[1:3]
    for i, grade in enumerate(grades.tolist()):
        region = union_mask(height, width, [grade])
        out[i][region] = generated[i][region]
    return out


def _grades_of(message: PersonCrops, rows: np.ndarray) -> np.ndarray:
    assert message.grades is not None or not len(rows)
    if not len(rows):
        return np.zeros(0, np.int64)
    where = {int(r): i for i, r in enumerate(message.grades.rows)}  # type: ignore[union-attr]
    return message.grades.grade[[where[int(r)] for r in rows]].astype(np.int64)  # type: ignore[union-attr]


def routed_grades(route: RouteConfig) -> np.ndarray:
    """Boolean (9,) table: grade index -> routed (from ``GRADE_NAMES``, "top-1/4", ...)."""
    table = np.zeros(len(GRADE_NAMES), bool)
    for index, name in enumerate(GRADE_NAMES[1:], start=1):
        location, area = name.split("-")
        table[index] = location in route.locations and area in route.areas
    return table


class DeoccludeConfig(PersonStageConfig):
    """The generator, the routing rule, the schedule and batching."""

    model: DeocclusionPredictorConfig = Field(
        default_factory=DeocclusionPredictorConfig, description="Generator checkpoint and inference backend."
    )
    route: RouteConfig = Field(default_factory=RouteConfig, description="Which graded crops are routed.")
    keep_visible: bool = Field(
        True,
        description="U-Net generators: keep the crop's own pixels outside the graded occlusion "
        "region and take only that region from the generator (whose output is "
        "softer: it works at its own, smaller size). Two-stage files always keep them "
        "outside the region they restore.",
    )


@register_stage("deocclude")
class DeoccludeStage(PersonStage):
    """Adds ``Restored`` crops for the routed (occluded) rows."""

    Config: ClassVar[type[BaseModel]] = DeoccludeConfig

    def __init__(self, config: DeoccludeConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.config: DeoccludeConfig = config
        self.predictor: DeocclusionPredictor | None = None
        self._routed = routed_grades(config.route)

    def on_start(self) -> None:
        self.predictor = DeocclusionPredictor.from_config(
            self.config.model, key=f"{self.context.name}.model.weights"
        )
        self.context.logger.info(
            "deocclude: %s on %s", self.predictor.weights.name, self.predictor.backend_name
        )

    def candidates(self, message: PersonCrops) -> np.ndarray:
        """Graded rows whose grade and box height are routed."""
        grades = message.grades
        if grades is None or not len(grades):
            return np.zeros(0, np.int32)
        boxes = message.tracks.xyxy[grades.rows]
        tall = (boxes[:, 3] - boxes[:, 1]) >= self.config.route.min_height
        return grades.rows[self._routed[grades.grade] & tall]

    def run_batch(self, messages: list[PersonCrops]) -> list[Any]:
        assert self.predictor is not None
        rows = []
        for message in messages:
            candidates = self.candidates(message)
            rows.append(self.scheduler.select(message, candidates))
        crops = gather_rows(messages, rows)
        if not len(crops):
            return list(messages)
        restored = self.timed(self.predictor, crops)
        if self.config.keep_visible and not self.predictor.composites:
            grades = np.concatenate([_grades_of(m, r) for m, r in zip(messages, rows, strict=True)])
            restored = keep_visible_pixels(crops, restored, grades)
        self.context.count("rows_restored", float(len(crops)))
        return [
            replace(m, restored=Restored(r, c)) if len(r) else m
            for m, r, c in zip(messages, rows, split_rows(restored, rows), strict=True)
        ]
