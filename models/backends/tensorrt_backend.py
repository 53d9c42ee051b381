"""TensorRT backend: an engine built from our ONNX export, cached on disk, run on the caller's stream.

The engine is looked up in the keyed cache (``engine_cache``: an engine built anywhere else, or for
an older export, is never loaded). Building is slow (minutes), so the constructor only builds when
asked (``build=True`` or ``amodal build-engine``; see ``tensorrt_build``).

Uses the TensorRT 10 name-based tensor API: ``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3`` with torch-allocated device buffers on the caller's CUDA stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.backends.base import BackendUnavailable, InferenceBackend
from models.backends.engine_cache import EngineCache, engine_cache_key, engine_key_parts, file_sha256
from models.backends.engine_profile import EngineProfile
from models.backends.tensorrt_build import build_serialized_engine, import_tensorrt

__all__ = ["TensorRTBackend"]


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
                    "(build it with amodal build-engine or build=True)",
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
