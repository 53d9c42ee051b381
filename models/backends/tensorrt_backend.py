"""TensorRT backend: an engine built from our ONNX export, cached on disk, run on the caller's stream.

Engines are specific to the TensorRT version, the GPU (name + compute capability), the exact ONNX
bytes, the precision and the optimisation profile. All of these go into the cache key, so an engine
built anywhere else, or for an older export, is never loaded: it is simply a different key, and the
metadata stored beside each engine is checked again on load. Building is slow (minutes), so the
constructor only builds when asked (``build=True`` or ``tools/build_engine.py``).

Uses the TensorRT 10 name-based tensor API: ``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3`` with torch-allocated device buffers on the caller's CUDA stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.backends.base import BackendUnavailable, InferenceBackend

__all__ = [
    "EngineProfile",
    "EngineCache",
    "TensorRTBackend",
    "engine_cache_key",
    "engine_key_parts",
    "file_sha256",
    "build_serialized_engine",
    "make_int8_calibrator",
    "import_tensorrt",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineProfile:
    """The dynamic-batch optimisation profile: batch sizes min <= opt <= max for a fixed (C,H,W)."""

    input_name: str
    chw: tuple[int, int, int]
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"profile batches must satisfy 1 <= min_batch <= opt_batch <= max_batch, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )
        if len(self.chw) != 3 or any(int(d) <= 0 for d in self.chw):
            raise ValueError(f"profile chw must be three positive sizes, got {self.chw}")

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        c, h, w = self.chw
        return (self.min_batch, c, h, w), (self.opt_batch, c, h, w), (self.max_batch, c, h, w)


def file_sha256(path: str | Path) -> str:
    """Hash of the model file's bytes: any re-export (new weights, new opset) changes it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def engine_key_parts(
    trt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int] | str,
    model_hash: str,
    precision: str,
    profile: EngineProfile,
) -> dict[str, Any]:
    """Everything an engine depends on, as a JSON-able dict (stored beside the engine)."""
    if isinstance(compute_capability, tuple):
        compute_capability = f"{compute_capability[0]}.{compute_capability[1]}"
    return {
        "tensorrt_version": str(trt_version),
        "gpu_name": str(gpu_name),
        "compute_capability": str(compute_capability),
        "model_sha256": str(model_hash),
        "precision": str(precision),
        "profile": {**asdict(profile), "chw": list(profile.chw)},
    }


def engine_cache_key(
    trt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int] | str,
    model_hash: str,
    precision: str,
    profile: EngineProfile,
) -> str:
    """A file-name-safe key that changes when any part changes (sha256 of the canonical parts)."""
    parts = engine_key_parts(trt_version, gpu_name, compute_capability, model_hash, precision, profile)
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return f"{precision}-{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


class EngineCache:
    """``<dir>/<key>.engine`` + ``<key>.json`` (the key's parts); atomic writes, verified reads."""

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)

    def engine_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.engine"

    def meta_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    def load(self, key: str, parts: dict[str, Any]) -> bytes | None:
        """The cached engine for ``key`` if its stored parts match ``parts`` exactly, else None."""
        engine, meta = self.engine_path(key), self.meta_path(key)
        if not engine.is_file() or not meta.is_file():
            return None
        try:
            stored = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("engine cache: unreadable metadata %s (%s); will rebuild", meta, exc)
            return None
        if stored != parts:
            changed = sorted(k for k in set(stored) | set(parts) if stored.get(k) != parts.get(k))
            logger.warning(
                "engine cache: %s is stale or foreign (differs in %s); will rebuild", engine, changed
            )
            return None
        return engine.read_bytes()

    def store(self, key: str, parts: dict[str, Any], engine: bytes) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for path, payload in (
            (self.engine_path(key), engine),
            (self.meta_path(key), json.dumps(parts, indent=2).encode()),
        ):
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            os.replace(tmp, path)
        return self.engine_path(key)


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


class TensorRTBackend(InferenceBackend):
    """Run a cached (or, when asked, freshly built) TensorRT engine.

    ``run_device`` is the zero-copy path: torch CUDA tensors in, torch CUDA tensors out, enqueued on
    the caller's current stream (or the one given). ``__call__`` wraps it for NumPy callers.
    """

    name = "tensorrt"

    def __init__(
        self,
        onnx_path: str | Path | None,
        device: str = "cuda",
        precision: str = "fp16",
        cache_dir: str | Path = "engines",
        profile: EngineProfile | None = None,
        build: bool = False,
        calibrator: Any = None,
    ):
        if onnx_path is None:
            raise BackendUnavailable(self.name, "no ONNX file was given to build or look up an engine")
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise BackendUnavailable(self.name, f"ONNX file {onnx_path} does not exist")
        if not device.startswith("cuda"):
            raise BackendUnavailable(self.name, f"TensorRT needs a CUDA device, got device={device!r}")
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable(self.name, "torch sees no CUDA device")
        from models.backends.export import onnx_io_spec

        inputs, outputs = onnx_io_spec(onnx_path)
        if profile is None:
            name, dims = next(iter(inputs.items()))
            if any(not isinstance(d, int) or d <= 0 for d in dims[1:]):
                raise ValueError(
                    f"ONNX input {name!r} has dynamic C/H/W {dims}; pass an explicit EngineProfile"
                )
            profile = EngineProfile(name, tuple(dims[1:]))  # type: ignore[arg-type]
        self._torch = torch
        self._trt = trt
        self._device = torch.device(device)
        gpu_index = self._device.index or 0
        parts = engine_key_parts(
            trt.__version__,
            torch.cuda.get_device_name(gpu_index),
            torch.cuda.get_device_capability(gpu_index),
            file_sha256(onnx_path),
            precision,
            profile,
        )
        key = engine_cache_key(
            parts["tensorrt_version"],
            parts["gpu_name"],
            parts["compute_capability"],
            parts["model_sha256"],
            precision,
            profile,
        )
        cache = EngineCache(cache_dir)
        serialized = cache.load(key, parts)
        if serialized is None:
            if not build:
                raise BackendUnavailable(
                    self.name,
                    f"no matching engine {cache.engine_path(key)} "
                    "(build it with tools/build_engine.py or build=True)",
                )
            serialized = build_serialized_engine(onnx_path, precision, profile, calibrator=calibrator)
            cache.store(key, parts, serialized)
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        with torch.cuda.device(self._device):
            self.engine = self._runtime.deserialize_cuda_engine(serialized)
            if self.engine is None:
                raise BackendUnavailable(
                    self.name, f"engine {cache.engine_path(key)} could not be deserialized"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        in_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        out_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        super().__init__(in_names, out_names, device, precision)
        self.profile = profile
        self.cache_key = key
        self.engine_path = cache.engine_path(key)
        self._torch_dtypes = {n: self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}

    def _torch_dtype(self, trt_dtype: Any) -> Any:
        torch, trt = self._torch, self._trt
        table = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.int32: torch.int32,
            trt.int8: torch.int8,
        }
        for trt_name, torch_name in (("int64", "int64"), ("bool", "bool"), ("bfloat16", "bfloat16")):
            if hasattr(trt, trt_name):  # TensorRT 10 adds these; older bindings lack some
                table[getattr(trt, trt_name)] = getattr(torch, torch_name)
        if trt_dtype not in table:
            raise ValueError(f"unsupported TensorRT tensor dtype {trt_dtype}")
        return table[trt_dtype]

    def run_device(self, feeds: dict[str, Any], stream: Any = None) -> dict[str, Any]:
        """Enqueue on ``stream`` (default: torch's current stream); outputs are fresh CUDA tensors.

        The caller synchronises (or records an event) before reading the outputs on the host.
        """
        torch = self._torch
        stream = stream if stream is not None else torch.cuda.current_stream(self._device)
        batch = next(iter(feeds.values())).shape[0]
        if not self.profile.min_batch <= batch <= self.profile.max_batch:
            raise ValueError(
                f"batch {batch} outside the engine's profile "
                f"[{self.profile.min_batch}, {self.profile.max_batch}]"
            )
        keep_alive = []
        for name in self.input_names:
            tensor = (
                feeds[name].to(self._device, dtype=self._torch_dtypes[name], non_blocking=True).contiguous()
            )
            keep_alive.append(tensor)
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"input {name!r} shape {tuple(tensor.shape)} rejected by the engine")
            self.context.set_tensor_address(name, int(tensor.data_ptr()))
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self._torch_dtypes[name], device=self._device)
            self.context.set_tensor_address(name, int(out.data_ptr()))
            outputs[name] = out
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for tensor in keep_alive:  # inputs must outlive the enqueued work on this stream
            tensor.record_stream(stream)
        return outputs

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        stream = torch.cuda.current_stream(self._device)
        tensors = {k: torch.from_numpy(v).pin_memory() for k, v in feeds.items()}
        outputs = self.run_device(tensors, stream)
        host = {k: v.float().cpu() for k, v in outputs.items()}  # .cpu() synchronises the stream
        return {k: v.numpy() for k, v in host.items()}


def default_profile(
    input_name: str, chw: Sequence[int], max_batch: int = 32, opt_batch: int = 8
) -> EngineProfile:
    """A 1..max_batch profile tuned for ``opt_batch`` crops (the pipeline batches crops across streams)."""
    return EngineProfile(
        input_name, (int(chw[0]), int(chw[1]), int(chw[2])), 1, min(opt_batch, max_batch), max_batch
    )
