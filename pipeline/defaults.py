"""The built-in replay graphs: what ``amodal replay`` runs without ``--config``.

The full graph (ingest, detect, track, grade, deocclude, describe, identify, sinks) is the same as
``configs/replay.yaml``; ``--basic`` runs detect-and-track only, the same as
``configs/replay_basic.yaml`` (a test keeps each pair equal); the YAML files are the commented
versions to copy and tune. ``amodal replay VIDEO...`` replaces the ingest stage's streams
with the given files.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["default_replay_graph"]

_BASIC_STAGES: list[dict[str, Any]] = [
    {
        "name": "ingest",
        "type": "ingest",
        "config": {
            "streams": [{"id": "video", "source": "video.mp4"}],
            "realtime": False,
        },
    },
    {
        "name": "detect",
        "type": "detect",
        "inputs": ["ingest"],
        "config": {"weights": "yolo11n.pt"},
    },
    {"name": "track", "type": "track", "inputs": ["detect"], "config": {}},
]

_RUNTIME: dict[str, Any] = {
    "mode": "embedded",
    "output_dir": "out",
    "links": {"policy": "block", "hwm": 16},
    "metrics": {"port": 0},
    "logging": {"level": "WARNING", "format": "kv"},
}

_REPLAY: dict[str, Any] = {
    **_RUNTIME,
    "stages": [
        *_BASIC_STAGES,
        {"name": "grade", "type": "grade", "inputs": ["track"], "config": {}},
        {"name": "deocclude", "type": "deocclude", "inputs": ["grade"], "config": {}},
        {"name": "describe", "type": "describe", "inputs": ["deocclude"], "config": {}},
        {"name": "identify", "type": "identify", "inputs": ["describe"], "config": {"gallery": "gallery"}},
        {"name": "events", "type": "sqlite_sink", "inputs": ["identify"], "config": {"path": "events.db"}},
        {"name": "jsonl", "type": "jsonl_sink", "inputs": ["identify"], "config": {"path": "events.jsonl"}},
        {
            "name": "video",
            "type": "video_sink",
            "inputs": ["track", "identify"],
            "config": {"directory": "."},
        },
    ],
}

_REPLAY_BASIC: dict[str, Any] = {
    **_RUNTIME,
    "stages": [
        *_BASIC_STAGES,
        {"name": "events", "type": "sqlite_sink", "inputs": ["track"], "config": {"path": "events.db"}},
        {"name": "jsonl", "type": "jsonl_sink", "inputs": ["track"], "config": {"path": "events.jsonl"}},
        {"name": "video", "type": "video_sink", "inputs": ["track"], "config": {"directory": "."}},
    ],
}


def default_replay_graph(basic: bool = False) -> dict[str, Any]:
    """A fresh copy of the built-in replay graph (raw, before validation): the full occlusion-aware
    graph (= ``configs/replay.yaml``), or with ``basic`` detect-and-track only
    (= ``configs/replay_basic.yaml``, ``amodal replay --basic``)."""
    return copy.deepcopy(_REPLAY_BASIC if basic else _REPLAY)
