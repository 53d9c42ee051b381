"""Pick the first backend in an ordered preference that can run here, and log why the others can't.

``BackendConfig`` is the YAML face of it (one block in any stage or tool config); ``create_backend``
takes plain arguments so tests and tools build backends without YAML.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from models.backends.base import BackendUnavailable, InferenceBackend

__all__ = ["create_backend", "create_backend_from_config", "BackendConfig", "BACKEND_NAMES"]

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("tensorrt", "onnxruntime", "torch")


class BackendConfig(BaseModel):
    """Which runtime runs a model, in order of preference, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preference: list[Literal["tensorrt", "onnxruntime", "torch"]] = Field(
        default_factory=lambda: ["tensorrt", "onnxruntime", "torch"],
        description="Backends to try in order; the first that can run here is used.",
    )
    device: str = Field("cpu", description="'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32",
        description="fp16 runs on CUDA only (torch, TensorRT); int8 is TensorRT-only and needs calibration.",
    )
    engine_cache_dir: str = Field(
        "engines", description="Directory of cached TensorRT engines (keyed files)."
    )
    build_engine: bool = Field(
        False,
        description="Build a missing TensorRT engine at start-up (minutes); else use amodal build-engine.",
    )
    max_batch: int = Field(
        32,
        ge=1,
        description="Largest batch one inference call runs (larger batches are split into chunks); "
        "also the TensorRT optimisation profile's maximum.",
    )
    opt_batch: int = Field(8, ge=1, description="Batch size TensorRT tunes kernels for.")
    threads: int | None = Field(
        None, ge=1, description="ONNX Runtime intra-op threads (None: runtime default)."
    )

    @field_validator("preference")
    @classmethod
    def _non_empty_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("preference must name at least one backend")
        if len(set(value)) != len(value):
            raise ValueError(f"preference lists a backend twice: {value}")
        return value


def _make(
    name: str,
    onnx_path: str | Path | None,
    module: nn.Module | None,
    device: str,
    precision: str,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    options: dict[str, Any],
) -> InferenceBackend:
    if name == "torch":
        from models.backends.torch_backend import TorchBackend

        if module is None:
            raise BackendUnavailable(name, "no torch module was given")
        if input_names is None or output_names is None:
            if onnx_path is not None and Path(onnx_path).is_file():
                from models.backends.export import onnx_io_spec

                ins, outs = onnx_io_spec(onnx_path)  # the export's names, so every backend answers alike
            else:
                ins, outs = {"images": []}, {"output": []}
            input_names = input_names or list(ins)
            output_names = output_names or list(outs)
        return TorchBackend(module, input_names, output_names, device=device, precision=precision)
    if name == "onnxruntime":
        from models.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            onnx_path,
            device=device,
            precision=precision,
            threads=options.get("threads"),
            output_names=output_names,
        )
    if name == "tensorrt":
        if onnx_path is None:
            raise BackendUnavailable(name, "no ONNX file was given to build or look up an engine")
        from models.backends.tensorrt_backend import TensorRTBackend
        from models.backends.tensorrt_build import import_tensorrt

        import_tensorrt()  # cheapest reason first: no runtime, no need to read the ONNX file
        profile = options.get("profile")
        if profile is None:
            from models.backends.engine_profile import default_profile
            from models.backends.export import onnx_io_spec

            ins, _ = onnx_io_spec(onnx_path)
            input_name, dims = next(iter(ins.items()))
            profile = default_profile(
                input_name,
                [int(d) for d in dims[1:]],
                options.get("max_batch", 32),
                options.get("opt_batch", 8),
            )
        return TensorRTBackend(
            onnx_path,
            device=device,
            precision=precision,
            cache_dir=options.get("engine_cache_dir", "engines"),
            profile=profile,
            build=bool(options.get("build_engine", False)),
            calibrator=options.get("calibrator"),
        )
    raise ValueError(f"unknown backend {name!r}; choose from {list(BACKEND_NAMES)}")


def _chunk_limit(requested: int | None, backend: InferenceBackend) -> int | None:
    """The requested chunk size, never above what a TensorRT engine's profile accepts."""
    profile = getattr(backend, "profile", None)
    engine_max = getattr(profile, "max_batch", None)
    if engine_max is None:
        return requested
    return int(engine_max) if requested is None else min(int(requested), int(engine_max))


def create_backend(
    preference: Sequence[str] = BACKEND_NAMES,
    onnx_path: str | Path | None = None,
    module: nn.Module | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    **options: Any,
) -> InferenceBackend:
    """The first backend in ``preference`` that can run here.

    ``options``: ``threads`` (ONNX Runtime), ``max_batch`` (every backend: the chunk size of one call,
    None = no limit; TensorRT: also the profile's maximum, and an engine's profile caps it),
    ``engine_cache_dir``, ``build_engine``, ``opt_batch``, ``profile``, ``calibrator`` (TensorRT).
    Raises RuntimeError listing every backend's reason when none can run; unknown names are a
    ValueError.
    """
    unknown = [name for name in preference if name not in BACKEND_NAMES]
    if unknown or not preference:
        raise ValueError(
            f"unknown backend(s) {unknown} in preference {list(preference)}; "
            f"choose from {list(BACKEND_NAMES)}"
        )
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be one of fp32, fp16, int8; got {precision!r}")
    reasons: list[str] = []
    for name in preference:
        try:
            backend = _make(name, onnx_path, module, device, precision, input_names, output_names, options)
        except BackendUnavailable as exc:
            reasons.append(f"{name}: {exc.reason}")
            logger.info("backend %s cannot run here: %s", name, exc.reason)
            continue
        backend.max_batch = _chunk_limit(options.get("max_batch"), backend)
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
    **extra: Any,
) -> InferenceBackend:
    """``create_backend`` with the options taken from a ``BackendConfig`` block."""
    return create_backend(
        config.preference,
        onnx_path=onnx_path,
        module=module,
        device=config.device,
        precision=config.precision,
        input_names=input_names,
        output_names=output_names,
        threads=config.threads,
        engine_cache_dir=config.engine_cache_dir,
        build_engine=config.build_engine,
        max_batch=config.max_batch,
        opt_batch=config.opt_batch,
        **extra,
    )
