"""Detect stage: ultralytics YOLO on Frames, person class by default, batched across streams.

The runtime hands ``process_batch`` up to ``max_batch`` frames, waiting at most ``max_wait_ms`` to
fill a batch; frames of several cameras therefore share one forward pass. ``interval: N`` runs the
detector on every Nth frame *of each stream* (the first frame of a stream always), the frames in
between pass through with ``detections=None`` so the tracker predicts them from its motion model.

Weights: ``.pt``, ``.onnx``, ``.engine`` or an OpenVINO export directory, all loaded by
``YOLO(path, task="detect")``. The default ``yolo11n.pt`` is fetched by ultralytics itself on a
connected machine; offline (``YOLO_OFFLINE=1`` or no network) the stage checks the file first and
fails with the path and the ``--set`` that points the config at local weights, so ultralytics
never tries a download. Nor does it pip-install anything: ``amodal`` and the stage worker set
``YOLO_AUTOINSTALL=false`` before ultralytics is imported (``amodal.program_env``). Conversion
from ultralytics ``Results`` to our ``Detections`` lives here (STYLE.md: conversions belong in the
stage that needs them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.messages import Detections, EndOfStream, Frame
from pipeline.registry import register_stage
from pipeline.stage import Stage, StageContext
from stages.ultralytics_import import import_ultralytics

__all__ = ["DetectStage", "DetectConfig", "resolve_weights", "results_to_detections"]

_WEIGHT_SUFFIXES = (".pt", ".onnx", ".engine", ".xml", ".torchscript")


class DetectConfig(BaseModel):
    """YOLO detector settings."""

    model_config = ConfigDict(extra="forbid")

    weights: str = Field(
        "yolo11n.pt",
        description="YOLO weights: a .pt, .onnx or .engine file or an "
        "OpenVINO export directory (*_openvino_model/). A bare official name such as "
        "yolo11n.pt is downloaded by ultralytics only on a connected machine.",
    )
    conf: float = Field(0.25, ge=0, le=1, description="Minimum detection confidence.")
    iou: float = Field(0.7, ge=0, le=1, description="IoU threshold of non-maximum suppression.")
    imgsz: int | list[int] = Field(
        640,
        description="Inference size: one side (square) or [h, w]. Fixed-"
        "shape exports (OpenVINO/ONNX/TensorRT) use their export size.",
    )
    device: str = Field(
        "auto",
        description="auto (CUDA when available, else CPU), cpu, cuda, cuda:N, or "
        "an ultralytics device string such as intel:gpu for OpenVINO.",
    )
    half: bool = Field(False, description="FP16 inference (CUDA/TensorRT; ignored on CPU).")
    classes: list[int] | None = Field(
        default_factory=lambda: [0],
        description="COCO class ids to keep (0 = person); null keeps every class.",
    )
    max_det: int = Field(300, ge=1, description="Maximum detections per frame.")
    max_batch: int = Field(8, ge=1, le=256, description="Frames per forward pass (across streams).")
    max_wait_ms: float = Field(5.0, ge=0, description="How long to wait for a batch to fill, in ms.")
    interval: int = Field(
        1,
        ge=1,
        description="Run the detector on every Nth frame of each stream; "
        "frames in between carry detections=None and the tracker predicts them.",
    )
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="CPU threads for OpenVINO inference; 0 = its "
        "default (all cores). On a small box, leaving cores to decoding, tracking and "
        "encoding keeps the graph as fast as its detector. torch models are not capped "
        "(torch's thread pool is process-wide).",
    )
    warmup: bool = Field(
        True,
        description="Run one dummy inference in on_start so the first real frame "
        "does not pay for model initialisation.",
    )

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 0):
            raise ValueError(f"classes must be a non-empty list of ids >= 0 (null = all), got {value}")
        return value

    @field_validator("imgsz")
    @classmethod
    def _imgsz(cls, value: int | list[int]) -> int | list[int]:
        sizes = [value] if isinstance(value, int) else value
        if len(sizes) not in (1, 2) or any(s < 32 or s % 32 for s in sizes):
            raise ValueError(f"imgsz must be one or two multiples of 32 (>= 32), got {value!r}")
        return value


def _offline() -> bool:
    if os.environ.get("YOLO_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    from ultralytics.utils import ONLINE

    return not ONLINE


def _half_precision() -> dict[str, Any]:
    """FP16 request in the spelling of the installed ultralytics (``quantize=16`` replaced ``half``)."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}


def resolve_weights(weights: str) -> str:
    """Return the weights path to load; FileNotFoundError (naming the fix) when it cannot exist.

    A bare file name (``yolo11n.pt``) may also live in ultralytics' weights folder; when it is
    nowhere and the machine is online, ultralytics downloads it, otherwise we fail here before
    ultralytics can try.
    """
    path = Path(weights).expanduser()
    if path.is_dir():
        if not any(path.glob("*.xml")):
            raise FileNotFoundError(f"detector weights directory {str(path)!r} holds no OpenVINO .xml model")
        return str(path)
    if path.is_file():
        if path.suffix.lower() not in _WEIGHT_SUFFIXES:
            raise ValueError(
                f"detector weights {str(path)!r}: unsupported format {path.suffix!r}; use "
                ".pt, .onnx, .engine or an OpenVINO export directory"
            )
        return str(path)
    if path.name == weights:  # bare name: ultralytics' own weights folder, or its download
        from ultralytics.utils import SETTINGS

        cached = Path(SETTINGS["weights_dir"]) / weights
        if cached.is_file():
            return str(cached)
        if not _offline():
            return weights
    raise FileNotFoundError(
        f"detector weights {weights!r} not found (looked at {str(path.resolve())!r}) and this machine is "
        "offline, so they cannot be downloaded. Point the config at local weights, e.g. "
        "--set detect.weights=/path/to/yolov8n_openvino_model (or a .pt/.onnx/.engine file)."
    )


def results_to_detections(result: Any) -> Detections:
    """ultralytics ``Results`` (one image) -> our ``Detections`` in full-frame pixels."""
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return Detections.empty()
    boxes = boxes.cpu().numpy()
    return Detections(
        xyxy=np.ascontiguousarray(boxes.xyxy, dtype=np.float32),
        confidence=np.ascontiguousarray(boxes.conf, dtype=np.float32),
        class_id=np.ascontiguousarray(boxes.cls, dtype=np.int32),
    )


@register_stage("detect")
class DetectStage(Stage):
    """Run YOLO on frames (every ``interval``-th per stream) and attach ``Detections``."""

    Config: ClassVar[type[BaseModel]] = DetectConfig
    accepts: ClassVar[tuple[type, ...]] = (Frame,)
    emits: ClassVar[tuple[type, ...] | None] = (Frame,)

    def __init__(self, config: DetectConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.config: DetectConfig = config
        self.max_batch = config.max_batch
        self.max_wait_s = config.max_wait_ms / 1000.0
        self._model: Any = None
        self._seen: dict[str, int] = {}
        self._predict_args: dict[str, Any] = {}

    @classmethod
    def check_files(cls, config: Any, name: str) -> list[str]:
        """The weights must be a local file or folder, or a name ultralytics can fetch when online."""
        try:
            resolve_weights(config.weights)
        except (FileNotFoundError, ValueError) as exc:
            return [f"{name}.weights: {exc}"]
        return []

    def on_start(self) -> None:
        """Load the model (no download offline) and warm it up."""
        import_ultralytics()  # under the lock every stage imports it with (threads start together)
        weights = resolve_weights(self.config.weights)
        from ultralytics import YOLO

        device = self.config.device
        if device == "auto":
            from models.training import pick_device

            device = str(pick_device("auto"))
        self._model = YOLO(weights, task="detect")
        cfg = self.config
        self._predict_args = {
            "conf": cfg.conf,
            "iou": cfg.iou,
            "imgsz": cfg.imgsz,
            "device": device,
            "classes": cfg.classes,
            "max_det": cfg.max_det,
            "verbose": False,
        }
        if cfg.half:
            self._predict_args.update(_half_precision())
        self.context.logger.info(
            "detector %s on %s (conf=%.2f, classes=%s, interval=%d, max_batch=%d)",
            weights,
            device,
            cfg.conf,
            cfg.classes,
            cfg.interval,
            cfg.max_batch,
        )
        if cfg.warmup or cfg.threads:
            self.detect([np.zeros((64, 64, 3), np.uint8)])  # builds ultralytics' predictor + backend
        if cfg.threads:
            self._limit_threads(weights, cfg.threads)

    def _limit_threads(self, weights: str, threads: int) -> None:
        """Cap inference threads: torch models via torch, OpenVINO by recompiling with
        INFERENCE_NUM_THREADS (ultralytics exposes no option for it, so this reaches into its backend;
        if that layout changes the cap is skipped with a warning, never an error)."""
        backend = getattr(getattr(getattr(self._model, "predictor", None), "model", None), "backend", None)
        if hasattr(backend, "ov_compiled_model") and hasattr(backend, "compile_model"):
            try:
                import openvino as ov

                path = Path(weights)
                xml = path if path.is_file() else next(path.glob("*.xml"))
                core = ov.Core()
                config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
                backend.compile_model = partial(core.compile_model, device_name="CPU", config=config)
                backend.ov_compiled_model = backend.compile_model(core.read_model(str(xml)))
                self.context.logger.info("OpenVINO inference limited to %d threads", threads)
            except Exception as exc:  # noqa: BLE001 - an optimisation must never stop the stage
                self.context.logger.warning("could not limit OpenVINO threads (%s); using its default", exc)
            return
        # torch's thread pool belongs to the whole process (every stage of an embedded graph): a stage
        # must not resize it behind the others' backs, so the cap applies to OpenVINO models only.
        self.context.logger.warning(
            "detect.threads=%d applies to OpenVINO exports; %s runs on torch, whose "
            "thread pool is process-wide and is left as it is",
            threads,
            weights,
        )

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        """One batched forward pass over BGR images; one ``Detections`` per image, in order."""
        if self._model is None:
            raise RuntimeError("DetectStage.detect called before on_start loaded the model")
        results = self._model.predict(images, **self._predict_args)
        return [results_to_detections(r) for r in results]

    def process(self, message: Any) -> Iterable[Any]:
        if isinstance(message, EndOfStream):
            self._seen.pop(message.stream_id, None)  # a stream id that comes back starts afresh
            return ()
        return self.process_batch([message])

    def process_batch(self, messages: list[Any]) -> Iterable[Any]:
        run: list[int] = []
        for index, frame in enumerate(messages):
            seen = self._seen.get(frame.stream_id, 0)
            self._seen[frame.stream_id] = seen + 1
            if seen % self.config.interval == 0:
                run.append(index)
        outputs = list(messages)
        if run:
            started = time.perf_counter()
            detections = self.detect([messages[i].image for i in run])
            self.context.observe("detector_inference_seconds", time.perf_counter() - started)
            self.context.observe("detector_batch_frames", len(run))
            for index, dets in zip(run, detections, strict=True):
                outputs[index] = replace(messages[index], detections=dets)
        return outputs
