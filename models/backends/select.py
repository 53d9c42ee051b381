"""Pick the first backend in an ordered preference that can run here, and log why the others can't.

``create_backend`` takes plain arguments (runtime blocks or bare names, typed keywords) so tests and
tools build backends without YAML; ``create_backend_from_config`` maps a ``BackendConfig`` block
(``models.backends.config``) onto it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from models.backends.base import BackendUnavailable, InferenceBackend
from models.backends.config import (
    BACKEND_NAMES,
    BackendConfig,
    OnnxRuntime,
    Runtime,
    TensorRTRuntime,
    TorchRuntime,
    parse_runtime,
)
from models.backends.engine_profile import EngineProfile

__all__ = ["create_backend", "create_backend_from_config", "BACKEND_NAMES"]

logger = logging.getLogger(__name__)

_DEFAULT_MAX_BATCH = 32  # TensorRT profile maximum when no max_batch is given


def _make_torch(
    onnx_path: str | Path | None,
    module: nn.Module | None,
    device: str,
    precision: str,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
) -> InferenceBackend:
    from models.backends.torch_backend import TorchBackend

    if module is None:
        raise BackendUnavailable("torch", "no torch module was given")
    if input_names is None or output_names is None:
        if onnx_path is not None and Path(onnx_path).is_file():
            from models.backends.export import onnx_io_spec

            ins, outs = onnx_io_spec(onnx_path)  # the export's names, so every backend answers alike
        else:
            ins, outs = {"images": []}, {"output": []}
        input_names = input_names or list(ins)
        output_names = output_names or list(outs)
    return TorchBackend(module, input_names, output_names, device=device, precision=precision)


def _make_onnxruntime(
    runtime: OnnxRuntime,
    onnx_path: str | Path | None,
    device: str,
    precision: str,
    output_names: Sequence[str] | None,
) -> InferenceBackend:
    from models.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        onnx_path, device=device, precision=precision, threads=runtime.threads, output_names=output_names
    )


def _make_tensorrt(
    runtime: TensorRTRuntime,
    onnx_path: str | Path | None,
    device: str,
    precision: str,
    max_batch: int | None,
    profile: EngineProfile | None,
    calibrator: Any,
) -> InferenceBackend:
    if onnx_path is None:
        raise BackendUnavailable("tensorrt", "no ONNX file was given to build or look up an engine")
    from models.backends.tensorrt_backend import TensorRTBackend
    from models.backends.tensorrt_build import import_tensorrt

    import_tensorrt()  # cheapest reason first: no runtime, no need to read the ONNX file
    if profile is None:
        from models.backends.engine_profile import default_profile
        from models.backends.export import onnx_io_spec

        ins, _ = onnx_io_spec(onnx_path)
        input_name, dims = next(iter(ins.items()))
        profile = default_profile(
            input_name,
            [int(d) for d in dims[1:]],
            _DEFAULT_MAX_BATCH if max_batch is None else max_batch,
            runtime.opt_batch,
        )
    return TensorRTBackend(
        onnx_path,
        device=device,
        precision=precision,
        cache_dir=runtime.engine_cache_dir,
        profile=profile,
        build=runtime.build_engine,
        calibrator=calibrator,
    )


def _chunk_limit(requested: int | None, backend: InferenceBackend) -> int | None:
    """The requested chunk size, never above what a TensorRT engine's profile accepts."""
    profile = getattr(backend, "profile", None)
    engine_max = getattr(profile, "max_batch", None)
    if engine_max is None:
        return requested
    return int(engine_max) if requested is None else min(int(requested), int(engine_max))


def _runtimes(preference: Sequence[Runtime | str]) -> list[Runtime]:
    """``preference`` as runtime blocks; ValueError naming every unknown name (or an empty list)."""
    unknown = [item for item in preference if isinstance(item, str) and item not in BACKEND_NAMES]
    if unknown or not preference:
        shown = [item if isinstance(item, str) else item.type for item in preference]
        raise ValueError(
            f"unknown backend(s) {unknown} in preference {shown}; choose from {list(BACKEND_NAMES)}"
        )
    return [parse_runtime(item) for item in preference]


def create_backend(
    preference: Sequence[Runtime | str] = BACKEND_NAMES,
    onnx_path: str | Path | None = None,
    module: nn.Module | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    max_batch: int | None = None,
    profile: EngineProfile | None = None,
    calibrator: Any = None,
) -> InferenceBackend:
    """The first backend in ``preference`` that can run here.

    ``preference``: runtime blocks (``OnnxRuntime(threads=1)``, ``TensorRTRuntime(...)``) or bare
    names, which take each runtime's defaults. ``max_batch``: the chunk size of one call on every
    backend (None = no limit); TensorRT: also the default profile's maximum (32 when None), and an
    engine's profile caps it. ``profile``, ``calibrator``: TensorRT's optimisation profile and INT8
    calibrator, built by the caller (``amodal build-engine``). Raises RuntimeError listing every
    backend's reason when none can run; unknown names are a ValueError.
    """
    runtimes = _runtimes(preference)
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be one of fp32, fp16, int8; got {precision!r}")
    reasons: list[str] = []
    for runtime in runtimes:
        try:
            if isinstance(runtime, TorchRuntime):
                backend = _make_torch(onnx_path, module, device, precision, input_names, output_names)
            elif isinstance(runtime, OnnxRuntime):
                backend = _make_onnxruntime(runtime, onnx_path, device, precision, output_names)
            else:
                backend = _make_tensorrt(
                    runtime, onnx_path, device, precision, max_batch, profile, calibrator
                )
        except BackendUnavailable as exc:
            reasons.append(f"{runtime.type}: {exc.reason}")
            logger.info("backend %s cannot run here: %s", runtime.type, exc.reason)
            continue
        backend.max_batch = _chunk_limit(max_batch, backend)
        skipped = "; ".join(reasons) if reasons else "none skipped"
        logger.info(
            "using backend %s (device %s, %s, max batch %s); skipped: %s",
            backend.name,
            device,
            backend.precision,
            backend.max_batch,
            skipped,
        )
        backend.skipped_reasons = reasons  # type: ignore[attr-defined]
        return backend
    raise RuntimeError("no inference backend can run here: " + "; ".join(reasons))


def create_backend_from_config(
    config: BackendConfig,
    onnx_path: str | Path | None = None,
    module: nn.Module | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> InferenceBackend:
    """``create_backend`` with the runtimes, device, precision and chunk size of a ``BackendConfig``."""
    return create_backend(
        config.preference,
        onnx_path=onnx_path,
        module=module,
        device=config.device,
        precision=config.precision,
        input_names=input_names,
        output_names=output_names,
        max_batch=config.max_batch,
    )
