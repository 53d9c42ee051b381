"""The built-in replay graph: what ``amodal replay`` runs without ``--config``.

It is the same graph as ``configs/replay.yaml`` (a test keeps the two equal); the YAML is the
commented version to copy and tune. ``amodal replay VIDEO...`` replaces the ingest stage's streams
with the given files.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["default_replay_graph"]

_REPLAY: dict[str, Any] = {
    "mode": "embedded",
    "output_dir": "out",
    "links": {"policy": "block", "hwm": 16},
    "metrics": {"port": 0},
    "logging": {"level": "WARNING", "format": "kv"},
    "stages": [
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
        {"name": "events", "type": "sqlite_sink", "inputs": ["track"], "config": {"path": "events.db"}},
        {"name": "jsonl", "type": "jsonl_sink", "inputs": ["track"], "config": {"path": "events.jsonl"}},
        {"name": "video", "type": "video_sink", "inputs": ["track"], "config": {"directory": "."}},
    ],
}


def default_replay_graph() -> dict[str, Any]:
    """A fresh copy of the built-in replay graph (raw, before validation)."""
    return copy.deepcopy(_REPLAY)
