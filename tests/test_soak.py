"""tools/soak.py: the pure functions (durations, histogram quantiles from bucket deltas, slopes,
counters across restarts, the soak config) and one short real soak against a GStreamer RTSP server."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from pipeline.configfile import load_yaml
from pipeline.metrics import RuntimeMetrics
from tools import soak
from tools.soak import (
    CounterBook,
    Sample,
    build_soak_config,
    growth_percent,
    histogram_quantile,
    latency_summary,
    linear_slope,
    link_accounting,
    parse_duration,
    parse_metrics,
    pooled_slope,
    rss_summary,
    verdict,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
EDGE = REPO_ROOT / "configs" / "edge.yaml"
INF = math.inf


# ------------------------------------------------------------------------------ durations
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800.0),
        ("90s", 90.0),
        ("1h30m", 5400.0),
        ("2.5m", 150.0),
        ("500ms", 0.5),
        ("45", 45.0),
        (" 2m 10s ", 130.0),
        (12, 12.0),
    ],
)
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "0s", "5x", "m", "-5s", "1h-2m"])
def test_parse_duration_rejects(text) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# ------------------------------------------------------------------------------ quantiles
def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.1, 0.0), (0.5, 10.0), (1.0, 20.0), (INF, 20.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.95)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.3)  # rank 5 of 10 in (0.1, 0.5]
    assert histogram_quantile(0.5, list(reversed(buckets))) == pytest.approx(0.5)  # order does not matter


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None
    assert histogram_quantile(0.95, [(1.0, 0.0), (2.5, 0.0), (INF, 4.0)]) == 2.5  # beyond the last bound
    assert histogram_quantile(0.5, [(0.25, 4.0), (INF, 4.0)]) == pytest.approx(0.125)  # first: from 0
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(1.5, [(1.0, 1.0)])


def test_quantiles_from_the_runtime_histogram_text() -> None:
    """The project's own metrics, exposed and parsed back: names and bucket maths line up."""
    metrics = RuntimeMetrics()
    for value in [0.02] * 50 + [0.2] * 45 + [3.0] * 5:
        metrics.capture_to_sink.labels(stage="events").observe(value)
    metrics.restarts.labels(stage="detect").inc(2)
    metrics.dropped.labels(stage="detect", link="ingest->detect").inc(7)
    metrics.rejected.labels(stage="track", reason="malformed").inc()
    metrics.count("ingest", "reconnects", 3, {"stream": "cam1"})
    samples = parse_metrics(generate_latest(metrics.registry).decode())
    names = {s.name for s in samples}
    assert {
        "amodal_capture_to_sink_seconds_bucket",
        "amodal_stage_restarts_total",
        "amodal_dropped_total",
        "amodal_rejected_total",
        "amodal_reconnects_total",
    } <= names
    assert not any(n.endswith("_created") for n in names)
    book = CounterBook()
    book.update("events", 1, samples)
    windows = {0: soak._buckets_from(book.totals, "amodal_capture_to_sink_seconds_bucket")}
    summary = latency_summary(windows, warmup_s=0.0)
    assert summary["overall"]["count"] == 100
    assert 0.01 < summary["overall"]["p50_s"] <= 0.025  # the 50th observation is in (0.01, 0.025]
    assert 0.1 < summary["overall"]["p95_s"] <= 0.25
    assert book.total("amodal_reconnects_total") == 3
    assert book.by_label("amodal_dropped_total", "link") == {"ingest->detect": 7}


# ------------------------------------------------------------------------------ counters across restarts
def _bucket(le: float, value: float, stage: str = "events") -> Sample:
    return Sample("amodal_capture_to_sink_seconds_bucket", (("le", str(le)), ("stage", stage)), value)


def test_counter_book_adds_a_restarted_process_whole() -> None:
    book = CounterBook()
    assert book.update("events", 100, [_bucket(0.5, 10)]) == {
        ("events", "amodal_capture_to_sink_seconds_bucket", (("le", "0.5"), ("stage", "events"))): 10
    }
    book.update("events", 100, [_bucket(0.5, 15)])  # +5
    deltas = book.update("events", 200, [_bucket(0.5, 12)])  # new pid: 12 since the restart
    assert list(deltas.values()) == [12]
    book.update("events", 200, [_bucket(0.5, 2)])  # went down without a pid change: a reset too
    assert book.total("amodal_capture_to_sink_seconds_bucket") == 10 + 5 + 12 + 2
    book.update("events", 300, [_bucket(0.5, 30)])  # restarted and already past the old value
    assert book.total("amodal_capture_to_sink_seconds_bucket") == 59


def test_latency_per_minute_from_bucket_deltas_and_flatness() -> None:
    def window(fast: float, slow: float) -> dict[float, float]:  # cumulative, as exposed
        return {0.1: fast, 1.0: fast + slow, INF: fast + slow}

    flat = latency_summary({m: window(95, 5) for m in range(6)}, warmup_s=60.0)
    assert [r["minute"] for r in flat["per_minute"]] == list(range(6))
    assert flat["post_warmup_minutes"] == 5
    assert flat["p95_slope_s_per_minute"] == pytest.approx(0.0)
    assert flat["p95_flat"] is True
    # The slow share grows every minute: p95 climbs from 0.1 s towards 1 s.
    growing = latency_summary({m: window(95 - 8 * m, 5 + 8 * m) for m in range(6)}, warmup_s=0.0)
    p95 = [r["p95_s"] for r in growing["per_minute"]]
    assert p95 == sorted(p95) and p95[-1] > 3 * p95[0]
    assert growing["p95_flat"] is False and growing["p95_drift_s"] > 0
    empty = latency_summary({}, warmup_s=0.0)
    assert empty["per_minute"] == [] and empty["p95_flat"] is None and empty["overall"]["p95_s"] is None


# ------------------------------------------------------------------------------ slopes and growth
def test_slopes() -> None:
    xs = [0.0, 1.0, 2.0, 3.0]
    assert linear_slope(xs, [1.0 + 2.0 * x for x in xs]) == pytest.approx(2.0)
    assert linear_slope([1.0], [3.0]) is None
    assert linear_slope([2.0, 2.0], [1.0, 5.0]) is None
    # Two incarnations, each growing 0.5/s from a different base: one line through both would not.
    seg_a = ([0.0, 1.0, 2.0], [100.0, 100.5, 101.0])
    seg_b = ([3.0, 4.0, 5.0], [50.0, 50.5, 51.0])
    assert pooled_slope([seg_a, seg_b]) == pytest.approx(0.5)
    assert linear_slope(seg_a[0] + seg_b[0], seg_a[1] + seg_b[1]) < 0
    with pytest.raises(ValueError, match="length"):
        pooled_slope([([0.0, 1.0], [1.0])])


def test_growth_percent() -> None:
    ts = [float(t) for t in range(0, 101, 10)]
    flat = growth_percent(ts, [200.0] * len(ts), window_s=20)
    assert flat["growth_pct"] == pytest.approx(0.0)
    rising = growth_percent(ts, [100.0 + t / 10 for t in ts], window_s=20)  # 100 -> 110
    assert rising["first_window_mean"] == pytest.approx(101.0)
    assert rising["last_window_mean"] == pytest.approx(109.0)
    assert rising["growth_pct"] == pytest.approx(100 * 8 / 101)
    assert growth_percent(ts[:3], [1.0, 2.0, 3.0], window_s=20) is None  # does not span two windows


def test_rss_summary_skips_warmup_and_handles_a_restart() -> None:
    series = [
        {"t_s": float(t), "rss_mb": 500.0 + (t if t >= 30 else 10 * t), "pid": 1} for t in range(0, 100, 5)
    ]
    series += [{"t_s": float(t), "rss_mb": 300.0 + 0.1 * (t - 100), "pid": 2} for t in range(100, 400, 5)]
    summary = rss_summary(series, warmup_s=30.0, window_s=60.0, restart_warmup_s=20.0)
    assert summary["incarnations"] == 2
    # pid 1 grows 1 MB/s after warm-up, pid 2 0.1 MB/s: the pooled slope lies between.
    assert 0.1 * 3600 < summary["slope_mb_per_hour"] < 1.0 * 3600
    # Last process, after its own warm-up (t >= 120): windows 120..180 (mean 305) and 335..395 (326.5).
    assert summary["first_window_mb"] == pytest.approx(305.0)
    assert summary["last_window_mb"] == pytest.approx(326.5)
    assert summary["growth_pct"] == pytest.approx(100 * 21.5 / 305)
    short = rss_summary(series[:8], warmup_s=30.0, window_s=60.0, restart_warmup_s=20.0)
    assert short["growth_pct"] is None and "too few" in short["note"]


# ------------------------------------------------------------------------------ config and accounting
def test_build_soak_config_basic_rewires_sinks_to_the_tracker() -> None:
    raw = load_yaml(EDGE)
    ports = iter(range(40000, 40010))
    data = build_soak_config(
        raw,
        ["rtsp://127.0.0.1:1/test", "rtsp://127.0.0.1:2/test"],
        "/tmp/o",
        31000,
        basic=True,
        free_tcp=lambda: next(ports),
    )
    assert [s["name"] for s in data["stages"]] == ["ingest", "detect", "track", "events", "live"]
    sinks = {s["name"]: s for s in data["stages"]}
    assert sinks["events"]["inputs"] == ["track"] and sinks["live"]["inputs"] == ["track"]
    assert sinks["live"]["config"]["endpoint"] == "tcp://127.0.0.1:40000"
    assert sinks["ingest"]["config"]["streams"] == [
        {"id": "cam1", "source": "rtsp://127.0.0.1:1/test"},
        {"id": "cam2", "source": "rtsp://127.0.0.1:2/test"},
    ]
    assert data["metrics"] == {"port": 31000, "host": "127.0.0.1"}
    assert data["output_dir"] == "/tmp/o"
    assert raw["stages"][0]["config"]["streams"][0]["source"] == "${CAM1_URL}"  # the input is untouched
    full = build_soak_config(raw, ["rtsp://x/1"], "/tmp/o", 31000)
    assert [s["name"] for s in full["stages"]] == [s["name"] for s in raw["stages"]]
    assert full["stages"][-1]["config"]["endpoint"] == raw["stages"][-1]["config"]["endpoint"]


def test_soak_config_is_a_valid_graph(tmp_path) -> None:
    from amodal.graphs import load_app_graph

    data = build_soak_config(load_yaml(EDGE), ["rtsp://127.0.0.1:9/test"], str(tmp_path), 31000, basic=True)
    graph = load_app_graph(data=data, overrides=["detect.weights=yolo11n.pt"])
    assert [s.name for s in graph.stages] == ["ingest", "detect", "track", "events", "live"]


def test_link_accounting_and_verdict() -> None:
    stages = [
        {"name": "ingest"},
        {"name": "detect", "inputs": ["ingest"]},
        {"name": "track", "inputs": ["detect"]},
    ]
    book = CounterBook()

    def s(name: str, value: float, **labels: str) -> Sample:
        return Sample(name, tuple(sorted(labels.items())), value)

    book.update(
        "ingest",
        1,
        [s("amodal_messages_out_total", 100, type="frame"), s("amodal_lost_total", 2, link="ingest->detect")],
    )
    book.update(
        "detect",
        2,
        [
            s("amodal_messages_in_total", 80, type="frame"),
            s("amodal_dropped_total", 15, link="ingest->detect"),
            s("amodal_queue_depth", 3, link="ingest->detect"),
            s("amodal_messages_out_total", 80, type="frame"),
        ],
    )
    book.update("track", 3, [s("amodal_messages_in_total", 75, type="frame")])
    links = link_accounting(book, stages)
    assert links["ingest->detect"] == {
        "sent": 100,
        "received": 80,
        "late": 0,
        "dropped": 15,
        "lost": 2,
        "queued_at_last_scrape": 3,
        "unaccounted": 0,
        "excess": 0,
    }
    assert links["detect->track"]["unaccounted"] == 5
    rss = {"detect": {"growth_pct": 1.0}, "track": {"growth_pct": 6.0}, "live": {"growth_pct": None}}
    v = verdict(rss, {"p95_flat": True}, lost=2, unaccounted=5)
    assert v["rss_growth_below_5pct"] is False and v["rss_growth_over_limit"] == ["track"]
    assert v["rss_not_measured"] == ["live"]
    assert v["lost_zero"] is False and v["unaccounted_zero"] is False and v["pass"] is False
    ok = verdict({"detect": {"growth_pct": 1.0}}, {"p95_flat": True}, lost=0, unaccounted=0)
    assert ok["pass"] is True
    assert verdict({"d": {"growth_pct": 1.0}}, {"p95_flat": None}, lost=0, unaccounted=0)["pass"] is None


def test_late_messages_from_the_closing_line_close_the_books() -> None:
    line = "done in 30.1 s; messages in per stage: {'ingest': 0, 'sink': 12}; restarts: {'x': 1}"
    final = soak.parse_final_messages_in(line)
    assert final == {"ingest": 0.0, "sink": 12.0}
    assert soak.parse_final_messages_in("done in 3 s") is None and soak.parse_final_messages_in(None) is None
    book = CounterBook()
    book.update(
        "up",
        1,
        [
            Sample("amodal_messages_out_total", (("type", "person_crops"),), 12),
            Sample("amodal_messages_out_total", (("type", "track_end"),), 2),
        ],
    )
    # The sink's last scrape saw 9 data messages and both TrackEnds; it took 3 more, then exited.
    book.update(
        "sink",
        2,
        [
            Sample("amodal_messages_in_total", (("type", "person_crops"),), 9),
            Sample("amodal_messages_in_total", (("type", "track_end"),), 2),
        ],
    )
    stages = [{"name": "up"}, {"name": "sink", "inputs": ["up"]}]
    assert link_accounting(book, stages)["up->sink"]["excess"] == 3
    closed = link_accounting(book, stages, final)["up->sink"]
    assert closed["late"] == 3 and closed["unaccounted"] == 3 and closed["excess"] == 0


def test_reconnects_are_attributed_to_the_cut_that_caused_them() -> None:
    cuts = [
        {"camera": "cam1", "down_at_s": 10.0},
        {"camera": "cam2", "down_at_s": 50.0},
        {"camera": "cam1", "down_at_s": 90.0},
    ]
    log = [
        (-math.inf, "cam1", 1.0),  # during startup (a clip end)
        (20.0, "cam1", 2.0),  # the cut's reconnect + a clip end in the same interval
        (40.0, "cam2", 1.0),  # a clip end before cam2's cut
        (60.0, "cam2", 1.0),
    ]  # cam2's cut; cam1's second cut never reconnected
    out = soak.attribute_reconnects(log, cuts)
    assert out["after_cuts"] == 2 and out["other"] == 3
    assert out["cuts_without_reconnect"] == ["cam1"]
    assert out["by_stream"] == {"cam1": 3.0, "cam2": 2.0}


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--kill-stage", "detect"], "go together"),
        (["--cut-camera-every", "10s", "--cut-for", "10s"], "shorter than --cut-camera-every"),
        (["--duration", "1m", "--warmup", "2m"], "warmup"),
        (["--size", "640"], "WxH"),
        (["--set", "detect.conf"], "KEY=VALUE"),
        (["--duration", "soon"], "--duration"),
    ],
)
def test_bad_options_exit_2(argv, match, capsys) -> None:
    assert soak.main(argv) == 2
    assert match in capsys.readouterr().err


def test_default_warmup_is_a_quarter_of_a_short_run() -> None:
    opts = soak.options_from_args(soak.parse_args(["--duration", "2m", "--video", "testsrc"]))
    assert opts.warmup_s == 30 and opts.video is None
    assert soak.options_from_args(soak.parse_args(["--duration", "30m"])).warmup_s == 120


# ------------------------------------------------------------------------------ a real soak
@pytest.fixture(scope="module")
def rtsp_ok() -> None:
    reason = soak.rtsp_unavailable()
    if reason:
        if os.environ.get("AMODAL_REQUIRE_RTSP"):
            pytest.fail(f"AMODAL_REQUIRE_RTSP is set but {reason}")
        pytest.skip(f"{reason}; install python3-gi gir1.2-gst-rtsp-server-1.0 (Debian)")


@pytest.mark.slow
@pytest.mark.rtsp
@pytest.mark.shared_assets
@pytest.mark.timeout(240)
def test_short_soak_kills_detect_cuts_the_camera_and_reports(rtsp_ok, shared_dir, tmp_path) -> None:
    pytest.importorskip("psutil")
    import psutil

    weights = shared_dir / "models" / "yolov8n_int8_openvino_model"
    if not weights.is_dir():
        if os.environ.get("AMODAL_REQUIRE_SHARED") == "1":
            pytest.fail(f"{weights} is missing")
        pytest.skip(f"{weights} is missing")
    out = tmp_path / "soak.json"
    code = soak.main(
        [
            "--config",
            str(EDGE),
            "--basic",
            "--cameras",
            "1",
            "--video",
            "testsrc",
            "--size",
            "160x120",
            "--fps",
            "10",
            "--duration",
            "12s",
            "--sample-every",
            "2s",
            "--warmup",
            "2s",
            "--kill-stage",
            "detect",
            "--kill-every",
            "7s",
            "--cut-camera-every",
            "4s",
            "--cut-for",
            "2s",
            "--set",
            f"detect.weights={weights}",
            "--set",
            "detect.imgsz=160",
            # reconnect within a second of the camera's return, so the cut's reconnect lands well
            # inside the 12 s run even on a loaded machine (the default backoff reaches 4 s)
            "--set",
            "ingest.reconnect.max_s=1",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    log = (tmp_path / "work" / "amodal.log").read_text(errors="replace")[-3000:]
    assert code == 0, log
    assert report["amodal"]["exit_code"] == 0
    assert report["config"]["stages"] == ["ingest", "detect", "track", "events", "live"]
    for stage in report["config"]["stages"]:
        series = report["rss"][stage]["series"]
        assert series and all(p["rss_mb"] > 0 for p in series), stage
    assert report["latency"]["per_minute"] and report["latency"]["overall"]["count"] > 0
    kills, cuts = report["events"]["kills"], report["events"]["cuts"]
    assert kills and all(k["stage"] == "detect" and k["pid"] > 0 for k in kills)
    assert cuts and cuts[0]["camera"] == "cam1" and cuts[0]["up_at_s"] > cuts[0]["down_at_s"]
    assert report["counters"]["restarts"]["by_stage"]["detect"] >= 1
    assert len(report["counters"]["stage_pids"]["detect"]) >= 2
    assert report["counters"]["reconnects"]["total"] >= 1
    assert set(report["verdict"]) >= {"rss_growth_below_5pct", "p95_flat", "lost_zero", "pass"}
    # Nothing left behind: stage processes and the RTSP server are gone.
    for pids in report["counters"]["stage_pids"].values():
        assert not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids
        )
    for cam in report["config"]["camera_ports"]:
        with socket.socket() as sock, pytest.raises(OSError):
            sock.settimeout(1)
            sock.connect(("127.0.0.1", cam))
