"""Process mode: one supervised process per stage, linked over ipc:// (or tcp://).

The supervisor starts ``python -m pipeline.worker --stage NAME`` for every stage (each in its own
session, so Ctrl-C reaches only the supervisor), hands it its job on stdin and watches it:

* exit 0: the stage finished (its inputs ended and it drained);
* exit 2: a config error (missing weights, bad option): restarting cannot help, the run stops with 2;
* anything else (a crash, a kill): the stage is restarted after an exponential backoff
  (``supervisor.backoff_initial_s`` doubling up to ``backoff_max_s``), at most
  ``supervisor.max_restarts`` times in a row (a stage that ran ``healthy_after_s`` before it crashed
  starts a new count); restarts are counted in ``amodal_stage_restarts_total`` and in the run report.
  A restarted stage is told which of its upstream stages already finished, so it
  does not wait for their end markers again. Its sockets rebind the same endpoints and the peers'
  ZeroMQ sockets reconnect by themselves; what the crashed process held is sent to it again by its
  upstream stages (pipeline.delivery), and its restart count, the run id and the run's state folder
  (a source's acknowledged progress) are in its job, so sinks continue their session and a file
  source resumes where the sinks' committed state says.

``request_stop()`` (SIGINT/SIGTERM) sends SIGTERM to every stage: sources stop reading, the others
drain until their inputs end (or go silent for ``shutdown.idle_drain_s``), sinks commit, all exit 0.
Stages still alive after ``shutdown.drain_timeout_s`` are killed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from pipeline.graph_settings import GraphConfig
from pipeline.links import resolve_links
from pipeline.metrics import MetricsServer, RuntimeMetrics
from pipeline.runner import StageResult
from pipeline.runtime import RunReport
from pipeline.security import ensure_private_dir, job_secrets, new_run_secrets
from pipeline.stage import SourceStage

__all__ = ["ProcessRuntime"]

logger = logging.getLogger(__name__)

_POLL_S = 0.1
_KILL_GRACE_S = 5.0


@dataclass
class _Child:
    name: str
    index: int
    process: subprocess.Popen | None = None
    restarts: int = 0  # over the whole run (its restarted processes number their tracks by it)
    crashes: int = 0  # in a row, without a healthy_after_s stretch between: what max_restarts limits
    start_at: float = 0.0
    started_at: float = 0.0
    done: bool = False
    result: StageResult | None = None
    finished_work: bool = False  # its process wrote a status and waits to be released


class ProcessRuntime:
    """Run a graph with one supervised process per stage."""

    def __init__(
        self, graph: GraphConfig, registry: CollectorRegistry | None = None, run_id: str | None = None
    ):
        self.graph = graph
        self.metrics = RuntimeMetrics(registry)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._stop_at: float | None = None
        self._term_sent = False
        self._killed = False
        self._fatal: str | None = None
        self._fatal_code = 1
        self.metrics_port: int | None = None
        self._children: list[_Child] = []

    def stage_pid(self, name: str) -> int | None:
        """The process id of a running stage (for operators' tools and the crash tests)."""
        for child in self._children:
            if child.name == name and child.process is not None and child.process.poll() is None:
                return child.process.pid
        return None

    def request_stop(self) -> None:
        if self._stop_at is None:
            logger.info("stop requested; stopping sources and draining the stage processes")
            self._stop_at = time.monotonic()

    def abort(self) -> None:
        self.request_stop()
        self._stop_at = time.monotonic() - self.graph.shutdown.drain_timeout_s

    # -- main loop ------------------------------------------------------------------------------
    def run(self) -> RunReport:
        started = time.monotonic()
        run_dir = self._run_dir = Path(tempfile.mkdtemp(prefix="amodal-run-"))
        server = None
        children = self._children = [_Child(spec.name, i) for i, spec in enumerate(self.graph.stages)]
        try:
            ipc_dir = self.graph.transport.ipc_dir or str(run_dir)  # mkdtemp: 0700 already
            if self.graph.transport.ipc_dir:
                ensure_private_dir(ipc_dir)  # only this user may reach the socket files
            links = resolve_links(self.graph, self.run_id, ipc_dir)
            self._links = links
            # one secret per stage for the whole run: a restarted stage gets the same one
            self._secrets = new_run_secrets(spec.name for spec in self.graph.stages)
            graph_json = self.graph.model_dump(mode="json")
            link_json = [vars(link) for link in links]
            if self.graph.metrics.port:
                server = MetricsServer(
                    self.metrics.registry, self.graph.metrics.port, self.graph.metrics.host
                )
                self.metrics_port = server.port
            base_job = {"graph": graph_json, "links": link_json}
            for child in children:
                self._start(child, base_job, run_dir, children)
            while not all(c.done and c.process is None for c in children):
                time.sleep(_POLL_S)
                self._reap(children)
                self._release(children)
                self._handle_stop(children)
                for child in children:
                    if not child.done and child.process is None and time.monotonic() >= child.start_at:
                        if self._stop_at is not None:
                            child.done = True
                            child.result = child.result or StageResult(
                                child.name, ok=False, error=f"stage {child.name!r} was down at shutdown"
                            )
                            continue
                        self._start(child, base_job, run_dir, children)
        finally:
            for child in children:
                if child.process is not None and child.process.poll() is None:
                    child.process.kill()
                    child.process.wait()
            if server is not None:
                server.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        results = [
            c.result or StageResult(c.name, ok=False, error=f"stage {c.name!r} never finished")
            for c in children
        ]
        report = RunReport.from_results(
            results, time.monotonic() - started, {c.name: c.restarts for c in children}
        )
        if self._fatal is not None and report.exit_code == 0:
            report.exit_code, report.error = self._fatal_code, self._fatal
        elif self._fatal is not None:
            report.error = self._fatal
            report.exit_code = self._fatal_code
        return report

    def _start(self, child: _Child, base_job: dict[str, Any], run_dir: Path, children: list[_Child]) -> None:
        spec = self.graph.stage(child.name)
        # An upstream whose process still runs (finished, waiting to be released) sends what this stage
        # had not acknowledged again, its StageDone included; only one that is gone cannot.
        finished = {
            c.name for c in children if c.done and c.result is not None and c.result.ok and c.process is None
        }
        upstream_done = [i.source for i in spec.input_specs() if i.source in finished]
        port = self.graph.metrics.port + 1 + child.index if self.graph.metrics.port else 0
        job = dict(
            base_job,
            upstream_done=upstream_done,
            metrics_port=port,
            run_id=self.run_id,
            restarts=child.restarts,
            secrets=job_secrets(child.name, self._links, self._secrets),
            state_dir=str(run_dir),
            status_file=str(run_dir / f"{child.name}.status.json"),
            release_file=str(run_dir / f"{child.name}.release"),
        )
        Path(job["status_file"]).unlink(missing_ok=True)
        Path(job["release_file"]).unlink(missing_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), env.get("PYTHONPATH")]))
        child.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.worker", "--stage", child.name],
            stdin=subprocess.PIPE,
            start_new_session=True,
            env=env,
        )
        child.finished_work = False
        child.started_at = time.monotonic()
        assert child.process.stdin is not None
        child.process.stdin.write(json.dumps(job).encode())
        child.process.stdin.close()
        logger.info(
            "stage=%s process started pid=%d restarts=%d", child.name, child.process.pid, child.restarts
        )

    def _reap(self, children: list[_Child]) -> None:
        for child in children:
            proc = child.process
            if proc is None:
                continue
            if proc.poll() is None:
                if not child.finished_work:
                    status = self._status(child)
                    if status is not None:
                        child.finished_work = True  # its work is over; the process waits to be released
                        if status.ok:
                            child.done, child.result = True, status
                continue
            code = proc.returncode
            child.process = None
            if child.done and child.result is not None and child.result.ok:
                final = self._status(child)  # rewritten after the release if a message was given up
                child.result.lost = final.lost if final is not None else child.result.lost
                continue  # it had finished its work; how it exited after release does not matter
            status = self._status(child)
            if status is not None and status.ok:  # it finished its work, then died before we saw it
                child.done, child.result = True, status
                continue
            if code == 0:
                child.done = True
                child.result = child.result or status or StageResult(child.name, ok=True)
                continue
            if code == 2:
                child.done = True
                child.result = status or StageResult(
                    child.name, ok=False, error=f"stage {child.name!r} config error", config_error=True
                )
                self._fatal, self._fatal_code = child.result.error, 2
                logger.error("stage=%s config error; stopping: %s", child.name, child.result.error)
                self.request_stop()
                continue
            if self._stop_at is not None and self._killed:
                child.done = True
                child.result = StageResult(
                    child.name, ok=False, error=f"stage {child.name!r} killed at shutdown"
                )
                continue
            if self._term_sent and code == -signal.SIGTERM:  # our stop reached it before its handler
                child.done, child.result = True, StageResult(child.name, ok=True)
                continue
            why = status.error if status and status.error else f"exit code {code}"
            if time.monotonic() - child.started_at >= self.graph.supervisor.healthy_after_s:
                child.crashes = 0  # it ran fine for a long time: this crash starts a new count
            if child.crashes >= self.graph.supervisor.max_restarts:
                child.done = True
                child.result = StageResult(
                    child.name,
                    ok=False,
                    error=f"stage {child.name!r} failed {child.crashes + 1} times; giving up (last: {why})",
                )
                self._fatal, self._fatal_code = child.result.error, 1
                logger.error("%s", child.result.error)
                self.request_stop()
                continue
            cfg = self.graph.supervisor
            backoff = min(cfg.backoff_max_s, cfg.backoff_initial_s * (2**child.crashes))
            child.crashes += 1
            child.restarts += 1
            child.start_at = time.monotonic() + backoff
            self.metrics.restarts.labels(stage=child.name).inc()
            logger.warning(
                "stage=%s exited (%s); restart %d/%d in %.1fs",
                child.name,
                why,
                child.crashes,
                cfg.max_restarts,
                backoff,
            )

    def _release(self, children: list[_Child]) -> None:
        """Let a finished stage close its sockets once every stage it feeds has finished too."""
        by_name = {c.name: c for c in children}
        for child in children:
            if not child.finished_work or child.process is None:
                continue
            release = self._run_dir / f"{child.name}.release"
            if release.exists():
                continue
            downstream = [by_name[d.name] for d in self.graph.downstream_of(child.name)]
            if not child.done or all(d.done for d in downstream) or self._killed:
                release.touch()  # a failed stage is released at once: it will be restarted or given up

    def _status(self, child: _Child) -> StageResult | None:
        """The status file the stage process wrote on its way out (None if it died before that)."""
        path = self._run_dir / f"{child.name}.status.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return StageResult(
            child.name,
            ok=bool(data.get("ok")),
            error=data.get("error"),
            config_error=bool(data.get("config_error")),
            messages_in=int(data.get("messages_in", 0)),
            messages_out=int(data.get("messages_out", 0)),
            failed_streams=[str(s) for s in data.get("failed_streams", [])],
            lost=int(data.get("lost", 0)),
        )

    def _handle_stop(self, children: list[_Child]) -> None:
        if self._stop_at is None:
            return
        if not self._term_sent:
            self._term_sent = True
            # Sources first: they stop reading; the others only learn that they may idle-drain.
            ordered = sorted(
                children, key=lambda c: not issubclass(self.graph.stage(c.name).stage_class, SourceStage)
            )
            for child in ordered:
                if child.process is not None and child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
        elapsed = time.monotonic() - self._stop_at
        if elapsed > self.graph.shutdown.drain_timeout_s + _KILL_GRACE_S and not self._killed:
            self._killed = True
            for child in children:
                if child.process is not None and child.process.poll() is None:
                    logger.error("stage=%s did not drain in time; killing it", child.name)
                    child.process.kill()
