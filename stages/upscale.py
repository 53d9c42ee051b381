"""Upscale stage: the crops of small people rebuilt by super-resolution before the model stages.

The tracker stretches every box to ``crop_size`` (256x128 by default), so a person 40 pixels tall
reaches the grader, the attribute classifier and the ReID network as a linearly interpolated blur.
The reconstruction paper's "complete model" (``../shared/papers/gan-reconstruction-for-attribute-
recognition.txt``, sec. 5) sends an image through its super-resolution network "only if the input
image is smaller than the network input". Here a row whose box is shorter than ``max_height``
frame pixels is brought back to the size the camera saw it at (the box's height, the crop's
aspect), super-resolved (``models/superres``, x4 by default) and resized to the crop size; taller
rows pass untouched. The crop is replaced in place (it is still the person's crop, only better
interpolated), so every stage after this one reads it.

The network runs in torch (a 0.2 M-parameter convolutional net; its input size changes with every
box, which the fixed-shape ONNX / TensorRT exports of the other stages do not take).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.data.transforms import resize
from pipeline.messages import PersonCrops
from pipeline.registry import register_stage
from pipeline.stage import StageContext
from stages.person_stage import PersonStage, PersonStageConfig
from stages.scheduling import ScheduleConfig

__all__ = ["UpscaleStage", "UpscaleConfig", "UpscaleModelConfig", "native_size"]


class UpscaleModelConfig(BaseModel):
    """The super-resolution network."""

    model_config = ConfigDict(extra="forbid")

    weights: str = Field(
        "superres_x4_market.pt",
        description="SR file (amodal train superres): a path, or the bare name of a file shipped in "
        "models/weights/ (research-only Market-1501 weights by default).",
    )
    device: str = Field("cpu", description="'cpu', 'cuda' or 'cuda:N'.")
    batch_size: int = Field(32, ge=1, description="Crops of one size per network call.")


def _every_frame() -> ScheduleConfig:
    return ScheduleConfig(confirm_frames=1, every_s=None, every_frames=1, better_ratio=None)


class UpscaleConfig(PersonStageConfig):
    """Which rows are rebuilt and by which network."""

    schedule: ScheduleConfig = Field(
        default_factory=_every_frame,
        description="Which tracks' rows are considered (default: every row of every frame, so the "
        "stages after this one find the rebuilt crop whichever frame they pick).",
    )
    model: UpscaleModelConfig = Field(default_factory=UpscaleModelConfig, description="The SR network.")
    max_height: float = Field(
        96.0,
        gt=0,
        description="Boxes shorter than this (frame pixels) are super-resolved; taller ones pass.",
    )


def native_size(box_height: float, crop_hw: tuple[int, int]) -> tuple[int, int]:
    """The size the camera saw a crop at: the box's height, the crop's aspect (at least 4x2)."""
    h = max(4, int(round(box_height)))
    return h, max(2, int(round(h * crop_hw[1] / crop_hw[0])))


@register_stage("upscale")
class UpscaleStage(PersonStage):
    """Replaces the crops of small boxes with super-resolved ones."""

    Config: ClassVar[type[BaseModel]] = UpscaleConfig

    def __init__(self, config: UpscaleConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.config: UpscaleConfig = config
        self.resolver = None

    def on_start(self) -> None:
        from models.superres.predictor import SuperResolver

        self.resolver = SuperResolver.from_weights(
            self.config.model.weights,
            key=f"{self.context.name}.model.weights",
            device=self.config.model.device,
            batch_size=self.config.model.batch_size,
        )
        self.context.logger.info(
            "upscale: %s (x%d) on boxes under %.0f px",
            self.config.model.weights,
            self.resolver.scale,
            self.config.max_height,
        )

    def small_rows(self, message: PersonCrops) -> np.ndarray:
        boxes = message.tracks.xyxy
        heights = boxes[:, 3] - boxes[:, 1]
        return np.flatnonzero(heights < self.config.max_height).astype(np.int32)

    def run_batch(self, messages: list[PersonCrops]) -> list[Any]:
        assert self.resolver is not None
        rows = [self.scheduler.select(m, self.small_rows(m)) for m in messages]
        natives, where = [], []
        for k, (message, r) in enumerate(zip(messages, rows, strict=True)):
            crop_hw = message.crops.shape[1:3]
            for row in r.tolist():
                box = message.tracks.xyxy[row]
                small = resize(message.crops[row][..., ::-1], native_size(float(box[3] - box[1]), crop_hw))
                natives.append(np.ascontiguousarray(small))  # BGR -> RGB, at the camera's size
                where.append((k, row))
        if not natives:
            return list(messages)
        rebuilt: list[np.ndarray | None] = [None] * len(natives)
        for crop_hw in {messages[k].crops.shape[1:3] for k, _ in where}:  # one size per tracker
            chosen = [i for i, (k, _) in enumerate(where) if messages[k].crops.shape[1:3] == crop_hw]
            batch = [natives[i] for i in chosen]
            for i, image in zip(
                chosen, self.timed(lambda b, hw=crop_hw: self.resolver.upscale_to(b, hw), batch), strict=True
            ):
                rebuilt[i] = image
        crops = {k: messages[k].crops.copy() for k in {k for k, _ in where}}
        for (k, row), image in zip(where, rebuilt, strict=True):
            crops[k][row] = image[..., ::-1]  # RGB -> BGR
        self.context.count("rows_upscaled", float(len(natives)))
        return [replace(m, crops=crops[k]) if k in crops else m for k, m in enumerate(messages)]
