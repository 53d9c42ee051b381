"""The one interface every inference backend implements (torch, ONNX Runtime, TensorRT).

A backend takes a batch of float32 NCHW images (or a dict of named inputs) and returns a dict of
named NumPy outputs, so the pipeline stages never care which runtime produced them. Public
``__call__`` validates once (template method, boxmot style), splits a batch larger than
``max_batch`` into chunks and concatenates their outputs; subclasses implement ``_run`` and trust
their inputs.
"""

from __future__ import annotations

import logging
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

__all__ = ["InferenceBackend", "BackendUnavailable", "BackendName", "Precision", "Device"]

logger = logging.getLogger(__name__)

BackendName = Literal["torch", "onnxruntime", "tensorrt"]
Precision = Literal["fp32", "fp16", "int8"]
Device = Literal["cpu", "cuda"]


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here (runtime missing, no GPU, no cached engine...); ``reason`` says why."""

    def __init__(self, backend: str, reason: str):
        super().__init__(f"{backend}: {reason}")
        self.backend = backend
        self.reason = reason


class InferenceBackend(ABC):
    """Batched inference: ``backend(images) -> {output_name: np.ndarray}``.

    ``input_names`` / ``output_names`` are the graph's tensor names (the ONNX export's names); a bare
    array is fed to the first (usually only) input. ``max_batch`` (None = no limit) is the largest
    batch one ``_run`` gets: a larger batch runs in chunks whose outputs are concatenated along the
    batch axis, so every output must be batch-major.
    """

    name: str = "base"
    _max_batch: int | None = None  # class default, so subclasses that set up before super() have it

    def __init__(self, input_names: Sequence[str], output_names: Sequence[str], device: str, precision: str):
        if not input_names:
            raise ValueError("input_names must name at least one input")
        if not output_names:
            raise ValueError("output_names must name at least one output")
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device = device
        self.precision = precision

    @property
    def max_batch(self) -> int | None:
        """Largest batch one runtime call gets (None = no limit); larger inputs run in chunks."""
        return self._max_batch

    @max_batch.setter
    def max_batch(self, value: int | None) -> None:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
        ):
            raise ValueError(f"{self.name}: max_batch must be a positive int or None, got {value!r}")
        self._max_batch = None if value is None else int(value)

    def __call__(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self._validate(inputs)
        batch = next(iter(feeds.values())).shape[0]
        limit = self._max_batch
        if limit is None or batch <= limit:
            return self._run(feeds)
        chunks = [
            self._run({k: v[start : start + limit] for k, v in feeds.items()})
            for start in range(0, batch, limit)
        ]
        return {name: np.concatenate([c[name] for c in chunks], axis=0) for name in chunks[0]}

    def _validate(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(inputs, np.ndarray):
            if len(self.input_names) != 1:
                raise ValueError(
                    f"{self.name}: model has inputs {self.input_names}; pass a dict, not a bare array"
                )
            inputs = {self.input_names[0]: inputs}
        if not isinstance(inputs, Mapping):
            raise ValueError(
                f"{self.name}: inputs must be an np.ndarray or a dict of them, got {type(inputs)}"
            )
        missing = [n for n in self.input_names if n not in inputs]
        unknown = [n for n in inputs if n not in self.input_names]
        if missing or unknown:
            raise ValueError(
                f"{self.name}: missing inputs {missing}, unknown inputs {unknown}; "
                f"expected {self.input_names}"
            )
        feeds: dict[str, np.ndarray] = {}
        for key in self.input_names:
            array = inputs[key]
            if not isinstance(array, np.ndarray):
                raise ValueError(f"{self.name}: input {key!r} must be an np.ndarray, got {type(array)}")
            if array.ndim != 4:
                raise ValueError(f"{self.name}: input {key!r} must be (B,C,H,W), got shape {array.shape}")
            if array.shape[0] == 0:
                raise ValueError(f"{self.name}: input {key!r} has an empty batch")
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"{self.name}: input {key!r} must be floating point, got {array.dtype}")
            feeds[key] = np.ascontiguousarray(array, dtype=np.float32)
        sizes = {key: array.shape[0] for key, array in feeds.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{self.name}: inputs must share one batch size, got {sizes}")
        return feeds

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the validated float32 contiguous feeds; return float32 outputs by name."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(device={self.device!r}, precision={self.precision!r}, "
            f"max_batch={self._max_batch!r})"
        )
