"""Inference backends every model family runs through: torch, ONNX Runtime and TensorRT.

``create_backend(preference=[...], onnx_path=..., module=...)`` returns the first that can run here
and logs why the others could not; each preference item is a bare name or a runtime block
(``OnnxRuntime(threads=1)``). Optional runtimes are imported lazily inside guards.
"""

from models.backends.base import BackendUnavailable, InferenceBackend
from models.backends.config import (
    BackendConfig,
    OnnxRuntime,
    Runtime,
    TensorRTRuntime,
    TorchRuntime,
    runtimes_from_names,
)
from models.backends.export import OnnxParityError, check_onnx_parity, export_onnx, onnx_io_spec
from models.backends.select import create_backend, create_backend_from_config

__all__ = [
    "InferenceBackend",
    "BackendUnavailable",
    "BackendConfig",
    "Runtime",
    "TensorRTRuntime",
    "OnnxRuntime",
    "TorchRuntime",
    "runtimes_from_names",
    "create_backend",
    "create_backend_from_config",
    "export_onnx",
    "check_onnx_parity",
    "onnx_io_spec",
    "OnnxParityError",
]
