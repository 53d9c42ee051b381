"""Sinks: where tracks end up (SQLite, JSONL, a ZeroMQ PUB socket, annotated video, crop snapshots).

Importing this package registers ``sqlite_sink``, ``jsonl_sink``, ``pub_sink``, ``video_sink`` and
``crop_sink``.
"""

from __future__ import annotations

from stages.sinks.crops import CropSink
from stages.sinks.jsonl import JsonlSink
from stages.sinks.pub import PubSink
from stages.sinks.sqlite import SqliteSink
from stages.sinks.video import VideoSink

__all__ = ["SqliteSink", "JsonlSink", "PubSink", "VideoSink", "CropSink"]
