"""Building TensorRT engines: the guarded ``tensorrt`` import, the INT8 calibrator and the builder.

Building is slow (minutes), so only ``amodal build-engine`` or ``TensorRTBackend(build=True)``
calls it. Uses the TensorRT 10 builder API (explicit batch, one optimisation profile).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from models.backends.base import BackendUnavailable
from models.backends.engine_profile import EngineProfile

__all__ = ["build_serialized_engine", "make_int8_calibrator", "import_tensorrt"]

logger = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    """``import tensorrt`` behind a guard: a missing runtime is a reason, not a crash."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken CUDA library load
        raise BackendUnavailable(
            "tensorrt", f"the tensorrt package cannot be imported ({type(exc).__name__}: {exc})"
        ) from exc
    return trt


def make_int8_calibrator(
    batches: Callable[[], Iterable[np.ndarray]], input_name: str, cache_file: str | Path, batch_size: int
) -> Any:
    """An ``IInt8EntropyCalibrator2`` fed from ``batches()`` (float32 NCHW arrays, already normalised).

    This is the INT8 calibration hook: pass the result as ``calibrator=`` when building an int8
    engine. The calibration table is cached in ``cache_file`` so rebuilding skips calibration.
    """
    trt = import_tensorrt()
    import torch

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._iter = iter(batches())
            self._device_batch: torch.Tensor | None = None
            self._cache_file = Path(cache_file)

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                batch = next(self._iter)
            except StopIteration:
                return None
            self._device_batch = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda()
            return [int(self._device_batch.data_ptr()) if name == input_name else 0 for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return self._cache_file.read_bytes() if self._cache_file.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            self._cache_file.parent.mkdir(parents=True, exist_ok=True)
            self._cache_file.write_bytes(bytes(cache))

    return _Calibrator()


def build_serialized_engine(
    onnx_path: str | Path,
    precision: str,
    profile: EngineProfile,
    calibrator: Any = None,
    workspace_bytes: int = 2 << 30,
) -> bytes:
    """Parse the ONNX export and build a serialized engine (TensorRT 10 builder API)."""
    trt = import_tensorrt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibrator is None:
            raise ValueError("precision 'int8' needs a calibrator (see make_int8_calibrator)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
    opt_profile = builder.create_optimization_profile()
    minimum, optimum, maximum = profile.shapes()
    opt_profile.set_shape(profile.input_name, minimum, optimum, maximum)
    config.add_optimization_profile(opt_profile)
    if precision == "int8":
        config.set_calibration_profile(opt_profile)
    logger.info(
        "building TensorRT %s engine from %s (profile %s..%s)", precision, onnx_path, minimum, maximum
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(serialized)
