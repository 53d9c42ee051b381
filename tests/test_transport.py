"""Links over real ZeroMQ sockets: the three transports, both policies, and garbage on a link."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import zmq

from pipeline.delivery import MARKER, MESSAGE, envelope
from pipeline.graph import load_graph
from pipeline.links import free_tcp_port
from pipeline.runtime import EmbeddedRuntime
from pipeline.security import make_keys
from pipeline.supervisor import ProcessRuntime
from tests.test_pipeline_support import chain_graph, frames_and_eos, read_rows


def _expect_complete(rows: list[dict], streams=("a", "b"), frames: int = 20) -> None:
    got, eos = frames_and_eos(rows)
    assert sorted(got) == sorted((s, i) for s in streams for i in range(frames))
    assert all(r["ok"] for r in rows if "seq" in r), "pixel content changed in transit"
    assert sorted(eos) == sorted((s, "finished") for s in streams)
    assert rows[-1] == {"stopped": True}


@pytest.mark.parametrize("kind", ["inproc", "ipc", "tcp"])
def test_embedded_mode_over_each_transport(tmp_path: Path, kind: str) -> None:
    security = {"insecure": True} if kind == "tcp" else {}
    graph = load_graph(
        data=chain_graph(tmp_path, relay={"batch": 4}, transport={"kind": kind}, security=security)
    )
    runtime = EmbeddedRuntime(graph)
    report = runtime.run()
    assert report.exit_code == 0, report.error
    assert all(link.endpoint.startswith(f"{kind}://") for link in runtime.links)
    if kind == "tcp":
        assert not any(link.endpoint.endswith(":*") for link in runtime.links)
    _expect_complete(read_rows(tmp_path / "rows.jsonl"))
    assert runtime.metrics.value("amodal_messages_in_total", stage="sink", type="frame") == 40


@pytest.mark.parametrize("kind", ["ipc"])  # tcp across processes: test_stages_split_over_two_hosts_...
def test_process_mode_over_ipc(tmp_path: Path, kind: str) -> None:
    graph = load_graph(data=chain_graph(tmp_path, mode="process", transport={"kind": kind}))
    report = ProcessRuntime(graph).run()
    assert report.exit_code == 0, report.error
    assert report.stages["sink"].messages_in == 40
    assert report.restarts == {"src": 0, "relay": 0, "sink": 0}
    _expect_complete(read_rows(tmp_path / "rows.jsonl"))


def test_block_policy_is_lossless_with_a_slow_consumer(tmp_path: Path) -> None:
    graph = load_graph(
        data=chain_graph(
            tmp_path, source={"frames": 30}, sink={"delay_s": 0.005}, link={"policy": "block", "hwm": 2}
        )
    )
    runtime = EmbeddedRuntime(graph)
    assert runtime.run().exit_code == 0
    _expect_complete(read_rows(tmp_path / "rows.jsonl"), frames=30)
    assert runtime.metrics.value("amodal_dropped_total") == 0


def test_drop_oldest_bounds_the_queue_and_counts_every_drop(tmp_path: Path) -> None:
    graph = load_graph(
        data=chain_graph(
            tmp_path,
            source={"frames": 150, "streams": ["a"]},
            sink={"delay_s": 0.01},
            link={"policy": "drop_oldest", "hwm": 2},
        )
    )
    runtime = EmbeddedRuntime(graph)
    assert runtime.run().exit_code == 0
    rows = read_rows(tmp_path / "rows.jsonl")
    got, eos = frames_and_eos(rows)
    dropped = runtime.metrics.value("amodal_dropped_total")
    assert dropped > 0 and len(got) < 150
    assert len(got) + dropped == 150  # every frame is either delivered or counted as dropped
    assert eos == [("a", "finished")]  # control messages are never dropped
    assert [seq for _, seq in got] == sorted(seq for _, seq in got)  # order kept
    assert got[-1] == ("a", 149)  # the newest frame survives, the oldest ones go


def test_garbage_on_a_link_is_rejected_counted_and_survived(tmp_path: Path) -> None:
    port = free_tcp_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    data = chain_graph(
        tmp_path,
        source={"frames": 0, "fps": 100, "streams": ["a"]},
        transport={"kind": "tcp"},
        security={"insecure": True},  # a plain tcp peer may connect: what does it get through?
    )
    data["stages"][1]["inputs"] = [{"source": "src", "endpoint": endpoint}]
    runtime = EmbeddedRuntime(load_graph(data=data))
    thread = threading.Thread(target=lambda: setattr(runtime, "report", runtime.run()))
    thread.start()
    ctx = zmq.Context()
    push = ctx.socket(zmq.DEALER)
    try:
        push.connect(endpoint)
        time.sleep(0.3)
        import numpy as np

        from pipeline.messages import PersonCrops, StageDone, Tracks
        from pipeline.wire import encode

        wrong_type = PersonCrops("a", 1, None, 0.0, (4, 4), Tracks.empty(), np.zeros((0, 2, 2, 3), np.uint8))
        garbage = [
            [b"\x00\x01\x02 not json"],
            [b'{"v": 1, "type": "frame", "f": {}, "a": [["image", "uint8", [99, 99, 3]]]}', b"short"],
            [b'{"v": 7, "type": "frame"}'],
            [b'{"v": 1, "type": "rm -rf", "f": {}, "a": []}'],
            encode(wrong_type),
            encode(StageDone(sender="mallory")),  # not the link's sender: must not finish the relay
        ]
        for parts in garbage:  # without the link envelope: rejected before decoding
            push.send_multipart(parts, copy=True)
        push.send(envelope(MARKER, 1))
        for lseq, parts in enumerate(garbage * 3, start=1):  # in the protocol, but not valid messages
            push.send_multipart([envelope(MESSAGE, lseq), *parts], copy=True)
        time.sleep(0.5)
    finally:
        push.close(linger=0)
        ctx.term()
        runtime.request_stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert runtime.report.exit_code == 0, runtime.report.error
    m = runtime.metrics
    assert m.value("amodal_rejected_total", stage="relay", reason="malformed") == 9 + 6
    assert m.value("amodal_rejected_total", stage="relay", reason="forged") == 3
    assert m.value("amodal_rejected_total", stage="relay", reason="unknown_type") == 3
    assert m.value("amodal_rejected_total", stage="relay", reason="unaccepted") == 3
    rows = read_rows(tmp_path / "rows.jsonl")
    got, eos = frames_and_eos(rows)
    assert len(got) > 20 and [s for _, s in got] == list(range(len(got)))  # the stage kept going
    assert eos == [("a", "stopped")]


def test_stages_split_over_two_hosts_with_tcp_endpoints(tmp_path: Path) -> None:
    """Two runtimes ('hosts') each run part of one graph; the crossing link has an explicit tcp endpoint."""
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    make_keys(tmp_path / "keys", ["host"])  # one pair shared by both "hosts"
    data = chain_graph(tmp_path, transport={"kind": "tcp"}, security={"keys_dir": str(tmp_path / "keys")})
    data["stages"][1]["inputs"] = [{"source": "src", "endpoint": endpoint}]
    graph = load_graph(data=data)
    with pytest.raises(Exception, match="the link relay -> sink crosses to another host"):
        EmbeddedRuntime(graph, only=["src", "relay"])
    edge = EmbeddedRuntime(graph, only=["src"])
    server = EmbeddedRuntime(graph, only=["relay", "sink"])
    reports: dict = {}
    threads = [
        threading.Thread(target=lambda r=r, k=k: reports.setdefault(k, r.run()))
        for k, r in (("server", server), ("edge", edge))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert reports["edge"].exit_code == 0 and reports["server"].exit_code == 0
    assert set(reports["edge"].stages) == {"src"} and set(reports["server"].stages) == {"relay", "sink"}
    _expect_complete(read_rows(tmp_path / "rows.jsonl"))


def test_a_peer_without_the_run_secret_is_refused_on_ipc_and_changes_nothing(tmp_path: Path) -> None:
    """A forged StageDone, EndOfStream and Frames of an unknown stream from a process that is not the
    link's declared sender: the connection is refused (counted), the run completes unchanged."""
    import numpy as np

    from pipeline.messages import EndOfStream, Frame, StageDone
    from pipeline.wire import encode

    data = chain_graph(
        tmp_path, source={"frames": 150, "fps": 100, "streams": ["a"]}, transport={"kind": "ipc"}
    )
    runtime = EmbeddedRuntime(load_graph(data=data))
    thread = threading.Thread(target=lambda: setattr(runtime, "report", runtime.run()))
    thread.start()
    ctx = zmq.Context()
    forger = ctx.socket(zmq.DEALER)
    try:
        deadline = time.monotonic() + 20
        while not runtime.links and time.monotonic() < deadline:
            time.sleep(0.01)
        link = next(link for link in runtime.links if link.downstream == "relay")
        forger.plain_username, forger.plain_password = b"src", b"guessed"  # the right name, no secret
        forger.connect(link.endpoint)
        image = np.zeros((4, 4, 3), np.uint8)
        forged = [StageDone(sender="src"), EndOfStream("a", "finished")]
        forged += [Frame("evil", seq, 0.0, 0.0, image) for seq in range(5)]
        attempts = [[envelope(MARKER, 1)]]
        attempts += [[envelope(MESSAGE, lseq), *encode(m)] for lseq, m in enumerate(forged, start=1)]
        for parts in attempts:  # once refused, the socket has no connection to queue them on
            try:
                forger.send_multipart(parts, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
        thread.join(timeout=60)
    finally:
        forger.close(linger=0)
        ctx.term()
    assert not thread.is_alive()
    assert runtime.report.exit_code == 0, runtime.report.error
    assert runtime.metrics.value("amodal_rejected_total", stage="relay", reason="auth") >= 1
    got, eos = frames_and_eos(read_rows(tmp_path / "rows.jsonl"))
    assert got == [("a", seq) for seq in range(150)] and eos == [("a", "finished")]
