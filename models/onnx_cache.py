"""``onnx: auto``: export a predictor's network to ONNX once, into a cache, so ONNX Runtime (or
TensorRT) can run it without a separate export step.

The file is ``<cache>/onnx/<weights stem>-<key>.onnx``, the key a hash of the weights file's bytes
and the graph's input/output names, so new weights get a new export and a stale one is never used.
``<cache>`` is ``$AMODAL_CACHE``, else ``$XDG_CACHE_HOME/amodal``, else ``~/.cache/amodal``. The export
is written to a temporary name and renamed, so processes that start together never read half a file.
An export that fails is logged and the predictor runs on torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from models.weights_path import require_file

__all__ = ["cache_dir", "cached_onnx", "resolve_onnx", "AUTO"]

logger = logging.getLogger(__name__)

AUTO = "auto"
# torch.onnx.export keeps global state: two stages exporting at once (embedded mode starts them in
# threads together) fail with "in_onnx_export must be False", so exports take turns.
_EXPORT_LOCK = threading.Lock()


def cache_dir() -> Path:
    """Where exports are cached (read from the environment; nothing is created here)."""
    root = os.environ.get("AMODAL_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "amodal"


def cached_onnx(
    module: nn.Module,
    example: Sequence[torch.Tensor],
    weights: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> Path:
    """The cached export of ``module`` (made from ``weights``), exporting it first if needed."""
    from models.backends import export_onnx

    digest = hashlib.sha256(weights.read_bytes())
    digest.update(repr((list(input_names), list(output_names))).encode())
    path = cache_dir() / "onnx" / f"{weights.stem}-{digest.hexdigest()[:16]}.onnx"
    with _EXPORT_LOCK:
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.onnx")
        try:
            export_onnx(module, tuple(example), tmp, input_names=input_names, output_names=output_names)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    logger.info("exported %s to %s", weights.name, path)
    return path


def resolve_onnx(
    value: str | Path | None,
    key: str,
    weights: Path,
    module: nn.Module,
    example: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    preference: Sequence[str],
) -> Path | None:
    """The ONNX file a predictor's backend gets: None for ``None`` (torch only) or when no backend
    before torch needs one; the cached export for ``"auto"``; else the named file, which must exist
    (``FileNotFoundError`` naming ``key``) and take images of the example's size (ValueError)."""
    if value is None:
        return None
    if str(value) != AUTO:
        from models.predictor_io import check_onnx_image_size

        path = require_file(value, key)
        check_onnx_image_size(path, tuple(example[0].shape[-2:]), key, weights)
        return path
    order = list(preference)
    before_torch = order[: order.index("torch")] if "torch" in order else order
    if not any(name in ("onnxruntime", "tensorrt") for name in before_torch):
        return None
    try:
        return cached_onnx(module, example, weights, input_names, output_names)
    except Exception as exc:  # noqa: BLE001 - no ONNX export means torch runs it; never a failed start
        logger.warning("%s: ONNX export of %s failed (%s); torch runs it", key, weights.name, exc)
        return None
