"""Wire format: a multipart message = one small JSON header + one raw buffer per array.

Header: ``{"v": SCHEMA_VERSION, "type": "frame", "f": {scalar fields}, "a": [[path, dtype, shape], ...]}``.
Nested messages (``Frame.detections``) are flattened into dotted array paths (``detections.xyxy``)
and a presence flag in ``f``. Arrays are sent as their own buffers (``copy=False`` on send) and
decoded with ``np.frombuffer`` on the received frame's buffer, so a 640x360 image is never copied
by the transport in-process and only once by the kernel across processes. No pickle anywhere: a
header is plain JSON and a buffer is only ever interpreted with a dtype from an allow-list.

Anything that does not match exactly (unknown type, wrong version, frame count, dtype or byte
length) raises :class:`~pipeline.messages.MessageError`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from pipeline.messages import (
    SCHEMA_VERSION,
    Detections,
    EndOfStream,
    Frame,
    MessageError,
    PersonCrops,
    StageDone,
    Tracks,
)

__all__ = ["encode", "decode", "type_name", "wire_names", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 64 * 1024

_TYPES: dict[str, type] = {
    "frame": Frame,
    "person_crops": PersonCrops,
    "end_of_stream": EndOfStream,
    "stage_done": StageDone,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}

# Exact dtype of every array path per message type: decode accepts nothing else.
_ARRAYS: dict[str, dict[str, str]] = {
    "frame": {
        "image": "uint8",
        "detections.xyxy": "float32",
        "detections.confidence": "float32",
        "detections.class_id": "int32",
        "tracks.track_id": "int64",
        "tracks.xyxy": "float32",
        "tracks.confidence": "float32",
        "tracks.state": "uint8",
    },
    "person_crops": {
        "tracks.track_id": "int64",
        "tracks.xyxy": "float32",
        "tracks.confidence": "float32",
        "tracks.state": "uint8",
        "crops": "uint8",
    },
    "end_of_stream": {},
    "stage_done": {},
}
_SCALARS: dict[str, tuple[str, ...]] = {
    "frame": ("stream_id", "seq", "pts", "capture_time"),
    "person_crops": ("stream_id", "seq", "pts", "capture_time", "frame_size"),
    "end_of_stream": ("stream_id", "reason", "detail"),
    "stage_done": ("sender",),
}
_NESTED = {"detections": Detections, "tracks": Tracks}
_NESTED_IN = {
    name: tuple(dict.fromkeys(p.split(".")[0] for p in paths if "." in p)) for name, paths in _ARRAYS.items()
}


def type_name(message: object) -> str:
    """Wire name of a message type ("frame", ...); raises MessageError for anything else."""
    try:
        return _NAMES[type(message)]
    except KeyError:
        raise MessageError(f"cannot encode {type(message).__name__}: not a pipeline message") from None


def wire_names(types: tuple[type, ...]) -> tuple[str, ...]:
    """Wire names of message classes (for routing by type across processes)."""
    return tuple(_NAMES[t] for t in types if t in _NAMES)


def encode(message: object) -> list[Any]:
    """Encode a message into multipart parts: [header bytes, array buffer, ...] (no copies of arrays)."""
    name = type_name(message)
    fields: dict[str, Any] = {}
    arrays: list[tuple[str, np.ndarray]] = []
    for key in _SCALARS[name]:
        value = getattr(message, key)
        fields[key] = list(value) if isinstance(value, tuple) else value
    for path in _ARRAYS[name]:
        head, _, leaf = path.partition(".")
        if leaf:
            nested = getattr(message, head)
            fields[f"has_{head}"] = nested is not None
            if nested is None:
                continue
            arrays.append((path, getattr(nested, leaf)))
        else:
            arrays.append((path, getattr(message, head)))
    header = {
        "v": SCHEMA_VERSION,
        "type": name,
        "f": fields,
        "a": [[path, str(a.dtype), list(a.shape)] for path, a in arrays],
    }
    # memoryview of a C-contiguous array: zmq sends it without copying when copy=False.
    return [json.dumps(header, separators=(",", ":")).encode()] + [_raw(a) for _, a in arrays]


def _raw(array: np.ndarray) -> Any:
    """A flat byte view of a C-contiguous array (no copy); b"" for empty arrays."""
    return array.reshape(-1).view(np.uint8) if array.size else b""


def _buffer(part: Any) -> memoryview:
    buf = getattr(part, "buffer", None)  # zmq.Frame
    if buf is None:
        buf = part
    try:
        view = memoryview(buf)
        return view.cast("B") if view.nbytes else memoryview(b"")
    except TypeError as exc:
        raise MessageError(f"message part is not a byte buffer: {type(part).__name__}") from exc


def _header(part: Any) -> dict[str, Any]:
    raw = _buffer(part)
    if len(raw) > MAX_HEADER_BYTES:
        raise MessageError(f"header of {len(raw)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    try:
        header = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MessageError(f"header must be a JSON object, got {type(header).__name__}")
    if header.get("v") != SCHEMA_VERSION:
        raise MessageError(f"schema version {header.get('v')!r} is not supported (expected {SCHEMA_VERSION})")
    return header


def _shape(raw: Any, path: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise MessageError(f"array {path!r}: shape must be a list of non-negative integers, got {raw!r}")
    return tuple(raw)


def decode(parts: list[Any]) -> object:
    """Decode multipart parts (zmq.Frame or bytes) into a validated message, zero-copy for arrays."""
    if not parts:
        raise MessageError("empty message")
    header = _header(parts[0])
    name = header.get("type")
    if name not in _TYPES:
        raise MessageError(f"unknown message type {name!r}")
    fields = header.get("f")
    specs = header.get("a")
    if not isinstance(fields, dict) or not isinstance(specs, list):
        raise MessageError(f"{name}: header needs an object 'f' and a list 'a'")
    if len(parts) != 1 + len(specs):
        raise MessageError(f"{name}: header lists {len(specs)} arrays but {len(parts) - 1} buffers arrived")
    allowed = _ARRAYS[name]
    arrays: dict[str, np.ndarray] = {}
    for spec, part in zip(specs, parts[1:], strict=True):
        if not isinstance(spec, list) or len(spec) != 3:
            raise MessageError(f"{name}: array spec must be [path, dtype, shape], got {spec!r}")
        path, dtype, shape = spec
        if path not in allowed:
            raise MessageError(f"{name}: unexpected array {path!r}")
        if dtype != allowed[path]:
            raise MessageError(f"{name}: array {path!r} must be {allowed[path]}, got {dtype!r}")
        dims = _shape(shape, path)
        buf = _buffer(part)
        want = int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize
        if len(buf) != want:
            raise MessageError(
                f"{name}: array {path!r} {dtype}{list(dims)} needs {want} bytes, got {len(buf)}"
            )
        array = np.frombuffer(buf, dtype=dtype).reshape(dims)
        # Read-only: in-process the buffer may be the sender's own memory, shared by every receiver.
        array.flags.writeable = False
        arrays[path] = array
    kwargs: dict[str, Any] = {}
    for key in _SCALARS[name]:
        if key not in fields:
            raise MessageError(f"{name}: header is missing field {key!r}")
        kwargs[key] = fields[key]
    if name == "person_crops" and isinstance(kwargs["frame_size"], list):
        kwargs["frame_size"] = tuple(kwargs["frame_size"])
    try:
        for path, array in arrays.items():
            if "." not in path:
                kwargs[path] = array
        for head in _NESTED_IN[name]:
            prefix = head + "."
            members = {p[len(prefix) :]: a for p, a in arrays.items() if p.startswith(prefix)}
            if not fields.get(f"has_{head}"):
                if members:
                    raise MessageError(f"{name}: arrays for {head!r} sent but has_{head} is false")
                kwargs[head] = None
                continue
            kwargs[head] = _NESTED[head](**members)
        return _TYPES[name](**kwargs)
    except MessageError:
        raise
    except (TypeError, ValueError) as exc:
        raise MessageError(f"{name}: {exc}") from None
