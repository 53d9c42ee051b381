"""The YAML face of the backend layer: one typed block per runtime, and ``BackendConfig``, the ordered
list of them plus what every runtime shares (device, precision, chunk size).

A runtime is written as a bare name (``torch``) or as a block with its own settings
(``{type: onnxruntime, threads: 1}``); the ``type`` key picks the block, so a setting of one runtime
written under another is refused where the config is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from models.run_config import refuse_moved_keys

__all__ = [
    "BACKEND_NAMES",
    "BackendConfig",
    "OnnxRuntime",
    "Runtime",
    "TensorRTRuntime",
    "TorchRuntime",
    "parse_runtime",
    "runtimes_from_names",
]

BACKEND_NAMES = ("tensorrt", "onnxruntime", "torch")

# one text for every block's ``type``: ``amodal check`` finds a union member's field by name alone
_TYPE = "The runtime this block sets up: tensorrt (CUDA only), onnxruntime or torch (eager)."


class TensorRTRuntime(BaseModel):
    """TensorRT: an engine built from the ONNX export, looked up in a keyed on-disk cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["tensorrt"] = Field("tensorrt", description=_TYPE)
    engine_cache_dir: str = Field(
        "engines", description="Directory of cached TensorRT engines (keyed files)."
    )
    build_engine: bool = Field(
        False,
        description="Build a missing TensorRT engine at start-up (minutes); else use amodal build-engine.",
    )
    opt_batch: int = Field(8, ge=1, description="Batch size TensorRT tunes kernels for.")


class OnnxRuntime(BaseModel):
    """ONNX Runtime over the ONNX export (CPU or CUDA execution provider)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["onnxruntime"] = Field("onnxruntime", description=_TYPE)
    threads: int | None = Field(
        None, ge=1, description="ONNX Runtime intra-op threads (None: runtime default)."
    )


class TorchRuntime(BaseModel):
    """Eager torch on the network module itself (needs no ONNX file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["torch"] = Field("torch", description=_TYPE)


Runtime = Annotated[TensorRTRuntime | OnnxRuntime | TorchRuntime, Field(discriminator="type")]

_RUNTIME = TypeAdapter(Runtime)

# Old top-level BackendConfig keys -> the runtime block that holds them now.
_MOVED_TO = {
    "threads": "onnxruntime",
    "engine_cache_dir": "tensorrt",
    "build_engine": "tensorrt",
    "opt_batch": "tensorrt",
}


def _as_block(item: Any) -> Any:
    """A bare runtime name -> ``{"type": name}``; anything else unchanged (the union validates it)."""
    return {"type": item} if isinstance(item, str) else item


def parse_runtime(item: Runtime | str | Mapping[str, Any]) -> Runtime:
    """A runtime block from a block, a bare name or a mapping; an unknown name is a ValueError."""
    if isinstance(item, str) and item not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {item!r}; choose from {list(BACKEND_NAMES)}")
    return _RUNTIME.validate_python(_as_block(item))


def runtimes_from_names(names: Sequence[str], threads: int | None = None) -> list[Runtime]:
    """Runtime blocks for bare ``names``, ONNX Runtime with ``threads`` intra-op threads (a command's
    ``--threads``), every other runtime with its defaults."""
    return [OnnxRuntime(threads=threads) if name == "onnxruntime" else parse_runtime(name) for name in names]


class BackendConfig(BaseModel):
    """Which runtime runs a model, in order of preference, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preference: list[Runtime] = Field(
        default_factory=lambda: [TensorRTRuntime(), OnnxRuntime(), TorchRuntime()],
        description="Runtimes to try in order; the first that can run here is used. Each is a name "
        "(tensorrt, onnxruntime, torch) or a block with its settings, e.g. {type: onnxruntime, threads: 1}.",
    )
    device: str = Field("cpu", description="'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32",
        description="fp16 runs on CUDA only (torch, TensorRT); int8 is TensorRT-only and needs calibration.",
    )
    max_batch: int = Field(
        32,
        ge=1,
        description="Largest batch one inference call runs (larger batches are split into chunks); "
        "also the TensorRT optimisation profile's maximum.",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Runtime settings of the first shape (top-level ``threads``, ``engine_cache_dir`` ...) are
        refused with their new spelling, a block in ``preference``."""
        if not isinstance(data, Mapping):
            return data
        moved = {}
        for key, runtime in _MOVED_TO.items():
            if key in data:
                value = json.dumps(data[key], default=str)  # JSON scalars read back as YAML
                moved[key] = f"moved: write preference: [..., {{type: {runtime}, {key}: {value}}}, ...]"
        return refuse_moved_keys(data, moved, cls.__name__)

    @field_validator("preference", mode="before")
    @classmethod
    def _bare_names(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [_as_block(item) for item in value]
        return value

    @field_validator("preference")
    @classmethod
    def _non_empty_unique(cls, value: list[Runtime]) -> list[Runtime]:
        if not value:
            raise ValueError("preference must name at least one backend")
        names = [runtime.type for runtime in value]
        if len(set(names)) != len(names):
            raise ValueError(f"preference lists a backend twice: {names}")
        return value

    @property
    def names(self) -> list[str]:
        """The runtimes' names in order of preference (``["tensorrt", "onnxruntime", "torch"]``)."""
        return [runtime.type for runtime in self.preference]
