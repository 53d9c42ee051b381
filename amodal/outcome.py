"""How an ``amodal`` command ends: its exit code and the one line on stderr that says why.

Exit codes: 0 done, 2 config error (bad key or value, missing file or weights), 3 a source could not
be read (the other streams were finished first), 1 runtime failure.
"""

from __future__ import annotations

import sys

from pipeline.runtime import RunReport
from pipeline.urls import mask_urls_in

__all__ = ["CommandFailed", "EXIT_SOURCE_ERROR", "finish", "failed_sources", "report_failure"]

#: exit code of a run that finished, but in which a source could not be read (each stream's row says why)
EXIT_SOURCE_ERROR = 3


class CommandFailed(Exception):
    """A command stops with exit ``code`` (2: config error, 1: runtime failure) and this message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def report_failure(code: int, message: str) -> int:
    """Print the one stderr line (credentials masked) and return ``code``."""
    print(f"amodal: {'config error' if code == 2 else 'error'}: {mask_urls_in(message)}", file=sys.stderr)
    return code


def finish(report: RunReport) -> int:
    """The run's exit code, with its line on stderr when it failed."""
    if report.exit_code:
        report_failure(report.exit_code, report.error or "failed")
    return report.exit_code


def failed_sources(failed: list[str]) -> int:
    """``EXIT_SOURCE_ERROR`` when a source could not read a stream (the others were finished first)."""
    if not failed:
        return 0
    print(
        f"amodal: error: {len(failed)} source(s) could not be read: {', '.join(failed)} "
        "(see the streams' ended_detail)",
        file=sys.stderr,
    )
    return EXIT_SOURCE_ERROR
