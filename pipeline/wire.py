"""Wire format: a multipart message = one small JSON header + one raw buffer per array.

Header: ``{"v": SCHEMA_VERSION, "type": "frame", "f": {scalar fields}, "a": [[path, dtype, shape], ...]}``.
Nested blocks (``Frame.detections``, ``PersonCrops.grades``, ...) are flattened into dotted paths
(arrays ``grades.embedding``, scalars ``attributes.names``) and a presence flag ``has_<block>`` in
``f``. Which paths exist and their exact dtypes are read from the message definitions' field
metadata (``messages.array_field`` / ``block_field``), so a new block needs no table here.
Arrays are sent as their own buffers (``copy=False`` on send) and
decoded with ``np.frombuffer`` on the received frame's buffer, so a 640x360 image is never copied
by the transport in-process and only once by the kernel across processes. No pickle anywhere: a
header is plain JSON and a buffer is only ever interpreted with a dtype from an allow-list.

Anything that does not match exactly (unknown type, wrong version, frame count, dtype or byte
length) raises :class:`~pipeline.messages.MessageError`.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from typing import Any

import numpy as np

from pipeline.messages import (
    SCHEMA_VERSION,
    EndOfStream,
    Frame,
    MessageError,
    PersonCrops,
    StageDone,
    TrackEnd,
)

__all__ = ["encode", "decode", "type_name", "wire_names", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 64 * 1024
# Version 1 (no model blocks, no TrackEnd) is a subset of 2: an older sender's messages still decode.
_READABLE_VERSIONS = (1, SCHEMA_VERSION)

_TYPES: dict[str, type] = {
    "frame": Frame,
    "person_crops": PersonCrops,
    "end_of_stream": EndOfStream,
    "stage_done": StageDone,
    "track_end": TrackEnd,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}


def _layout(cls: type) -> tuple[dict[str, str], tuple[str, ...], dict[str, type]]:
    """(array path -> exact dtype, scalar paths, block name -> class) read from the dataclass fields'
    metadata (``messages.array_field`` / ``block_field``): the message definitions are the only table."""
    arrays: dict[str, str] = {}
    scalars: list[str] = []
    blocks: dict[str, type] = {}
    for f in fields(cls):
        if "array" in f.metadata:
            arrays[f.name] = f.metadata["array"][0]
        elif "block" in f.metadata:
            block = blocks[f.name] = f.metadata["block"]
            for sub in fields(block):
                if "array" in sub.metadata:
                    arrays[f"{f.name}.{sub.name}"] = sub.metadata["array"][0]
                else:
                    scalars.append(f"{f.name}.{sub.name}")
        else:
            scalars.append(f.name)
    return arrays, tuple(scalars), blocks


_LAYOUTS = {name: _layout(cls) for name, cls in _TYPES.items()}
# Top-level scalar fields with a default (e.g. EndOfStream.lost): they may be absent from a header.
_OPTIONAL: dict[str, frozenset[str]] = {
    name: frozenset(f.name for f in fields(cls) if f.default is not MISSING and not f.metadata)
    for name, cls in _TYPES.items()
}
# Exact dtype of every array path per message type: decode accepts nothing else.
_ARRAYS: dict[str, dict[str, str]] = {name: layout[0] for name, layout in _LAYOUTS.items()}


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
    array_paths, scalar_paths, blocks = _LAYOUTS[name]
    fields_out: dict[str, Any] = {}
    arrays: list[tuple[str, np.ndarray]] = []
    for head in blocks:
        fields_out[f"has_{head}"] = getattr(message, head) is not None
    for path in scalar_paths:
        value = _get(message, path)
        if value is _ABSENT:
            continue
        fields_out[path] = list(value) if isinstance(value, tuple) else value
    for path in array_paths:
        value = _get(message, path)
        if value is not _ABSENT:
            arrays.append((path, value))
    header = {
        "v": SCHEMA_VERSION,
        "type": name,
        "f": fields_out,
        "a": [[path, str(a.dtype), list(a.shape)] for path, a in arrays],
    }
    # memoryview of a C-contiguous array: zmq sends it without copying when copy=False.
    return [json.dumps(header, separators=(",", ":")).encode()] + [_raw(a) for _, a in arrays]


_ABSENT = object()


def _get(message: object, path: str) -> Any:
    """``message.path`` for "x" or "block.x"; _ABSENT when the block is None."""
    head, _, leaf = path.partition(".")
    value = getattr(message, head)
    if not leaf:
        return value
    return _ABSENT if value is None else getattr(value, leaf)


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
    if header.get("v") not in _READABLE_VERSIONS:
        raise MessageError(f"schema version {header.get('v')!r} is not supported (expected {SCHEMA_VERSION})")
    return header


def _shape(raw: Any, path: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise MessageError(f"array {path!r}: shape must be a list of non-negative integers, got {raw!r}")
    return tuple(raw)


def decode(parts: list[Any]) -> object:
    """Decode multipart parts (zmq.Frame or bytes) into a validated message, zero-copy for arrays.

    Anything a peer can send that does not decode raises MessageError, never another exception (a
    header nested 20,000 deep, a dimension of 2**70, a 5,000-digit number, a list as type name)."""
    try:
        return _decode(parts)
    except MessageError:
        raise
    except (RecursionError, OverflowError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise MessageError(f"undecodable message: {type(exc).__name__}: {str(exc)[:200]}") from None


def _decode(parts: list[Any]) -> object:
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
    array_paths, scalar_paths, blocks = _LAYOUTS[name]
    arrays: dict[str, np.ndarray] = {}
    for spec, part in zip(specs, parts[1:], strict=True):
        if not isinstance(spec, list) or len(spec) != 3:
            raise MessageError(f"{name}: array spec must be [path, dtype, shape], got {spec!r}")
        path, dtype, shape = spec
        if not isinstance(path, str) or path not in array_paths:
            raise MessageError(f"{name}: unexpected array {path!r}")
        if dtype != array_paths[path]:
            raise MessageError(f"{name}: array {path!r} must be {array_paths[path]}, got {dtype!r}")
        if path in arrays:
            raise MessageError(f"{name}: array {path!r} sent twice")
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
    nested: dict[str, dict[str, Any]] = {head: {} for head in blocks}
    for path in scalar_paths:
        head, _, leaf = path.partition(".")
        if leaf:
            if fields.get(f"has_{head}") and path in fields:
                nested[head][leaf] = fields[path]
            continue
        if path not in fields:
            if path in _OPTIONAL[name]:
                continue  # added later with a default: an older sender leaves it out
            raise MessageError(f"{name}: header is missing field {path!r}")
        kwargs[path] = fields[path]
    if name == "person_crops" and isinstance(kwargs["frame_size"], list):
        kwargs["frame_size"] = tuple(kwargs["frame_size"])
    try:
        for path, array in arrays.items():
            head, _, leaf = path.partition(".")
            if leaf:
                nested[head][leaf] = array
            else:
                kwargs[path] = array
        for head, block in blocks.items():
            if not fields.get(f"has_{head}"):
                if nested[head]:
                    raise MessageError(f"{name}: fields for {head!r} sent but has_{head} is false")
                continue
            kwargs[head] = block(**nested[head])
        return _TYPES[name](**kwargs)
    except MessageError:
        raise
    except (TypeError, ValueError) as exc:
        raise MessageError(f"{name}: {exc}") from None
