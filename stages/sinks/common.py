"""Helpers shared by the sinks: output paths and the JSON shape of a frame's tracks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.messages import PersonCrops, TrackState
from pipeline.stage import StageContext

__all__ = ["output_path", "safe_name", "state_name", "tracks_record"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def output_path(context: StageContext, path: str | Path, directory: bool = False) -> Path:
    """Resolve a sink's output path and create the folder it needs.

    A relative path lives under the graph's ``output_dir`` (``amodal replay --out``); for a
    ``directory`` the folder itself is created, for a file its parent.
    """
    path = Path(path)
    path = path if path.is_absolute() else context.output_dir / path
    (path if directory else path.parent).mkdir(parents=True, exist_ok=True)
    return path


def safe_name(stream_id: str) -> str:
    """A stream id made safe for a file name (ids are already restricted; this guards the rest)."""
    return _UNSAFE.sub("_", stream_id).strip("._") or "stream"


def state_name(value: int) -> str:
    return TrackState(int(value)).name.lower()


def tracks_record(message: PersonCrops) -> dict[str, Any]:
    """The JSON-able event for one frame's tracks (JSONL line, PUB header)."""
    tracks = message.tracks
    return {
        "type": "tracks",
        "stream_id": message.stream_id,
        "seq": message.seq,
        "pts": message.pts,
        "capture_time": message.capture_time,
        "frame_size": list(message.frame_size),
        "tracks": [
            {
                "track_id": int(tracks.track_id[i]),
                "xyxy": [round(float(v), 2) for v in tracks.xyxy[i]],
                "confidence": round(float(tracks.confidence[i]), 4),
                "state": state_name(tracks.state[i]),
            }
            for i in range(len(tracks))
        ],
    }
