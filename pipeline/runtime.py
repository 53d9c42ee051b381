"""Embedded runtime: every stage of the graph as a thread of this process, linked over ZeroMQ.

One ``zmq.Context`` is shared by the stage threads (``inproc://`` needs that). All input sockets are
created and bound here, before any thread starts, so no stage can send to an endpoint that does not
exist yet, and tcp links with an automatic port (``:*``) learn their real port before the upstream
connects. Shutdown: ``request_stop()`` (SIGINT/SIGTERM in the CLI) stops the sources; EndOfStream and
StageDone then flow through and every stage drains, commits and exits. If draining takes longer than
``shutdown.drain_timeout_s``, or ``abort()`` is called (a second Ctrl-C), every loop exits at once.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

import zmq
from prometheus_client import CollectorRegistry

from pipeline.configfile import ConfigError
from pipeline.graph_settings import GraphConfig
from pipeline.links import resolve_links
from pipeline.metrics import MetricsServer, RuntimeMetrics
from pipeline.runner import Observer, RuntimeHandles, StageResult, StageRunner
from pipeline.security import LinkGuard, new_run_secrets
from pipeline.stage import RunInfo
from pipeline.transport import Link, bind_input

__all__ = ["EmbeddedRuntime", "RunReport"]

logger = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a run did: exit code (0 ok, 1 runtime failure, 2 config error) and one line why."""

    exit_code: int
    error: str | None
    seconds: float
    stages: dict[str, StageResult] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_results(cls, results: list[StageResult], seconds: float, restarts: dict[str, int] | None = None):
        failed = [r for r in results if not r.ok]
        code = 0
        error = None
        lost = sum(r.lost for r in results)
        if failed:
            first = next((r for r in failed if r.config_error), failed[0])
            code = 2 if first.config_error else 1
            error = first.error
        elif lost:
            code, error = 1, f"{lost} messages were lost on lossless links (amodal_lost_total says where)"
        return cls(code, error, seconds, {r.name: r for r in results}, dict(restarts or {}))

    @property
    def failed_streams(self) -> list[str]:
        """Streams a source could not read (or that ended with an error); their rows say why."""
        return sorted({s for r in self.stages.values() for s in r.failed_streams})


def check_subset(graph: GraphConfig, only: list[str] | None) -> set[str]:
    """Validate ``--only`` (the stages this host runs); every link crossing hosts needs a tcp endpoint."""
    names = [s.name for s in graph.stages]
    if not only:
        return set(names)
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ConfigError(f"--only: no stage named {unknown[0]!r}; have {names}")
    chosen = set(only)
    for spec in graph.stages:
        for item in spec.input_specs():
            if (spec.name in chosen) != (item.source in chosen) and item.endpoint is None:
                raise ConfigError(
                    f"--only: the link {item.source} -> {spec.name} crosses to another host; give that input "
                    "an explicit endpoint (inputs: [{source: ..., endpoint: tcp://host:port}], "
                    "transport.kind: tcp)"
                )
    return chosen


class EmbeddedRuntime:
    """Run a graph with every stage as a thread; one instance per run."""

    def __init__(
        self,
        graph: GraphConfig,
        registry: CollectorRegistry | None = None,
        observer: Observer | None = None,
        run_id: str | None = None,
        only: list[str] | None = None,
    ) -> None:
        self.graph = graph
        self.only = check_subset(graph, only)
        self.metrics = RuntimeMetrics(registry)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._observer = observer
        self.stop_event = threading.Event()
        self.abort_event = threading.Event()
        self.links: list[Link] = []
        self.metrics_port: int | None = None
        self._abort_reason: str | None = None

    def request_stop(self) -> None:
        """Graceful stop: sources stop, everything drains and commits."""
        if not self.stop_event.is_set():
            logger.info("stop requested; draining the graph")
        self.stop_event.set()

    def abort(self, reason: str = "aborted on request") -> None:
        """Hard stop: every stage loop exits now; queued messages are dropped."""
        self._abort_reason = self._abort_reason or reason
        self.stop_event.set()
        self.abort_event.set()

    def _refused(self, link: str, reason: str) -> None:
        """A peer failed a link's security handshake (pipeline.security): count it for the receiver."""
        downstream = link.split("->", 1)[-1]
        self.metrics.rejected.labels(stage=downstream, reason="auth").inc()
        logger.warning("link=%s refused a peer (%s)", link, reason)

    def _failed(self, stage: str, exc: BaseException) -> None:
        logger.error("stage=%s failed; stopping the sources so the graph drains", stage)
        self.request_stop()

    def run(self) -> RunReport:
        """Run until every stage has finished; returns the report (never raises for stage errors)."""
        started = time.monotonic()
        context = zmq.Context()
        server: MetricsServer | None = None
        clean = False
        cleanup: list[str] = []
        bound: dict[str, zmq.Socket] = {}
        guard: LinkGuard | None = None
        try:
            ipc_dir = None
            if self.graph.transport_kind == "ipc":
                ipc_dir = self.graph.transport.ipc_dir or tempfile.mkdtemp(prefix="amodal-")
                cleanup.append(ipc_dir)
            links = resolve_links(self.graph, self.run_id, ipc_dir)
            secrets = new_run_secrets(s.name for s in self.graph.stages) if ipc_dir else None
            guard = LinkGuard.from_config(
                context, self.graph.security, links, self.only, secrets, self._refused
            )
            resolved: list[Link] = []
            for link in links:
                if link.downstream not in self.only:
                    resolved.append(link)  # another host binds it; we may only connect to it
                    continue
                sock = bind_input(context, link, guard)
                endpoint = (
                    sock.getsockopt_string(zmq.LAST_ENDPOINT)
                    if link.endpoint.endswith(":*")
                    else link.endpoint
                )
                bound[f"{link.upstream}->{link.downstream}"] = sock
                resolved.append(
                    Link(link.upstream, link.downstream, endpoint, link.policy, link.hwm, link.accepts)
                )
            self.links = resolved
            if self.graph.metrics.port:
                server = MetricsServer(
                    self.metrics.registry, self.graph.metrics.port, self.graph.metrics.host
                )
                self.metrics_port = server.port
            handles = RuntimeHandles(
                context,
                self.metrics,
                self.stop_event,
                self.abort_event,
                guard=guard,
                bound=bound,
                observer=self._observer,
                on_failure=self._failed,
            )
            runners = [
                StageRunner(
                    self.graph,
                    spec.name,
                    resolved,
                    handles,
                    defer_close=True,
                    run=RunInfo(run_id=self.run_id),
                )
                for spec in self.graph.stages
                if spec.name in self.only
            ]
            threads = [threading.Thread(target=r.run, name=f"stage-{r.name}", daemon=True) for r in runners]
            for thread in threads:
                thread.start()
            clean = self._wait(threads)
            if clean:  # every reader has finished: now the senders may close without losing a message
                if any(link.downstream not in self.only and link.upstream in self.only for link in resolved):
                    # readers on other hosts cannot be asked; give them linger_s to take the tail
                    time.sleep(self.graph.shutdown.linger_s)
                for runner in runners:
                    runner.close_outlets()
            report = RunReport.from_results([r.result for r in runners], time.monotonic() - started)
            if report.exit_code == 0 and self._abort_reason is not None:
                report.exit_code, report.error = 1, self._abort_reason
            return report
        finally:
            if server is not None:
                server.close()
            for sock in bound.values():
                if not sock.closed:
                    sock.close(linger=0)
            if guard is not None:
                guard.close()
            if clean:
                context.term()
            else:
                context.destroy(linger=0)
            for folder in cleanup:
                if not self.graph.transport.ipc_dir:
                    shutil.rmtree(folder, ignore_errors=True)

    def _wait(self, threads: list[threading.Thread]) -> bool:
        """Join the stage threads, aborting after the drain timeout; True if all of them ended."""
        stop_seen: float | None = None
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.1)
            if self.stop_event.is_set() and stop_seen is None:
                stop_seen = time.monotonic()
            if stop_seen is not None and not self.abort_event.is_set():
                if time.monotonic() - stop_seen > self.graph.shutdown.drain_timeout_s:
                    timeout = self.graph.shutdown.drain_timeout_s
                    logger.error("graph did not drain in %.0fs; aborting", timeout)
                    self.abort(f"the graph did not drain within shutdown.drain_timeout_s={timeout:g}")
        for thread in threads:
            thread.join(timeout=5)
        return not any(t.is_alive() for t in threads)
