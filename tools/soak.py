"""Soak test: run a graph against local RTSP servers for a long time, break things, measure drift.

    python tools/soak.py --duration 30m --set detect.weights=../shared/models/yolov8n_int8_openvino_model \\
        [--config configs/edge.yaml] [--cameras 2] [--video CLIP | testsrc] [--fps 15 --size 640x360] \\
        [--kill-stage detect --kill-every 5m] [--cut-camera-every 4m --cut-for 20s] \\
        [--sample-every 10s] [--warmup 2m] [--basic] [--out soak.json]

What it does:

* starts ``--cameras`` RTSP servers (``tests/rtsp_server.py`` run by Debian's ``/usr/bin/python3``,
  GStreamer) at native rate. ``--video FILE`` (default: the shared crosswalk clip when present) is
  re-encoded by the server; the server does not loop a file: a clip that ends closes the session,
  the ingest reconnects and the server starts the clip again, so every clip end is one counted
  reconnect (reported apart from the reconnects caused by camera cuts). ``--video testsrc`` serves
  GStreamer's moving-ball pattern instead (no people: the model stages after the tracker then have
  nothing to do);
* writes a copy of ``--config`` into a work folder with the camera URLs as the ingest streams, a
  private ``output_dir``, free metrics ports and free ``tcp://`` sink endpoints (``--basic`` keeps
  only ingest, detect, track and the sinks, rewired to the tracker), then runs
  ``python -m amodal run COPY --set ...`` (= ``amodal run``) with ``YOLO_OFFLINE=1``;
* starts the clock once every stage serves its metrics (the startup is reported apart), then
  every ``--sample-every`` reads the RSS and USS of every stage process (found by ``--stage NAME``
  on the command line of amodal's child processes) and scrapes every stage's Prometheus endpoint (stage
  *i* on ``metrics.port + 1 + i``, the supervisor on ``metrics.port``); counters are accumulated
  across stage restarts (a counter that restarts from 0 in a new process is added, not lost);
* on a schedule SIGKILLs ``--kill-stage`` (scraped just before, so its counts survive) and
  terminates one camera's server for ``--cut-for`` (round robin), then restarts it on its port;
* after ``--duration`` waits for a killed stage to be back up, sends SIGINT to amodal (clean drain),
  keeps scraping until it exits, stops the servers and writes the JSON report (``--out``; layout
  in docs/runtime.md, "Soak").

Ctrl-C (or SIGTERM) ends the soak early: amodal is drained and the report is still written
(``interrupted``); a second Ctrl-C kills everything. RTSP servers and stage processes are never left
behind; on Linux they are also told to stop when the soak itself is killed.
Exit code: 0 the soak ran and amodal exited 0; 1 amodal failed or exited before the end (the
message says which); 2 the soak could not be set up (no GStreamer RTSP server, bad config, ...).
The verdict block compares the run with issue 13's targets; the tool reports it, never asserts it.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from pipeline.configfile import ConfigError, load_yaml

__all__ = [
    "main",
    "parse_args",
    "parse_duration",
    "parse_metrics",
    "histogram_quantile",
    "linear_slope",
    "pooled_slope",
    "growth_percent",
    "CounterBook",
    "build_soak_config",
    "rss_summary",
    "latency_summary",
    "link_accounting",
    "attribute_reconnects",
    "parse_final_messages_in",
    "verdict",
    "run_soak",
]

logger = logging.getLogger("soak")

REPO_ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = REPO_ROOT / "tests" / "rtsp_server.py"
DEFAULT_VIDEO = REPO_ROOT.parent / "shared" / "media" / "crosswalk-occlusions.mp4"
BASIC_TYPES = frozenset({"ingest", "detect", "track"})
RSS_GROWTH_LIMIT_PCT = 5.0
P95_DRIFT_LIMIT = 0.25  # p95 drift over the run, as a share of the median per-minute p95
LATENCY_WINDOW_S = 60.0
_CONTROL_TYPE_NAMES = frozenset({"end_of_stream", "track_end", "stage_done"})  # not in a status' messages_in
_DRAIN_SCRAPE_S = 0.25
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


# ================================================================================ pure functions
def parse_duration(text: str | float) -> float:
    """``"30m"``, ``"90s"``, ``"1h30m"``, ``"2.5m"``, ``"500ms"`` or plain seconds -> seconds (> 0)."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        spec = str(text).strip().lower().replace(" ", "")
        pos, seconds = 0, 0.0
        while pos < len(spec):
            match = _DURATION_PART.match(spec, pos)
            if match is None:
                raise ValueError(f"bad duration {text!r}: use e.g. 30m, 90s, 1h30m, 500ms or seconds")
            seconds += float(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if not spec:
            raise ValueError("empty duration")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration {text!r} must be > 0")
    return seconds


@dataclass(frozen=True)
class Sample:
    """One Prometheus sample: metric name as exposed (``*_total``, ``*_bucket``), labels, value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str, default: str = "") -> str:
        return dict(self.labels).get(key, default)


def parse_metrics(text: str, prefix: str = "amodal_") -> list[Sample]:
    """Samples of a Prometheus text exposition whose names start with ``prefix`` (``_created`` skipped)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(prefix) or sample.name.endswith("_created"):
                continue
            out.append(Sample(sample.name, tuple(sorted(sample.labels.items())), float(sample.value)))
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus ``histogram_quantile``: ``buckets`` = (upper bound, cumulative count), +Inf included.

    Linear interpolation inside the bucket holding rank ``q * total`` (lower bound 0 for the first);
    a rank in the +Inf bucket returns the largest finite bound. None when there are no observations.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} must be in [0, 1]")
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank and count > lower_count:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        if not math.isinf(bound):
            lower_bound = bound
        lower_count = count
    return lower_bound


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys on xs; None with fewer than 2 distinct xs."""
    return pooled_slope([(xs, ys)])


def pooled_slope(segments: Iterable[tuple[Sequence[float], Sequence[float]]]) -> float | None:
    """One least-squares slope shared by several segments, each with its own intercept.

    Used for RSS across stage restarts: a restarted process starts low again, and fitting one line
    through all incarnations would read the restart as shrinkage (or, late in a run, as growth).
    """
    sxy = sxx = 0.0
    for xs, ys in segments:
        if len(xs) != len(ys):
            raise ValueError("xs and ys differ in length")
        if len(xs) < 2:
            continue
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxy += sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        sxx += sum((x - mx) ** 2 for x in xs)
    return sxy / sxx if sxx > 0 else None


def growth_percent(ts: Sequence[float], values: Sequence[float], window_s: float) -> dict[str, float] | None:
    """Mean of the last ``window_s`` vs the first ``window_s`` of a series, in percent of the first.

    None when the series does not span two non-overlapping windows.
    """
    if len(ts) < 2 or ts[-1] - ts[0] < 2 * window_s:
        return None
    first = [v for t, v in zip(ts, values, strict=True) if t <= ts[0] + window_s]
    last = [v for t, v in zip(ts, values, strict=True) if t >= ts[-1] - window_s]
    first_mean, last_mean = sum(first) / len(first), sum(last) / len(last)
    if first_mean <= 0:
        return None
    return {
        "first_window_mean": first_mean,
        "last_window_mean": last_mean,
        "growth_pct": 100.0 * (last_mean - first_mean) / first_mean,
    }


class CounterBook:
    """Counters and histogram buckets scraped from processes that may restart.

    ``update(source, incarnation, samples)``: a new ``incarnation`` (the stage's pid) or a value
    below the previous one means the counter started again from 0, so its new value is added
    whole; otherwise the increase is added. ``totals`` holds the accumulated values, ``gauges``
    the last value of every sample of each source's current process (queue depths, and counters
    as that process counts them); ``update`` returns what it added.
    """

    def __init__(self) -> None:
        self._incarnation: dict[str, Any] = {}
        self.totals: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.gauges: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}

    def update(self, source: str, incarnation: Any, samples: Iterable[Sample]) -> dict[tuple, float]:
        restarted = self._incarnation.get(source, incarnation) != incarnation
        self._incarnation[source] = incarnation
        if restarted:
            for key in [k for k in self.gauges if k[0] == source]:
                del self.gauges[key]
        deltas: dict[tuple, float] = {}
        for sample in samples:
            key = (source, sample.name, sample.labels)
            previous = self.gauges.get(key)
            delta = sample.value if previous is None or sample.value < previous else sample.value - previous
            self.gauges[key] = sample.value
            if delta:
                self.totals[key] += delta
                deltas[key] = delta
        return deltas

    def total(self, name: str, source: str | None = None, **labels: str) -> float:
        return sum(
            v
            for (src, n, lab), v in self.totals.items()
            if n == name
            and (source is None or src == source)
            and all(dict(lab).get(k) == want for k, want in labels.items())
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for (_src, n, lab), v in self.totals.items():
            if n == name:
                out[dict(lab).get(label, "")] += v
        return dict(out)


def _buckets_from(deltas: dict[tuple, float], name: str) -> dict[float, float]:
    """Sum of ``name`` bucket deltas per upper bound (all stages and labels together)."""
    out: dict[float, float] = defaultdict(float)
    for (_src, n, lab), v in deltas.items():
        if n == name:
            out[float(dict(lab)["le"])] += v
    return dict(out)


def _quantiles(buckets: dict[float, float]) -> dict[str, float | None]:
    pairs = sorted(buckets.items())
    count = pairs[-1][1] if pairs else 0.0
    return {
        "count": count,
        "p50_s": histogram_quantile(0.5, pairs) if count else None,
        "p95_s": histogram_quantile(0.95, pairs) if count else None,
    }


def _add_buckets(into: dict[float, float], add: dict[float, float]) -> None:
    for bound, value in add.items():
        into[bound] = into.get(bound, 0.0) + value


def latency_summary(
    windows: dict[int, dict[float, float]], warmup_s: float, window_s: float = LATENCY_WINDOW_S
) -> dict[str, Any]:
    """Per-window (minute) p50/p95 from cumulative-bucket deltas, plus how flat p95 is after warm-up.

    ``windows`` maps window index -> {upper bound: observations in that window (cumulative over
    bounds, as Prometheus exposes them)}. Flatness: least-squares slope of p95 over the post-warm-up
    windows (seconds per window) and ``p95_drift_s`` = slope x span; ``p95_flat`` when the drift is
    below ``P95_DRIFT_LIMIT`` of the median p95 (a window with under 10 observations is skipped).
    """
    rows = []
    for index in sorted(windows):
        row = {"minute": index, "start_s": index * window_s, **_quantiles(windows[index])}
        rows.append(row)
    usable = [  # windows whose middle is past the warm-up, with enough observations for a p95
        r
        for r in rows
        if r["p95_s"] is not None and r["count"] >= 10 and r["start_s"] + window_s / 2 >= warmup_s
    ]
    slope = linear_slope([r["minute"] for r in usable], [r["p95_s"] for r in usable])
    total: dict[float, float] = {}
    for index in windows:
        _add_buckets(total, windows[index])
    out: dict[str, Any] = {
        "window_s": window_s,
        "per_minute": rows,
        "overall": _quantiles(total),
        "post_warmup_minutes": len(usable),
        "p95_slope_s_per_minute": slope,
    }
    if slope is not None and len(usable) >= 2:
        p95s = sorted(r["p95_s"] for r in usable)
        median = p95s[len(p95s) // 2]
        drift = slope * (usable[-1]["minute"] - usable[0]["minute"])
        out.update(
            p95_median_s=median,
            p95_drift_s=drift,
            p95_flat=bool(drift <= P95_DRIFT_LIMIT * median),
        )
    else:
        out.update(p95_median_s=None, p95_drift_s=None, p95_flat=None)
    return out


def rss_summary(
    series: list[dict[str, Any]],
    warmup_s: float,
    window_s: float,
    restart_warmup_s: float,
    key: str = "rss_mb",
) -> dict[str, Any]:
    """Memory figures of one stage from samples ``{"t_s", key, "pid"}`` (t from the soak's start).

    Samples before ``warmup_s``, and within ``restart_warmup_s`` of a restarted process's first
    sample, are warm-up. ``slope_mb_per_hour``: one least-squares slope over the rest, each process
    incarnation with its own intercept. ``growth_pct``: last-window mean vs first post-warm-up window
    mean of the last incarnation (the only one that lives to the end).
    """
    segments: dict[int, list[tuple[float, float]]] = {}
    order: list[int] = []
    for point in series:
        if point.get(key) is None:
            continue
        pid = point["pid"]
        if pid not in segments:
            segments[pid] = []
            order.append(pid)
        segments[pid].append((point["t_s"], point[key]))
    kept: list[list[tuple[float, float]]] = []
    for number, pid in enumerate(order):
        points = segments[pid]
        start = points[0][0] if number else 0.0
        skip = warmup_s if number == 0 else start + restart_warmup_s
        kept.append([(t, v) for t, v in points if t >= max(skip, warmup_s)])
    slope = pooled_slope(([t for t, _ in seg], [v for _, v in seg]) for seg in kept)
    out: dict[str, Any] = {
        "incarnations": len(order),
        "slope_mb_per_hour": slope * 3600.0 if slope is not None else None,
        "max_mb": max((p[key] for p in series if p.get(key) is not None), default=None),
        "post_warmup_samples": sum(len(seg) for seg in kept),
    }
    last = kept[-1] if kept else []
    growth = growth_percent([t for t, _ in last], [v for _, v in last], window_s) if last else None
    if growth is None:
        out.update(
            growth_pct=None,
            first_window_mb=None,
            last_window_mb=None,
            note="too few post-warm-up samples in the last process for two windows",
        )
    else:
        out.update(
            growth_pct=growth["growth_pct"],
            first_window_mb=growth["first_window_mean"],
            last_window_mb=growth["last_window_mean"],
        )
    return out


def link_accounting(
    book: CounterBook,
    stages: Sequence[dict[str, Any]],
    final_in: dict[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Per link U->D of a stage D with one input: sent - received - dropped - lost - queued = unaccounted.

    sent = U's ``messages_out`` (every type but end-of-stream markers, and those D never took when
    U feeds several stages),
    received = D's ``messages_in`` + ``rejected``, dropped = drop_oldest evictions counted on either
    side, lost = ``amodal_lost_total{link}`` (counted loss across a restart), queued = D's last
    ``queue_depth``. ``final_in`` (stage -> data messages its last process took, from amodal's
    closing line) gives ``late``: what D took after its last scrape (a stage exits right after its
    last message). U's last sends can be missed the same way, so at the end of a run ``unaccounted``
    is only known to within ``late`` either way (``excess`` = what lies beyond that). A positive
    ``unaccounted`` is loss no counter explains (messages in a killed
    process's inbox or socket, or in flight at the last scrape); negative: more arrived than were
    counted as sent (a resend counted twice, or a sender's counts lost with its process).
    """
    fan_out: dict[str, int] = defaultdict(int)
    for spec in stages:
        for source in _input_names(spec):
            fan_out[source] += 1
    out = {}
    for spec in stages:
        inputs = _input_names(spec)
        if len(inputs) != 1:
            continue
        up, down = inputs[0], spec["name"]
        link = f"{up}->{down}"
        # End-of-stream markers are left out: the last one races the final scrape of a stage
        # that exits right after it (and none can be dropped or lost).
        sent_by_type = _by_type(book, "amodal_messages_out_total", up)
        in_by_type = _by_type(book, "amodal_messages_in_total", down)
        sent_by_type.pop("end_of_stream", None)
        in_by_type.pop("end_of_stream", None)
        if fan_out[up] > 1:
            sent_by_type = {t: v for t, v in sent_by_type.items() if in_by_type.get(t)}
        sent = sum(sent_by_type.values())
        late = 0.0
        if final_in and down in final_in:
            scraped = sum(
                v
                for (src, n, lab), v in book.gauges.items()
                if src == down
                and n == "amodal_messages_in_total"
                and dict(lab).get("type") not in _CONTROL_TYPE_NAMES
            )
            late = max(0.0, final_in[down] - scraped)
        received = sum(in_by_type.values()) + book.total("amodal_rejected_total", source=down)
        dropped_down = book.total("amodal_dropped_total", source=down, link=link)
        dropped_up = book.total("amodal_dropped_total", source=up, link=link)
        # A send dropped at U's side counts in U's messages_out only when another outlet took it.
        dropped = dropped_down + (dropped_up if fan_out[up] > 1 else 0.0)
        lost = book.total("amodal_lost_total", link=link)
        queued = sum(
            v
            for (src, n, lab), v in book.gauges.items()
            if src == down and n == "amodal_queue_depth" and dict(lab).get("link") == link
        )
        out[link] = {
            "sent": sent,
            "received": received,
            "late": late,
            "dropped": dropped_down + dropped_up,
            "lost": lost,
            "queued_at_last_scrape": queued,
            "unaccounted": sent - received - dropped - lost - queued,
            "excess": max(0.0, sent - received - dropped - lost - queued - late),
        }
    return out


def _by_type(book: CounterBook, name: str, source: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (src, n, lab), v in book.totals.items():
        if src == source and n == name:
            out[dict(lab).get("type", "")] += v
    return dict(out)


def _input_names(spec: dict[str, Any]) -> list[str]:
    names = []
    for item in spec.get("inputs") or []:
        names.append(item["source"] if isinstance(item, dict) else str(item))
    return names


def verdict(rss: dict[str, Any], latency: dict[str, Any], lost: float, unaccounted: float) -> dict[str, Any]:
    """The issue's targets, computed: RSS growth < 5 % after warm-up, p95 flat, nothing lost."""
    growth = {name: s.get("growth_pct") for name, s in rss.items()}
    measured = {n: g for n, g in growth.items() if g is not None}
    over = sorted(n for n, g in measured.items() if g >= RSS_GROWTH_LIMIT_PCT)
    rss_ok = (not over) if measured else None
    checks = {
        "rss_growth_below_5pct": rss_ok,
        "rss_growth_over_limit": over,
        "rss_not_measured": sorted(n for n, g in growth.items() if g is None),
        "p95_flat": latency.get("p95_flat"),
        "lost_zero": lost == 0,
        "unaccounted_zero": unaccounted <= 0,
    }
    decisive = [
        checks["rss_growth_below_5pct"],
        checks["p95_flat"],
        checks["lost_zero"],
        checks["unaccounted_zero"],
    ]
    checks["pass"] = None if any(v is None for v in decisive) else all(decisive)
    checks["targets"] = {
        "rss_growth_pct_below": RSS_GROWTH_LIMIT_PCT,
        "p95_drift_below_share_of_median": P95_DRIFT_LIMIT,
        "lost": 0,
    }
    return checks


def build_soak_config(
    raw: dict[str, Any],
    urls: Sequence[str],
    output_dir: str,
    metrics_port: int,
    basic: bool = False,
    free_tcp: Any = None,
) -> dict[str, Any]:
    """A copy of a graph config for a soak: camera URLs, output folder, metrics ports, free sinks.

    The first ``ingest`` stage gets one stream per URL (``cam1``, ``cam2``, ...); ``basic`` drops every
    stage but ingest, detect, track and the sinks (inputs of a dropped stage are rewired to its own
    input); ``tcp://`` endpoints in stage configs are moved to ports from ``free_tcp()``.
    """
    data = json.loads(json.dumps(raw))  # deep copy, plain types
    stages = data.get("stages") or []
    ingest = next((s for s in stages if s.get("type") == "ingest"), None)
    if ingest is None:
        raise ConfigError("the config has no stage of type 'ingest' to point at the RTSP servers")
    ingest.setdefault("config", {})["streams"] = [
        {"id": f"cam{i + 1}", "source": url} for i, url in enumerate(urls)
    ]
    if basic:
        keep = {
            s["name"] for s in stages if s.get("type") in BASIC_TYPES or str(s.get("type")).endswith("_sink")
        }
        inputs_of = {s["name"]: _input_names(s) for s in stages}

        def resolve(name: str, seen: frozenset[str] = frozenset()) -> list[str]:
            if name in keep or name in seen:
                return [name] if name in keep else []
            return [r for src in inputs_of.get(name, []) for r in resolve(src, seen | {name})]

        kept = []
        for spec in stages:
            if spec["name"] not in keep:
                continue
            if spec.get("inputs"):
                names: list[str] = []
                for source in _input_names(spec):
                    names += [n for n in resolve(source) if n not in names]
                spec["inputs"] = names
            kept.append(spec)
        data["stages"] = stages = kept
    for spec in stages:
        cfg = spec.get("config") or {}
        endpoint = cfg.get("endpoint")
        if free_tcp is not None and isinstance(endpoint, str) and endpoint.startswith("tcp://"):
            cfg["endpoint"] = f"tcp://127.0.0.1:{free_tcp()}"
    data["output_dir"] = output_dir
    data["metrics"] = {**(data.get("metrics") or {}), "port": metrics_port, "host": "127.0.0.1"}
    return data


# ================================================================================ processes
def _die_with_parent(sig: int) -> Any:
    """A ``preexec_fn`` that has the child get ``sig`` when the soak dies (Linux), so even a SIGKILLed
    soak leaves no RTSP server or pipeline behind; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG

    return preexec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_range(count: int, attempts: int = 200) -> int:
    """First port of ``count`` consecutive free ports on 127.0.0.1 (for metrics.port + 1 + i)."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20000, 60000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


def rtsp_unavailable() -> str | None:
    """Why Debian's python3 cannot run the GStreamer RTSP server (None when it can)."""
    probe = "import gi; gi.require_version('GstRtspServer', '1.0')"
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} cannot run: {exc}"
    if result.returncode != 0:
        return f"GStreamer RTSP server bindings missing ({result.stderr.strip().splitlines()[-1:]})"
    return None


class Camera:
    """One ``tests/rtsp_server.py`` process on a fixed port (restarted on the same port after a cut)."""

    def __init__(self, name: str, port: int, args: Sequence[str], log_path: Path) -> None:
        self.name, self.port, self.args, self.log_path = name, port, list(args), log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/test"

    def start(self, timeout_s: float = 20.0) -> None:
        cmd = [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port), *self.args]
        # Own session: a Ctrl-C at the terminal reaches the soak, which stops the servers last.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
                preexec_fn=_die_with_parent(signal.SIGTERM),
            )
        deadline = time.monotonic() + timeout_s
        lines: list[str] = []
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                self.proc.stdout.close()  # it prints nothing after READY (GStreamer's stderr: the log)
                return
            if not line:
                break
            lines.append(line)
        self.stop()
        try:
            lines.append(self.log_path.read_text(errors="replace"))
        except OSError:
            pass
        raise RuntimeError(
            f"RTSP server {self.name} on port {self.port} did not start: {''.join(lines)[-500:]}"
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()


def _scrape(port: int, timeout_s: float = 2.0) -> list[Sample] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
            return parse_metrics(resp.read().decode("utf-8", "replace"))
    except (OSError, urllib.error.URLError, ValueError):
        return None


class StageProcesses:
    """Stage processes of one amodal run, found by ``--stage NAME`` among its descendants.

    Every process seen is remembered, so cleanup can kill one the supervisor lost track of.
    """

    def __init__(self, amodal_pid: int) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(amodal_pid)
        self.seen: dict[int, Any] = {}

    def current(self) -> dict[str, Any]:
        """Stage name -> its live process: a direct child of amodal with ``--stage NAME``.

        Only direct children: a process a stage forks (a library's helper) has the same command
        line until it execs. Every descendant is remembered for the cleanup.
        """
        psutil = self._psutil
        found: dict[str, Any] = {}
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            return found
        for proc in children:
            self.seen.setdefault(proc.pid, proc)
            try:
                if proc.ppid() != self.root.pid or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmd = proc.cmdline()
            except psutil.Error:
                continue
            if "--stage" in cmd and cmd.index("--stage") + 1 < len(cmd):
                found[cmd[cmd.index("--stage") + 1]] = proc
        return found

    def memory(self, proc: Any) -> dict[str, Any] | None:
        """``{"rss_mb", "uss_mb", "pid", "helpers"}`` of a stage process plus the processes it forked
        (USS = pages only they hold); None when it is gone. The supervisor's own stage children are
        not its helpers and are left out."""
        psutil = self._psutil
        try:
            rss = proc.memory_info().rss
            helpers = [] if proc.pid == self.root.pid else proc.children(recursive=True)
        except psutil.Error:
            return None
        uss: float | None = 0.0
        for member in [proc, *helpers]:
            try:
                if member is not proc:
                    rss += member.memory_info().rss
                uss += member.memory_full_info().uss
            except (psutil.Error, AttributeError, TypeError):
                if member is proc:
                    uss = None
        return {
            "rss_mb": round(rss / 2**20, 3),
            "uss_mb": None if uss is None else round(uss / 2**20, 3),
            "pid": proc.pid,
            "helpers": len(helpers),
        }

    def kill_leftovers(self) -> list[int]:
        killed = []
        for proc in list(self.seen.values()):
            try:
                if proc.is_running() and proc.status() != self._psutil.STATUS_ZOMBIE:
                    proc.kill()
                    killed.append(proc.pid)
            except self._psutil.Error:
                pass
        return killed


# ================================================================================ the soak
@dataclass
class SoakOptions:
    """Everything a soak needs, in plain values (``options_from_args`` maps the CLI onto it)."""

    config: Path
    duration_s: float
    cameras: int = 2
    video: str | None = None  # a file, or None for GStreamer's test pattern
    fps: int = 15
    size: str = "640x360"
    kill_stage: str | None = None
    kill_every_s: float | None = None
    cut_every_s: float | None = None
    cut_for_s: float = 10.0
    sample_every_s: float = 10.0
    warmup_s: float = 120.0
    startup_timeout_s: float = 300.0
    sets: list[str] = field(default_factory=list)
    basic: bool = False
    workdir: Path | None = None
    keep_workdir: bool = False


@dataclass
class _Timeline:
    kills: list[dict[str, Any]] = field(default_factory=list)
    cuts: list[dict[str, Any]] = field(default_factory=list)


class SoakError(RuntimeError):
    """The soak could not be set up (exit 2)."""


class _Soak:
    """One soak run: servers, amodal, the sampling loop, the schedule; ``run()`` returns the report."""

    def __init__(self, opts: SoakOptions) -> None:
        self.opts = opts
        self.cameras: list[Camera] = []
        self.amodal: subprocess.Popen | None = None
        self.stages_seen: StageProcesses | None = None
        self.book = CounterBook()
        self.timeline = _Timeline()
        self.rss: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.latency_windows: dict[int, dict[float, float]] = defaultdict(dict)
        self.latency_by_stage: dict[str, dict[float, float]] = defaultdict(dict)
        self.reconnect_log: list[tuple[float, str, float]] = []  # (t_s, stream, increase)
        self.pids: dict[str, list[int]] = defaultdict(list)
        self.samples = 0
        self.t0 = 0.0
        self.interrupted = False
        self.exited_early_at: float | None = None  # on the clock of the phase it exited in
        self.exited_phase: str | None = None
        self.run_s = 0.0  # how long the soak phase really ran

    # -- setup -------------------------------------------------------------------------------
    def _workdir(self) -> Path:
        if self.opts.workdir is not None:
            self.opts.workdir.mkdir(parents=True, exist_ok=True)
            return self.opts.workdir
        return Path(tempfile.mkdtemp(prefix="amodal-soak-"))

    def _start_cameras(self, workdir: Path) -> None:
        args = ["--fps", str(self.opts.fps), "--size", self.opts.size]
        if self.opts.video:
            args += ["--file", str(Path(self.opts.video).resolve())]
        for i in range(self.opts.cameras):
            cam = Camera(f"cam{i + 1}", free_port(), args, workdir / f"cam{i + 1}.log")
            self.cameras.append(cam)
            cam.start()

    def _write_config(self, workdir: Path) -> tuple[Path, dict[str, Any]]:
        try:
            raw = load_yaml(self.opts.config)
        except ConfigError as exc:
            raise SoakError(str(exc)) from exc
        stage_count = len(raw.get("stages") or [])
        port = free_port_range(stage_count + 1)
        data = build_soak_config(
            raw,
            [c.url for c in self.cameras],
            str(workdir / "out"),
            port,
            basic=self.opts.basic,
            free_tcp=free_port,
        )
        names = [s["name"] for s in data["stages"]]
        if self.opts.kill_stage and self.opts.kill_stage not in names:
            raise SoakError(f"--kill-stage {self.opts.kill_stage!r} is not a stage of this graph: {names}")
        path = workdir / "soak_config.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path, data

    def _planned_kills(self) -> int:
        if not (self.opts.kill_stage and self.opts.kill_every_s):
            return 0
        return int(self.opts.duration_s // self.opts.kill_every_s)

    def _restart_budget(self, data: dict[str, Any]) -> list[str]:
        """Extra --set so planned kills cannot exhaust supervisor.max_restarts (which never resets)."""
        if any(s.startswith("supervisor.max_restarts=") for s in self.opts.sets):
            return []
        configured = int((data.get("supervisor") or {}).get("max_restarts", 5))
        planned = self._planned_kills()
        if planned < configured:
            return []
        logger.warning(
            "%d planned kills would exhaust supervisor.max_restarts=%d; raising it to %d",
            planned,
            configured,
            planned + 3,
        )
        return [f"supervisor.max_restarts={planned + 3}"]

    # -- run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        opts = self.opts
        workdir = self._workdir()
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        report: dict[str, Any] = {}
        ok = False
        try:
            self._start_cameras(workdir)
            config_path, data = self._write_config(workdir)
            names = [s["name"] for s in data["stages"]]
            extra_sets = self._restart_budget(data)
            port = data["metrics"]["port"]
            cmd = [sys.executable, "-m", "amodal", "run", str(config_path)]
            for item in [*opts.sets, *extra_sets]:
                cmd += ["--set", item]
            env = dict(os.environ, YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false", YOLO_VERBOSE="false")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
            logger.info("soak: %s for %.0f s (work folder %s)", " ".join(cmd), opts.duration_s, workdir)
            with open(workdir / "amodal.stdout", "wb") as out, open(workdir / "amodal.log", "wb") as err:
                # Own session: its process group is ours to signal; the stage processes have their own.
                self.amodal = subprocess.Popen(
                    cmd,
                    stdout=out,
                    stderr=err,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(signal.SIGINT),
                )
            self.t0 = time.monotonic()
            self.stages_seen = StageProcesses(self.amodal.pid)
            phases = {"startup_s": self._wait_until_up(names, port, opts.startup_timeout_s, "startup")}
            if self.exited_early_at is None and not self.interrupted:
                self.t0 = time.monotonic()  # the soak's clock starts once every stage is up
                self._loop(names, port)
            if self.exited_early_at is None and not self.interrupted:
                # A stop that lands while a killed stage is still starting is a different test (and
                # today a failed run): let a restart finish first.
                phases["settle_s"] = self._wait_until_up(names, port, 120.0, "settle")
            phases["shutdown_s"] = self._shutdown(names, port, data)
            exit_code = self.amodal.returncode
            report = self._report(
                started_at, config_path, data, names, extra_sets, cmd, workdir, exit_code, phases
            )
            ok = True
            return report
        finally:
            self._cleanup()
            if (
                ok
                and self.opts.workdir is None
                and not self.opts.keep_workdir
                and (report.get("amodal", {}).get("exit_code") == 0)
            ):
                shutil.rmtree(workdir, ignore_errors=True)
                report["config"]["workdir"] = None
            else:
                logger.info("soak: work folder kept: %s", workdir)

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def _wait_until_up(self, names: list[str], port: int, timeout_s: float, phase: str) -> float:
        """Wait until the supervisor and every stage answer on their metrics ports; returns the wait."""
        started = time.monotonic()
        try:
            while time.monotonic() - started < timeout_s:
                if self.amodal.poll() is not None:
                    self.exited_early_at, self.exited_phase = self._now(), phase
                    logger.error("soak: amodal exited (code %s) during %s", self.amodal.returncode, phase)
                    break
                procs = self.stages_seen.current()
                up = _scrape(port) is not None
                for index, name in enumerate(names):
                    proc = procs.get(name)
                    if proc is None:
                        up = False
                        continue
                    up = self._scrape_stage(index, name, port, proc.pid, phase) and up
                if up:
                    break
                time.sleep(0.5)
            else:
                logger.warning("soak: not every stage was up after %.0f s (%s)", timeout_s, phase)
        except KeyboardInterrupt:
            self.interrupted = True
        waited = time.monotonic() - started
        logger.info("soak: %s took %.1f s", phase, waited)
        return round(waited, 2)

    def _loop(self, names: list[str], port: int) -> None:
        try:
            self._schedule(names, port)
        finally:
            self.run_s = round(self._now(), 3)

    def _schedule(self, names: list[str], port: int) -> None:
        opts = self.opts
        next_sample = 0.0
        next_kill = opts.kill_every_s if opts.kill_stage and opts.kill_every_s else math.inf
        next_cut = opts.cut_every_s if opts.cut_every_s else math.inf
        cut_end, cut_camera, cut_number = math.inf, None, 0
        try:
            while True:
                now = self._now()
                if self.amodal.poll() is not None:
                    self.exited_early_at, self.exited_phase = now, "run"
                    logger.error("soak: amodal exited early (code %s) at %.1f s", self.amodal.returncode, now)
                    return
                if now >= opts.duration_s:
                    return
                if now >= next_sample:
                    self._sample(names, port, "run")
                    next_sample += opts.sample_every_s
                if now >= next_kill:
                    # A stage that is down (restarting) or not started yet is tried again in 1 s.
                    next_kill = self._now() + (opts.kill_every_s if self._kill(names, port) else 1.0)
                if cut_camera is None and now >= next_cut:
                    cut_camera = self.cameras[cut_number % len(self.cameras)]
                    cut_number += 1
                    cut_camera.stop()
                    self.timeline.cuts.append(
                        {
                            "camera": cut_camera.name,
                            "port": cut_camera.port,
                            "down_at_s": round(self._now(), 3),
                        }
                    )
                    logger.info("soak: camera %s cut at %.1f s", cut_camera.name, self._now())
                    cut_end = self._now() + opts.cut_for_s
                    next_cut = now + opts.cut_every_s
                if cut_camera is not None and self._now() >= cut_end:
                    cut_camera.start()
                    self.timeline.cuts[-1]["up_at_s"] = round(self._now(), 3)
                    logger.info("soak: camera %s back at %.1f s", cut_camera.name, self._now())
                    cut_camera, cut_end = None, math.inf
                wake = min(next_sample, next_kill, next_cut, cut_end, opts.duration_s)
                time.sleep(max(0.0, min(0.2, wake - self._now())))
        except KeyboardInterrupt:
            self.interrupted = True
            logger.warning("soak: interrupted at %.1f s; draining amodal (Ctrl-C again to kill)", self._now())
        finally:
            if cut_camera is not None:  # bring a cut camera back so the drain sees a normal graph
                try:
                    cut_camera.start()
                    self.timeline.cuts[-1]["up_at_s"] = round(self._now(), 3)
                except RuntimeError as exc:
                    logger.warning("soak: %s", exc)

    def _kill(self, names: list[str], port: int) -> bool:
        """SIGKILL the stage (scraped first, so its counts up to now are kept); False if it is down."""
        stage = self.opts.kill_stage
        proc = self.stages_seen.current().get(stage)
        if proc is None or not self._scrape_stage(names.index(stage), stage, port, proc.pid, "run"):
            return False  # down (restarting) or not serving yet: tried again later
        try:
            proc.kill()
        except Exception as exc:  # noqa: BLE001 - psutil.NoSuchProcess: it died on its own just now
            logger.warning("soak: could not kill %s: %s", stage, exc)
            return False
        self.timeline.kills.append({"stage": stage, "pid": proc.pid, "at_s": round(self._now(), 3)})
        logger.info("soak: killed stage %s (pid %d) at %.1f s", stage, proc.pid, self._now())
        return True

    def _sample(self, names: list[str], port: int, phase: str) -> None:
        t = self._now()
        procs = self.stages_seen.current()
        for index, name in enumerate(names):
            proc = procs.get(name)
            if proc is None:
                continue
            if not self.pids[name] or self.pids[name][-1] != proc.pid:
                self.pids[name].append(proc.pid)
            if phase == "run":
                mem = self.stages_seen.memory(proc)
                if mem is not None:
                    self.rss[name].append({"t_s": round(t, 3), **mem})
            self._scrape_stage(index, name, port, proc.pid, phase)
        if phase == "run":
            mem = self.stages_seen.memory(self.stages_seen.root)
            if mem is not None:
                self.rss["supervisor"].append({"t_s": round(t, 3), **mem})
        supervisor = _scrape(port)
        if supervisor is not None:
            self.book.update("supervisor", self.amodal.pid, supervisor)
        self.samples += 1

    def _scrape_stage(self, index: int, name: str, port: int, pid: int, phase: str) -> bool:
        """Scrape one stage into the counter book; False when its endpoint does not answer."""
        samples = _scrape(port + 1 + index)
        if samples is None:
            return False
        deltas = self.book.update(name, pid, samples)
        t = self._now() if phase != "startup" else -math.inf  # the soak clock starts after startup
        for (_src, metric, labels), value in deltas.items():
            if metric == "amodal_reconnects_total":
                self.reconnect_log.append((t, dict(labels).get("stream", ""), value))
        buckets = _buckets_from(deltas, "amodal_capture_to_sink_seconds_bucket")
        if buckets and phase == "run":
            _add_buckets(self.latency_windows[int(t // LATENCY_WINDOW_S)], buckets)
            _add_buckets(self.latency_by_stage[name], buckets)
        return True

    def _shutdown(self, names: list[str], port: int, data: dict[str, Any]) -> float:
        """SIGINT amodal (clean drain) and keep scraping until it exits; returns the seconds it took."""
        started = time.monotonic()
        if self.amodal.poll() is None:
            logger.info("soak: stopping amodal (SIGINT, clean drain)")
            self.amodal.send_signal(signal.SIGINT)
        drain = float((data.get("shutdown") or {}).get("drain_timeout_s", 60))
        deadline = started + drain + 30.0
        while self.amodal.poll() is None and time.monotonic() < deadline:
            self._sample(names, port, "drain")
            time.sleep(_DRAIN_SCRAPE_S)
        if self.amodal.poll() is None:
            logger.error("soak: amodal did not drain within %.0f s; aborting it", drain + 30)
            self.amodal.send_signal(signal.SIGINT)  # second Ctrl-C = abort
            try:
                self.amodal.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.amodal.pid, signal.SIGKILL)
                self.amodal.wait(5)
        return time.monotonic() - started

    def _cleanup(self) -> None:
        if self.amodal is not None and self.amodal.poll() is None:
            try:
                self.amodal.send_signal(signal.SIGINT)
                self.amodal.wait(10)
            except subprocess.TimeoutExpired:
                pass
            except KeyboardInterrupt:
                pass
            if self.amodal.poll() is None:
                try:
                    os.killpg(self.amodal.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.amodal.wait(5)
        if self.stages_seen is not None:
            killed = self.stages_seen.kill_leftovers()
            if killed:
                logger.warning("soak: killed stage processes left behind: %s", killed)
        for cam in self.cameras:
            cam.stop()

    # -- report ------------------------------------------------------------------------------
    def _report(
        self,
        started_at: str,
        config_path: Path,
        data: dict[str, Any],
        names: list[str],
        extra_sets: list[str],
        cmd: list[str],
        workdir: Path,
        exit_code: int | None,
        phases: dict[str, float],
    ) -> dict[str, Any]:
        opts = self.opts
        book = self.book
        run_s = self.run_s
        window_s = max(3 * opts.sample_every_s, min(LATENCY_WINDOW_S, (run_s - opts.warmup_s) / 4))
        restart_warmup = min(opts.warmup_s, 30.0)
        rss = {
            name: {
                **rss_summary(series, opts.warmup_s, window_s, restart_warmup),
                "uss": rss_summary(series, opts.warmup_s, window_s, restart_warmup, key="uss_mb"),
                "series": series,
            }
            for name, series in self.rss.items()
        }
        latency = latency_summary(dict(self.latency_windows), opts.warmup_s)
        latency["by_stage"] = {name: _quantiles(b) for name, b in self.latency_by_stage.items()}
        summary_line = self._summary_line(workdir)
        links = link_accounting(book, data["stages"], parse_final_messages_in(summary_line))
        unaccounted = sum(link["excess"] for link in links.values())
        lost_present = any(n == "amodal_lost_total" for (_s, n, _l) in book.gauges)
        lost = book.total("amodal_lost_total")
        reconnects = self._reconnects()
        restarts = {n: book.total("amodal_stage_restarts_total", source="supervisor", stage=n) for n in names}
        return {
            "tool": "tools/soak.py",
            "started_at": started_at,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "interrupted": self.interrupted,
            "config": {
                "source": str(opts.config),
                "written": str(config_path),
                "workdir": str(workdir),
                "stages": names,
                "basic": opts.basic,
                "cameras": opts.cameras,
                "camera_ports": [cam.port for cam in self.cameras],
                "video": opts.video or "testsrc",
                "fps": opts.fps if not opts.video else "native (the file's)",
                "size": opts.size,
                "duration_s": opts.duration_s,
                "ran_s": self.run_s,
                "warmup_s": opts.warmup_s,
                "sample_every_s": opts.sample_every_s,
                "rss_window_s": window_s,
                "kill": {"stage": opts.kill_stage, "every_s": opts.kill_every_s},
                "cut": {"every_s": opts.cut_every_s, "for_s": opts.cut_for_s},
                "sets": opts.sets,
                "added_sets": extra_sets,
                "metrics_port": data["metrics"]["port"],
                "command": cmd,
                "links": {
                    "policy": (data.get("links") or {}).get("policy"),
                    "hwm": (data.get("links") or {}).get("hwm"),
                },
            },
            "amodal": {
                "exit_code": exit_code,
                "exited_early_at_s": self.exited_early_at,
                "exited_during": self.exited_phase,
                **{k: round(v, 2) for k, v in phases.items()},
                "summary_line": summary_line,
                "log": _log_summary(workdir / "amodal.log"),
            },
            "events": {"kills": self.timeline.kills, "cuts": self.timeline.cuts},
            "samples": self.samples,
            "rss": rss,
            "latency": latency,
            "counters": {
                "reconnects": reconnects,
                "restarts": {"total": sum(restarts.values()), "by_stage": restarts},
                "stage_pids": dict(self.pids),
                "dropped": {
                    "total": book.total("amodal_dropped_total"),
                    "by_link": book.by_label("amodal_dropped_total", "link"),
                },
                "rejected": {
                    "total": book.total("amodal_rejected_total"),
                    "by_reason": book.by_label("amodal_rejected_total", "reason"),
                },
                "lost": {
                    "total": lost,
                    "metric_present": lost_present,
                    "by_link": book.by_label("amodal_lost_total", "link"),
                },
                "duplicates": {
                    "total": book.total("amodal_duplicates_total"),
                    "by_stage": book.by_label("amodal_duplicates_total", "stage"),
                },
                "errors": {
                    "total": book.total("amodal_errors_total"),
                    "by_stage": book.by_label("amodal_errors_total", "stage"),
                },
                "ingest": {
                    key: book.by_label(f"amodal_{key}_total", "stream")
                    for key in (
                        "frames_decoded",
                        "frames_dropped",
                        "disconnects",
                        "stalls",
                        "connect_failures",
                    )
                },
            },
            "links": links,
            "verdict": verdict({k: v for k, v in rss.items()}, latency, lost, unaccounted),
        }

    def _reconnects(self) -> dict[str, Any]:
        out = attribute_reconnects(self.reconnect_log, self.timeline.cuts)
        out["total"] = self.book.total("amodal_reconnects_total")
        if self.opts.video:
            out["clip_s"] = _clip_seconds(self.opts.video)
            out["note"] = "every end of the clip is one 'other' reconnect: the server does not loop a file"
        return out

    @staticmethod
    def _summary_line(workdir: Path) -> str | None:
        try:
            lines = (workdir / "amodal.stdout").read_text(errors="replace").splitlines()
        except OSError:
            return None
        done = [line for line in lines if line.startswith("done in ")]
        return done[-1] if done else None


def attribute_reconnects(
    log: Sequence[tuple[float, str, float]], cuts: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Split reconnects into those a camera cut caused and the rest (clip ends, network trouble).

    ``log``: (scrape time s, stream, reconnects seen since the previous scrape); ``cuts``: the
    timeline's cuts (``camera``, ``down_at_s``). The first reconnect of a camera seen after it went
    down is the cut's; one cut causes one reconnect however long it lasts.
    """
    remaining = [float(value) for _t, _s, value in log]
    caused = 0.0
    missing = []
    for cut in cuts:
        for index, (t, stream, _value) in enumerate(log):
            if stream == cut["camera"] and t >= cut["down_at_s"] and remaining[index] >= 1:
                remaining[index] -= 1
                caused += 1
                break
        else:
            missing.append(cut["camera"])
    by_stream: dict[str, float] = defaultdict(float)
    for _t, stream, value in log:
        by_stream[stream] += value
    return {
        "by_stream": dict(by_stream),
        "after_cuts": caused,
        "other": sum(remaining),
        "cuts_without_reconnect": missing,
    }


def parse_final_messages_in(line: str | None) -> dict[str, float] | None:
    """Data messages per stage from amodal's closing line ``done in ...; messages in per stage: {...}``."""
    match = re.search(r"messages in per stage: (\{[^}]*\})", line or "")
    if match is None:
        return None
    try:
        value = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return None
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else None


def _clip_seconds(path: str) -> float | None:
    try:
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            if stream.frames and stream.average_rate:
                return round(stream.frames / float(stream.average_rate), 2)
            return round(container.duration / 1e6, 2) if container.duration else None
    except Exception:  # noqa: BLE001 - only a note in the report
        return None


def _log_summary(path: Path, keep: int = 10) -> dict[str, Any]:
    """Warning / error counts of amodal's log (JSON or key=value lines) and the first distinct errors."""
    counts: dict[str, int] = defaultdict(int)
    errors: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"counts": {}, "errors": []}
    for line in lines:
        level, msg = None, line
        if line.startswith("{"):
            try:
                record = json.loads(line)
                text = record.get("msg", record.get("message"))
                level, msg = record.get("level"), f"{record.get('logger')}: {text}"
            except ValueError:
                pass
        if level is None:
            match = re.search(r"\blevel=(\w+)", line)
            level = match.group(1) if match else None
        if level in ("WARNING", "ERROR", "CRITICAL"):
            counts[level] += 1
            if level != "WARNING" and msg not in errors and len(errors) < keep:
                errors.append(msg[:300])
    return {"counts": dict(counts), "errors": errors}


def run_soak(opts: SoakOptions) -> dict[str, Any]:
    """Run one soak and return its report (raises SoakError when it cannot be set up)."""
    reason = rtsp_unavailable()
    if reason:
        raise SoakError(f"{reason}; install python3-gi gir1.2-gst-rtsp-server-1.0 (Debian)")
    if opts.video and not Path(opts.video).is_file():
        raise SoakError(f"--video {opts.video!r} does not exist")
    try:
        import psutil  # noqa: F401
    except ImportError as exc:
        raise SoakError("psutil is needed to find the stage processes: pip install psutil") from exc
    return _Soak(opts).run()


# ================================================================================ CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/edge.yaml", help="graph config (process mode for kills)")
    p.add_argument("--duration", default="30m", help="how long to run: 30m, 90s, 1h (default 30m)")
    p.add_argument("--cameras", type=int, default=2, help="RTSP servers = ingest streams (default 2)")
    p.add_argument(
        "--video",
        default=None,
        help="clip each server re-encodes (default: ../shared/media/crosswalk-occlusions.mp4 if "
        "present); 'testsrc' = GStreamer's ball pattern",
    )
    p.add_argument("--fps", type=int, default=15, help="test-pattern frame rate (a file plays at its own)")
    p.add_argument("--size", default="640x360", help="WxH the servers send (default 640x360)")
    p.add_argument("--kill-stage", default=None, help="stage to SIGKILL on a schedule")
    p.add_argument("--kill-every", default=None, help="interval between kills (first one after it)")
    p.add_argument("--cut-camera-every", default=None, help="interval between camera cuts (round robin)")
    p.add_argument("--cut-for", default="10s", help="how long a cut camera stays down (default 10s)")
    p.add_argument("--sample-every", default="10s", help="RSS / metrics sampling interval (default 10s)")
    p.add_argument(
        "--warmup",
        default=None,
        help="excluded from the RSS and latency trends (default 2m, or a quarter of a shorter run)",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to amodal run, e.g. detect.weights=../shared/models/yolov8n_int8_openvino_model",
    )
    p.add_argument("--basic", action="store_true", help="only ingest, detect, track and the sinks")
    p.add_argument(
        "--workdir",
        default=None,
        help="keep configs, logs and outputs here (default: temp, removed after a clean run)",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary work folder")
    p.add_argument(
        "--startup-timeout",
        default="5m",
        help="longest wait for every stage to serve metrics before the clock starts (default 5m)",
    )
    p.add_argument("--out", default="soak.json", help="JSON report (default soak.json; '-' = stdout)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> SoakOptions:
    """Validate the CLI values and map them onto SoakOptions (ValueError names the option)."""

    def dur(option: str, value: str | None) -> float | None:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"{option}: {exc}") from exc

    duration = dur("--duration", args.duration)
    if args.cameras < 1:
        raise ValueError("--cameras must be >= 1")
    if not re.fullmatch(r"\d+x\d+", args.size.lower()):
        raise ValueError(f"--size {args.size!r}: use WxH, e.g. 320x240")
    if bool(args.kill_stage) != bool(args.kill_every):
        raise ValueError("--kill-stage and --kill-every go together")
    cut_every, cut_for = dur("--cut-camera-every", args.cut_camera_every), dur("--cut-for", args.cut_for)
    if cut_every is not None and cut_for >= cut_every:
        raise ValueError("--cut-for must be shorter than --cut-camera-every")
    warmup = dur("--warmup", args.warmup) if args.warmup else min(120.0, duration / 4)
    if warmup >= duration:
        raise ValueError("--warmup must be shorter than --duration")
    video: str | None
    if args.video is None:
        video = str(DEFAULT_VIDEO) if DEFAULT_VIDEO.is_file() else None
    else:
        video = None if args.video == "testsrc" else args.video
    for item in args.sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: use KEY=VALUE")
    return SoakOptions(
        config=Path(args.config),
        duration_s=duration,
        cameras=args.cameras,
        video=video,
        fps=args.fps,
        size=args.size.lower(),
        kill_stage=args.kill_stage,
        kill_every_s=dur("--kill-every", args.kill_every),
        cut_every_s=cut_every,
        cut_for_s=cut_for,
        sample_every_s=dur("--sample-every", args.sample_every),
        warmup_s=warmup,
        startup_timeout_s=dur("--startup-timeout", args.startup_timeout),
        sets=list(args.sets),
        basic=args.basic,
        workdir=Path(args.workdir) if args.workdir else None,
        keep_workdir=args.keep_workdir,
    )


def _one_line(report: dict[str, Any]) -> str:
    v, c, lat = report["verdict"], report["counters"], report["latency"]
    growth = {
        k: (None if s["growth_pct"] is None else round(s["growth_pct"], 1)) for k, s in report["rss"].items()
    }
    return (
        f"soak: amodal exit {report['amodal']['exit_code']}; kills {len(report['events']['kills'])}, "
        f"cuts {len(report['events']['cuts'])}; restarts {c['restarts']['by_stage']}; reconnects "
        f"{c['reconnects']['total']:.0f}; dropped {c['dropped']['total']:.0f}; "
        f"lost {c['lost']['total']:.0f}; "
        f"unaccounted {sum(x['excess'] for x in report['links'].values()):.0f}; "
        f"p95 overall {lat['overall']['p95_s']}; RSS growth % {growth}; verdict pass={v['pass']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        opts = options_from_args(args)
    except ValueError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM ends the soak like Ctrl-C: drain, report, clean up

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        report = run_soak(opts)
    except SoakError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: killed before a report could be written", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    text = json.dumps(report, indent=2)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text + "\n")
        logger.info("soak: report written to %s", args.out)
    print(_one_line(report), file=sys.stderr)
    amodal = report["amodal"]
    if amodal["exited_early_at_s"] is not None:
        print(
            f"soak: error: amodal exited with code {amodal['exit_code']} during the "
            f"{amodal['exited_during']} phase, {amodal['exited_early_at_s']:.1f} s in, before the end "
            f"of the soak (see amodal.log in {report['config']['workdir']})",
            file=sys.stderr,
        )
        return 1
    if report["interrupted"]:
        print(
            f"soak: interrupted after {report['config']['ran_s']:.0f} s of "
            f"{report['config']['duration_s']:.0f} s; the report covers that part",
            file=sys.stderr,
        )
    if amodal["exit_code"] != 0:
        print(
            f"soak: error: amodal exited with code {amodal['exit_code']} (see amodal.log in "
            f"{report['config']['workdir']})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
