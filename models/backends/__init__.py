"""Inference backends every model family runs through: torch, ONNX Runtime and TensorRT.

``create_backend(preference=[...], onnx_path=..., module=...)`` returns the first that can run here
and logs why the others could not. Optional runtimes are imported lazily inside guards.
"""

from models.backends.base import BackendUnavailable, InferenceBackend
from models.backends.export import OnnxParityError, check_onnx_parity, export_onnx, onnx_io_spec
from models.backends.select import BackendConfig, create_backend, create_backend_from_config

__all__ = [
    "InferenceBackend",
    "BackendUnavailable",
    "BackendConfig",
    "create_backend",
    "create_backend_from_config",
    "export_onnx",
    "check_onnx_parity",
    "onnx_io_spec",
    "OnnxParityError",
]
