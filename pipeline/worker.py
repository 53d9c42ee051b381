"""One stage process (process mode): ``python -m pipeline.worker --stage NAME``.

The supervisor writes a JSON job on stdin (the resolved graph, the links with their endpoints, the
metrics port, the upstream stages that already finished) rather than on the command line or a file,
so camera credentials in the config never land in ``ps`` output or on disk. The process runs the
stage with :class:`pipeline.runner.StageRunner`, writes a one-line status file for the supervisor
and exits 0 (done), 2 (config error: restarting cannot help) or 1 (failure: restart me).

SIGTERM = graceful stop (a source stops reading, everything drains); a second SIGTERM aborts.
SIGINT is ignored: the supervisor owns Ctrl-C and tells stages what to do.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from pipeline.graph import load_graph
from pipeline.logs import setup_logging
from pipeline.metrics import MetricsServer, RuntimeMetrics
from pipeline.runner import RuntimeHandles, StageRunner
from pipeline.security import LinkGuard
from pipeline.stage import RunInfo
from pipeline.transport import Link

__all__ = ["main", "run_job"]

logger = logging.getLogger(__name__)


def run_job(name: str, job: dict[str, Any]) -> int:
    """Run stage ``name`` as described by ``job``; returns the process exit code."""
    stop, abort = threading.Event(), threading.Event()

    def on_term(signum: int, frame: Any) -> None:
        if stop.is_set():
            abort.set()
        stop.set()

    # before loading the graph (which imports the stages' libraries, seconds): a stop that arrives
    # while a restarted stage is still starting is then a stop, not a crash
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    graph = load_graph(data=job["graph"])
    setup_logging(graph.logging.level, graph.logging.format)
    links = [Link(**item) for item in job["links"]]
    metrics = RuntimeMetrics()
    server = None
    if job.get("metrics_port"):
        try:
            server = MetricsServer(metrics.registry, int(job["metrics_port"]), graph.metrics.host)
        except OSError as exc:
            logger.warning("stage=%s metrics port %s unavailable: %s", name, job["metrics_port"], exc)
    context = zmq.Context()
    guard: LinkGuard | None = None
    try:

        def refused(link: str, reason: str) -> None:
            metrics.rejected.labels(stage=name, reason="auth").inc()
            logger.warning("stage=%s link=%s refused a peer (%s)", name, link, reason)

        try:
            guard = LinkGuard.from_config(
                context, graph.security, links, name, job.get("secrets") or {}, refused
            )
        except (ValueError, OSError) as exc:  # a missing key or secret: restarting cannot help
            logger.error("stage=%s cannot secure its links: %s", name, exc)
            _write_status(job, {"ok": False, "error": f"stage {name!r}: {exc}", "config_error": True})
            return 2
        runner = StageRunner(
            graph,
            name,
            links,
            RuntimeHandles(context, metrics, stop, abort, guard=guard),
            upstream_done=job.get("upstream_done", ()),
            defer_close=True,
            run=RunInfo(
                run_id=str(job.get("run_id", "")),
                restarts=int(job.get("restarts", 0)),
                state_dir=job.get("state_dir"),
            ),
        )
        result = runner.run()
        status = {
            "ok": result.ok,
            "error": result.error,
            "config_error": result.config_error,
            "messages_in": result.messages_in,
            "messages_out": result.messages_out,
            "failed_streams": result.failed_streams,
        }
        _write_status(job, status)
        _wait_for_release(job.get("release_file"), abort, graph.shutdown.drain_timeout_s)
        runner.close_outlets()
        if result.lost:  # known once the outlets closed: the supervisor reads it again at exit
            _write_status(job, dict(status, lost=result.lost))
    finally:
        if guard is not None:
            guard.close()
        context.destroy(linger=0) if abort.is_set() else context.term()
        if server is not None:
            server.close()
    if result.ok:
        return 0
    return 2 if result.config_error else 1


def _write_status(job: dict[str, Any], status: dict[str, Any]) -> None:
    """The one-line status the supervisor reads when this process has done its work."""
    if job.get("status_file"):
        tmp = Path(job["status_file"] + ".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(job["status_file"])


def _wait_for_release(path: str | None, abort: threading.Event, timeout_s: float) -> None:
    """Keep the sending sockets open until the supervisor says every downstream stage has finished.

    Closing them earlier can lose the last queued messages (see StageRunner.close_outlets).
    """
    if not path:
        return
    deadline = time.monotonic() + timeout_s
    while not abort.is_set() and not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run one stage of an Amodal graph (started by the supervisor)."
    )
    parser.add_argument("--stage", required=True, help="stage name in the graph")
    args = parser.parse_args(argv)
    job = json.loads(sys.stdin.read())
    return run_job(args.stage, job)


if __name__ == "__main__":
    sys.exit(main())
