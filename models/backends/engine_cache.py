"""The on-disk TensorRT engine cache: keys, model-file hashing and verified reads/atomic writes.

Engines are specific to the TensorRT version, the GPU (name + compute capability), the exact ONNX
bytes, the precision and the optimisation profile. All of these go into the cache key, so an engine
built anywhere else, or for an older export, is never loaded: it is simply a different key, and the
metadata stored beside each engine is checked again on load. Needs no TensorRT to import or test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.backends.engine_profile import EngineProfile

__all__ = ["EngineCache", "engine_cache_key", "engine_key_parts", "file_sha256"]

logger = logging.getLogger(__name__)


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
