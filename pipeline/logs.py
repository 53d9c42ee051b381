"""Structured logging for the CLI and stage processes: key=value lines or JSON lines on stderr.

Every record goes through :func:`pipeline.urls.mask_urls_in`, so a camera URL with credentials that
slips into a message (an FFmpeg error string, say) is masked before it is written.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from pipeline.urls import mask_urls_in

__all__ = ["setup_logging", "KeyValueFormatter", "JsonFormatter"]


class KeyValueFormatter(logging.Formatter):
    """``ts=2024-05-01T10:00:00Z level=INFO logger=amodal.stage.detect msg="..."``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        msg = mask_urls_in(record.getMessage()).replace('"', "'")
        line = f'ts={ts} level={record.levelname} logger={record.name} pid={record.process} msg="{msg}"'
        if record.exc_info:
            line += "\n" + mask_urls_in(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": mask_urls_in(record.getMessage()),
        }
        if record.exc_info:
            payload["exc"] = mask_urls_in(self.formatException(record.exc_info))
        return json.dumps(payload)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (a caller may swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - logging's own attribute
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - StreamHandler.__init__ assigns it
        pass


def setup_logging(level: str = "INFO", fmt: str = "kv") -> None:
    """Configure the root logger for this process (the CLI and each stage process call it).

    Idempotent: it replaces only the handler it installed before, so calling ``main()`` twice in one
    process (tests, embedding) neither duplicates lines nor removes handlers that others installed.
    """
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _StderrHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
