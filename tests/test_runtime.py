"""Runtime behaviour: the stage contract, errors, draining on stop, supervision, config and metrics."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from amodal.graphs import load_app_graph
from pipeline.configfile import ConfigError
from pipeline.graph import load_graph
from pipeline.links import free_tcp_port
from pipeline.plugins import import_plugins
from pipeline.runtime import EmbeddedRuntime
from pipeline.supervisor import ProcessRuntime
from tests.test_pipeline_support import PLUGIN, Background, chain_graph, frames_and_eos, read_rows


# -- the stage contract -----------------------------------------------------------------------------
def test_end_of_stream_follows_the_stage_outputs_and_on_stop_runs_last(tmp_path: Path) -> None:
    graph = load_graph(data=chain_graph(tmp_path, relay={"flush_seq_on_eos": 200}))
    assert EmbeddedRuntime(graph).run().exit_code == 0
    rows = read_rows(tmp_path / "rows.jsonl")
    for stream in ("a", "b"):
        flush = rows.index({"stream": stream, "seq": 200, "ok": True, "type": "Frame"})
        eos = rows.index({"eos": stream, "reason": "finished"})
        assert flush < eos  # the stage's final message is delivered before the forwarded EndOfStream
    assert rows[-1] == {"stopped": True}


def test_fan_in_delivers_each_end_of_stream_once_after_all_links(tmp_path: Path) -> None:
    """A diamond src -> (r1, r2) -> sink: the sink sees every frame twice but stream 'a' ends once."""
    data = {
        "plugins": [PLUGIN],
        "output_dir": str(tmp_path),
        "stages": [
            {"name": "src", "type": "test_source", "config": {"streams": ["a"], "frames": 15}},
            {"name": "r1", "type": "test_relay", "inputs": ["src"]},
            {"name": "r2", "type": "test_relay", "inputs": ["src"], "config": {"delay_s": 0.002}},
            {
                "name": "sink",
                "type": "test_collect",
                "inputs": ["r1", "r2"],
                "config": {"path": "rows.jsonl"},
            },
        ],
    }
    assert EmbeddedRuntime(load_graph(data=data)).run().exit_code == 0
    frames, eos = frames_and_eos(read_rows(tmp_path / "rows.jsonl"))
    assert sorted(frames) == sorted([("a", i) for i in range(15)] * 2)
    assert eos == [("a", "finished")]


def test_a_stream_ends_without_waiting_for_unrelated_sources(tmp_path: Path) -> None:
    """Two ingest-like sources into one sink: camera 'a' ending must not wait for camera 'b'."""
    data = {
        "plugins": [PLUGIN],
        "output_dir": str(tmp_path),
        "stages": [
            {"name": "s1", "type": "test_source", "config": {"streams": ["a"], "frames": 5}},
            {"name": "s2", "type": "test_source", "config": {"streams": ["b"], "frames": 0, "fps": 50}},
            {
                "name": "sink",
                "type": "test_collect",
                "inputs": ["s1", "s2"],
                "config": {"path": "rows.jsonl"},
            },
        ],
    }
    runtime = EmbeddedRuntime(load_graph(data=data))
    thread = threading.Thread(target=runtime.run)
    thread.start()
    rows_path = tmp_path / "rows.jsonl"
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if rows_path.exists() and {"eos": "a", "reason": "finished"} in read_rows(rows_path):
                break
            time.sleep(0.1)
        assert {"eos": "a", "reason": "finished"} in read_rows(rows_path)
        assert thread.is_alive()  # 'b' is still streaming
    finally:
        runtime.request_stop()
        thread.join(timeout=30)
    assert frames_and_eos(read_rows(rows_path))[1] == [("a", "finished"), ("b", "stopped")]


def test_batches_are_formed_when_a_stage_falls_behind(tmp_path: Path) -> None:
    graph = load_graph(
        data=chain_graph(
            tmp_path, source={"frames": 60, "streams": ["a"]}, relay={"batch": 8, "delay_s": 0.003}
        )
    )
    runtime = EmbeddedRuntime(graph)
    assert runtime.run().exit_code == 0
    m = runtime.metrics
    calls = m.value("amodal_batch_size_count", stage="relay")
    assert m.value("amodal_batch_size_sum", stage="relay") == 60
    assert calls < 60  # some calls got more than one frame
    assert m.value("amodal_batch_size_bucket", stage="relay", le="8.0") == calls  # never more than max_batch
    assert m.value("amodal_batch_len", stage="relay") >= 1  # StageContext.observe -> gauge


# -- errors -----------------------------------------------------------------------------------------
def test_an_exception_in_process_drops_that_message_only(tmp_path: Path) -> None:
    graph = load_graph(data=chain_graph(tmp_path, relay={"fail_on_seq": [3, 5]}))
    runtime = EmbeddedRuntime(graph)
    report = runtime.run()
    assert report.exit_code == 0
    frames, eos = frames_and_eos(read_rows(tmp_path / "rows.jsonl"))
    assert len(frames) == 40 - 4 and ("a", 3) not in frames and ("b", 5) not in frames
    assert len(eos) == 2
    assert runtime.metrics.value("amodal_errors_total", stage="relay") == 4


def test_a_stage_that_keeps_failing_fails_the_run_but_the_graph_still_drains(tmp_path: Path) -> None:
    graph = load_graph(
        data=chain_graph(
            tmp_path, relay={"fail_on_seq": list(range(100))}, shutdown={"max_consecutive_errors": 5}
        )
    )
    report = EmbeddedRuntime(graph).run()
    assert report.exit_code == 1
    assert "stage 'relay' failed: process() raised 5 times in a row" in report.error
    rows = read_rows(tmp_path / "rows.jsonl")
    assert sorted(stream for stream, _ in frames_and_eos(rows)[1]) == ["a", "b"]
    assert rows[-1] == {"stopped": True}  # the sink still committed and closed


def test_a_stage_that_cannot_start_reports_one_line(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    graph = load_graph(data=chain_graph(tmp_path, sink={"path": "blocker/rows.jsonl"}))
    report = EmbeddedRuntime(graph).run()
    assert report.exit_code == 1
    assert report.error.startswith("stage 'sink' failed to start:") and "\n" not in report.error


# -- stopping ---------------------------------------------------------------------------------------
def test_stop_request_stops_sources_and_drains_everything(tmp_path: Path) -> None:
    graph = load_graph(data=chain_graph(tmp_path, source={"frames": 0, "fps": 200}, sink={"delay_s": 0.002}))
    runtime = EmbeddedRuntime(graph)
    timer = threading.Timer(0.7, runtime.request_stop)
    timer.start()
    report = runtime.run()
    timer.cancel()
    assert report.exit_code == 0, report.error
    rows = read_rows(tmp_path / "rows.jsonl")
    frames, eos = frames_and_eos(rows)
    assert sorted(eos) == [("a", "stopped"), ("b", "stopped")]
    sent = report.stages["src"].messages_out - 2  # minus the two EndOfStream
    assert len(frames) == sent > 10  # lossless: everything the source emitted reached the sink
    assert rows[-1] == {"stopped": True}


# -- process mode supervision -----------------------------------------------------------------------
def test_a_crashed_stage_process_is_restarted_and_counted(tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"
    data = chain_graph(
        tmp_path,
        source={"frames": 0, "fps": 50, "streams": ["a"]},
        relay={"crash_on_seq": 10, "crash_marker": str(marker)},
        mode="process",
        supervisor={"backoff_initial_s": 0.1, "max_restarts": 2},
    )
    runtime = ProcessRuntime(load_graph(data=data))
    holder: dict = {}
    thread = threading.Thread(target=lambda: holder.setdefault("report", runtime.run()))
    thread.start()
    deadline = time.monotonic() + 40
    rows_path = tmp_path / "rows.jsonl"
    # wait until frames from after the restart arrive, then stop
    while time.monotonic() < deadline:
        rows = read_rows(rows_path) if rows_path.exists() else []
        if marker.exists() and any(r.get("seq", 0) > 20 for r in rows):
            break
        time.sleep(0.2)
    runtime.request_stop()
    thread.join(timeout=60)
    report = holder["report"]
    assert marker.exists()
    assert report.restarts == {"src": 0, "relay": 1, "sink": 0}
    assert runtime.metrics.value("amodal_stage_restarts_total", stage="relay") == 1
    assert report.exit_code == 0, report.error
    frames, eos = frames_and_eos(read_rows(rows_path))
    assert max(seq for _, seq in frames) > 20 and eos == [("a", "stopped")]
    # nothing the crash held was lost, nothing was delivered twice (pipeline.delivery)
    assert [seq for _, seq in frames] == list(range(len(frames)))


def test_a_stage_that_keeps_crashing_ends_the_run_with_exit_1(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    data = chain_graph(
        tmp_path,
        sink={"path": "blocker/rows.jsonl"},
        mode="process",
        supervisor={"backoff_initial_s": 0.05, "max_restarts": 0},
        shutdown={"idle_drain_s": 1.0, "drain_timeout_s": 10},
    )
    report = ProcessRuntime(load_graph(data=data)).run()
    assert report.exit_code == 1
    assert report.restarts["sink"] == 0
    assert "stage 'sink' failed 1 times; giving up (last: stage 'sink' failed to start:" in report.error


# -- config -----------------------------------------------------------------------------------------
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text(f"plugins: [{PLUGIN}]\n" + text)
    return path


_GOOD = """
stages:
  - {name: src, type: test_source}
  - {name: sink, type: test_collect, inputs: [src], config: {path: x.jsonl}}
"""


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            _GOOD.replace("path: x.jsonl", "path: x.jsonl, colour: red"),
            r"stages\[1\]\.test_collect\.config\.colour: unknown key",
        ),
        (
            _GOOD.replace("type: test_source}", "type: test_source, config: {frames: many}}"),
            r"stages\[0\]\.test_source\.config\.frames: bad value 'many'",
        ),
        (_GOOD.replace("test_collect", "test_colect"), r"stages\[1\]: .*'test_colect'.*does not match"),
        (
            _GOOD.replace("inputs: [src]", "inputs: [nope]"),
            r"stages\[1\] \(sink\)\.inputs: no stage named 'nope'",
        ),
        (_GOOD.replace("inputs: [src], ", ""), r"stages\[1\] \(sink\): inputs is empty"),
        (
            _GOOD.replace("{name: src, type: test_source}", "{name: src, type: test_source, inputs: [sink]}"),
            r"a test_source stage is a source and takes no inputs",
        ),
        (_GOOD.replace("name: sink", "name: src"), r"stages\[1\]\.name 'src' is used twice"),
        ("mode: process\ntransport: {kind: inproc}\n" + _GOOD, r"'inproc' only works with mode 'embedded'"),
        ("links: {policy: drop_newest}\n" + _GOOD, r"links\.policy: bad value 'drop_newest'"),
        (
            "metrics: {port: '${NO_SUCH_VAR_XYZ}'}\n" + _GOOD,
            r"metrics\.port: environment variable \$\{NO_SUCH",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_graph(_write(tmp_path, text))


def test_cycles_are_rejected(tmp_path: Path) -> None:
    text = (
        _GOOD
        + "  - {name: r1, type: test_relay, inputs: [src, r2]}\n"
        + "  - {name: r2, type: test_relay, inputs: [r1]}\n"
    )
    with pytest.raises(ConfigError, match="cycle: r1 -> r2 -> r1|cycle: r2 -> r1 -> r2"):
        load_graph(_write(tmp_path, text))


def test_a_link_that_could_carry_nothing_is_rejected() -> None:
    from amodal.graphs import builtin_replay_graph, load_app_graph

    data = builtin_replay_graph(basic=True)
    data["stages"][3]["inputs"] = ["detect"]  # sqlite_sink wants PersonCrops; detect emits Frames
    with pytest.raises(
        ConfigError,
        match=r"events\.inputs: detect \(detect\) emits Frame, but events "
        r"\(sqlite_sink\) accepts PersonCrops",
    ):
        load_app_graph(data=data)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="config file 'nowhere.yaml' does not exist"):
        load_graph("nowhere.yaml")


def test_overrides_address_stages_by_name_and_env_is_interpolated(tmp_path: Path) -> None:
    path = _write(tmp_path, _GOOD.replace("path: x.jsonl", "path: '${OUT_NAME}'"))
    graph = load_graph(
        path,
        overrides=["src.frames=7", "sink.config.delay_s=0.5", "links.hwm=3", "mode=process"],
        env={"OUT_NAME": "events.jsonl"},
    )
    assert graph.stage("src").config.frames == 7
    assert graph.stage("sink").config.delay_s == 0.5
    assert graph.stage("sink").config.path == "events.jsonl"
    assert graph.links.hwm == 3 and graph.mode == "process" and graph.transport_kind == "ipc"
    with pytest.raises(ConfigError, match=r"stages\[0\]\.test_source\.config\.frame: unknown key"):
        load_graph(path, overrides=["src.frame=7"], env={"OUT_NAME": "x"})


def test_plugins_are_imported_from_the_working_directory_without_changing_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like ``python -m``, a plugin module is found from the working directory, which is on
    ``sys.path`` only while the plugins are imported (no process-wide change)."""
    (tmp_path / "amodal_cwd_plugin.py").write_text("LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    try:
        import_plugins(["amodal_cwd_plugin"])
        assert sys.modules["amodal_cwd_plugin"].LOADED
    finally:
        sys.modules.pop("amodal_cwd_plugin", None)
    assert sys.path == before
    with pytest.raises(ConfigError, match="plugins: cannot import 'amodal_no_such_plugin'"):
        import_plugins(["amodal_no_such_plugin"])
    assert sys.path == before


# -- metrics ----------------------------------------------------------------------------------------
def test_each_runtime_has_its_own_registry_and_endpoint(tmp_path: Path) -> None:
    port = free_tcp_port()
    slow = chain_graph(
        tmp_path / "one", source={"frames": 0, "fps": 100, "streams": ["a"]}, metrics={"port": port}
    )
    fast = chain_graph(tmp_path / "two", source={"frames": 5, "streams": ["a"]})
    first = EmbeddedRuntime(load_graph(data=slow))
    thread = threading.Thread(target=first.run)
    thread.start()
    try:
        body = ""
        for _ in range(50):
            time.sleep(0.1)
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
            if 'amodal_messages_in_total{stage="sink",type="frame"}' in body:
                break
        assert 'amodal_messages_in_total{stage="sink",type="frame"}' in body
        assert "amodal_process_seconds_bucket" in body and "amodal_capture_to_sink_seconds" in body
        assert 'amodal_relayed_total{stage="relay",stream="a"}' in body  # StageContext.count
        second = EmbeddedRuntime(load_graph(data=fast))
        assert second.run().exit_code == 0
        assert second.metrics.value("amodal_messages_in_total", stage="sink", type="frame") == 5
    finally:
        first.request_stop()
        thread.join(timeout=30)
    assert first.metrics.value("amodal_messages_in_total", stage="sink", type="frame") > 5


def test_what_a_restarted_receiver_on_a_drop_oldest_link_never_got_is_counted_in_the_stream_row(
    tmp_path: Path,
) -> None:
    """drop_oldest links keep nothing to send again: the messages the killed relay still had queued are
    lost, and that number reaches the stream's end-of-stream record (pipeline.delivery)."""
    data = chain_graph(
        tmp_path,
        source={"frames": 300, "fps": 100, "streams": ["a"]},
        relay={"delay_s": 0.02, "to_crops": True},  # half the source's rate: its queue stays full
        mode="process",
        supervisor={"backoff_initial_s": 0.1, "max_restarts": 2},
    )
    data["stages"][1]["inputs"] = [{"source": "src", "policy": "drop_oldest", "hwm": 4}]
    data["stages"][2] = {"name": "sink", "type": "jsonl_sink", "inputs": ["relay"], "config": {}}
    run = Background(ProcessRuntime(load_app_graph(data=data)))
    run.wait_for_lines(tmp_path / "events.jsonl", 10)
    os.kill(run.runtime.stage_pid("relay"), signal.SIGKILL)
    report = run.report()
    assert report.exit_code == 0, report.error
    assert report.restarts["relay"] == 1
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    delivered = [line["seq"] for line in lines if line["type"] == "tracks"]
    (end,) = [line for line in lines if line["type"] == "end_of_stream"]
    assert end["reason"] == "finished" and end["lost"] >= 1  # the relay's queue when it was killed
    assert delivered == sorted(set(delivered)) and len(delivered) + end["lost"] <= 300


def test_a_busy_upstream_keeps_its_downstream_from_giving_up_after_a_stop(tmp_path: Path) -> None:
    """After a stop, a stage gives up on inputs that stay silent for idle_drain_s; an upstream that is
    alive but busy sends heartbeats, so nothing it still produces is lost."""
    data = chain_graph(
        tmp_path,
        source={"frames": 4, "fps": 100, "streams": ["a"]},
        relay={"delay_s": 1.2},  # far longer than idle_drain_s per message
        shutdown={"idle_drain_s": 0.4, "drain_timeout_s": 30.0, "linger_s": 1.0},
        delivery={"ping_s": 0.1},
    )
    run = Background(EmbeddedRuntime(load_graph(data=data)))
    rows_path = tmp_path / "rows.jsonl"
    run.wait_for_lines(rows_path, 1)
    run.runtime.request_stop()
    report = run.report()
    assert report.exit_code == 0, report.error
    frames, eos = frames_and_eos(read_rows(rows_path))
    assert frames == [("a", seq) for seq in range(4)] and len(eos) == 1


def test_a_sink_killed_after_its_upstream_finished_still_gets_everything(tmp_path: Path) -> None:
    """The upstream stages finished long ago and wait to be released: the restarted sink is not told
    they are done; they send it again everything it had not acknowledged, their StageDone included."""
    data = chain_graph(
        tmp_path,
        source={"frames": 40, "fps": 1000, "streams": ["a"]},
        sink={"delay_s": 0.05},  # the source and the relay are done within a second; the sink takes two
        mode="process",
        supervisor={"backoff_initial_s": 0.1, "max_restarts": 2},
    )
    run = Background(ProcessRuntime(load_graph(data=data)))
    rows_path = tmp_path / "rows.jsonl"
    run.wait_for_lines(rows_path, 10)
    os.kill(run.runtime.stage_pid("sink"), signal.SIGKILL)
    report = run.report()
    assert report.exit_code == 0, report.error
    assert report.restarts["sink"] == 1
    seqs = [seq for _, seq in frames_and_eos(read_rows(rows_path))[0]]
    assert sorted(set(seqs)) == list(range(40))
    # test_collect has nothing to make durable, so it acknowledges a row once written: only the row it
    # was writing when killed can come again
    assert len(seqs) - len(set(seqs)) <= 1
