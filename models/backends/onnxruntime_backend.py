"""ONNX Runtime backend (CPU or CUDA execution provider) over our ONNX export.

onnxruntime is imported inside the constructor so a machine without it can still use the other
backends; a missing provider is a ``BackendUnavailable`` with the reason, never a silent CPU run
when CUDA was asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.backends.base import BackendUnavailable, InferenceBackend

__all__ = ["OnnxRuntimeBackend"]

logger = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRuntimeBackend(InferenceBackend):
    """An ``onnxruntime.InferenceSession`` with names and dtypes read from the graph."""

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path | None,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
        output_names: Sequence[str] | None = None,
    ):
        if onnx_path is None:
            raise BackendUnavailable(
                self.name, "no ONNX file was given (export one with models.backends.export_onnx)"
            )
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise BackendUnavailable(self.name, f"ONNX file {onnx_path} does not exist")
        if precision != "fp32":
            # The graph runs at the precision it was exported in; converting is the exporter's job.
            raise BackendUnavailable(
                self.name, f"precision {precision!r} not supported (our ONNX exports are fp32)"
            )
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailable(self.name, f"onnxruntime cannot be imported ({exc})") from exc
        available = ort.get_available_providers()
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailable(
                    self.name,
                    f"CUDAExecutionProvider not available (have {available}; install onnxruntime-gpu)",
                )
            device_id = int(device.split(":")[1]) if ":" in device else 0
            providers: list = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        graph_inputs = self.session.get_inputs()
        graph_outputs = [o.name for o in self.session.get_outputs()]
        if output_names is not None and list(output_names) != graph_outputs:
            raise ValueError(
                f"output_names {list(output_names)} do not match the ONNX graph's outputs {graph_outputs}"
            )
        super().__init__([i.name for i in graph_inputs], graph_outputs, device, precision)
        self._input_dtypes = {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in graph_inputs}
        self.onnx_path = onnx_path
        logger.debug("onnxruntime session on %s with providers %s", onnx_path, self.session.get_providers())

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: v.astype(self._input_dtypes[k], copy=False) for k, v in feeds.items()}
        outputs = self.session.run(self.output_names, feeds)
        return {k: np.asarray(v, dtype=np.float32) for k, v in zip(self.output_names, outputs, strict=True)}
