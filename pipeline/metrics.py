"""Prometheus metrics of one runtime, in a registry of its own (never the process-global one).

Several pipelines can run in one process (tests do), so every runtime builds a
``CollectorRegistry`` and passes it in; the HTTP endpoint serves only that registry.

Built-in series (label ``stage`` everywhere):
``amodal_messages_in_total{type}``, ``amodal_messages_out_total{type}``,
``amodal_process_seconds`` (histogram, one observation per process/process_batch call),
``amodal_batch_size``, ``amodal_queue_depth{link}``, ``amodal_dropped_total{link}``,
``amodal_lost_total{link}`` (lost across a crash, see pipeline.delivery),
``amodal_rejected_total{reason}`` (malformed / unknown / unaccepted messages),
``amodal_errors_total`` (process() raised), ``amodal_capture_to_sink_seconds`` (terminal stages),
``amodal_stage_restarts_total`` (process mode). Stages add their own via ``StageContext.count`` /
``observe`` (``amodal_<metric>_total`` counters; ``*_seconds`` histograms, other values gauges).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from pipeline.stage import MetricSink

__all__ = ["RuntimeMetrics", "MetricsServer"]

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class RuntimeMetrics(MetricSink):
    """All metric families of one runtime; thread-safe (prometheus_client metrics are)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages_in = Counter(
            "amodal_messages_in", "Messages handed to the stage", ["stage", "type"], registry=r
        )
        self.messages_out = Counter(
            "amodal_messages_out", "Messages the stage sent on", ["stage", "type"], registry=r
        )
        self.process_seconds = Histogram(
            "amodal_process_seconds",
            "Time in process()/process_batch()",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "amodal_batch_size",
            "Messages per process_batch call",
            ["stage"],
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.queue_depth = Gauge(
            "amodal_queue_depth", "Messages waiting in a link's inbox", ["stage", "link"], registry=r
        )
        self.dropped = Counter(
            "amodal_dropped", "Messages dropped by a drop_oldest link", ["stage", "link"], registry=r
        )
        self.lost = Counter(
            "amodal_lost",
            "Messages lost for good: a restarted receiver never got them (drop_oldest) or a sender gave up",
            ["stage", "link"],
            registry=r,
        )
        self.duplicates = Counter(
            "amodal_duplicates",
            "Messages a restarted sender produced again, recognised and skipped",
            ["stage"],
            registry=r,
        )
        self.rejected = Counter(
            "amodal_rejected", "Malformed/unknown/unaccepted messages", ["stage", "reason"], registry=r
        )
        self.errors = Counter("amodal_errors", "process() calls that raised", ["stage"], registry=r)
        self.capture_to_sink = Histogram(
            "amodal_capture_to_sink_seconds",
            "Wall time from capture to the end of a terminal stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.restarts = Counter(
            "amodal_stage_restarts", "Stage process restarts (process mode)", ["stage"], registry=r
        )
        self._custom: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- StageContext plumbing ---------------------------------------------------------------
    def _family(self, kind: str, metric: str, labels: dict[str, str]) -> Any:
        if not _NAME.match(metric):
            raise ValueError(f"metric name {metric!r} must be letters, digits and '_'")
        label_names = ("stage", *sorted(labels))
        key = f"{kind}:{metric}"
        with self._lock:
            family = self._custom.get(key)
            if family is None:
                name = f"amodal_{metric}"
                doc = f"Stage metric {metric}"
                if kind == "counter":
                    family = Counter(name, doc, label_names, registry=self.registry)
                elif kind == "histogram":
                    family = Histogram(
                        name, doc, label_names, buckets=_LATENCY_BUCKETS, registry=self.registry
                    )
                else:
                    family = Gauge(name, doc, label_names, registry=self.registry)
                self._custom[key] = family
        if tuple(family._labelnames) != label_names:
            raise ValueError(
                f"metric {metric!r} was first used with labels {family._labelnames}, now {label_names}"
            )
        return family

    def count(self, stage: str, metric: str, amount: float, labels: dict[str, str]) -> None:
        self._family("counter", metric, labels).labels(stage=stage, **labels).inc(amount)

    def observe(self, stage: str, metric: str, value: float, labels: dict[str, str]) -> None:
        kind = "histogram" if metric.endswith("_seconds") else "gauge"
        family = self._family(kind, metric, labels).labels(stage=stage, **labels)
        family.observe(value) if kind == "histogram" else family.set(value)

    # -- reading back (summaries, tests) ------------------------------------------------------
    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


class MetricsServer:
    """The /metrics HTTP endpoint of one registry; ``close`` stops it (tests start and stop many)."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = self._server.server_port
        logger.info("metrics endpoint listening host=%s port=%d", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
