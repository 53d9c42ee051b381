"""tools/fuzz_links.py: fuzzing every link of a running graph (real sockets, the test stages), its output
comparison, and two runtime weaknesses it found (fixed; the tests keep them fixed)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from pipeline.delivery import MARKER, envelope
from pipeline.messages import Frame, MessageError
from pipeline.metrics import RuntimeMetrics
from pipeline.transport import Inputs, Link, Outlet, bind_input
from pipeline.wire import decode, encode
from tools.fuzz_links import (
    COUNTED,
    KINDS,
    compare_outputs,
    demo_graph,
    fuzz_graph,
    main,
    select_kinds,
    spread,
)

# 40 frames at 20 fps: each run lasts ~2 s, long enough to fuzz both links, short enough for 2 cores.
FAST_DEMO = {"frames": 40, "fps": 20.0}


def test_secured_links_refuse_and_count_every_fuzz_connection(tmp_path: Path) -> None:
    report = fuzz_graph(demo_graph(**FAST_DEMO), tmp_path, security="secured", messages=20)
    assert report["ok"], report["problems"]
    assert report["outputs_equal"] and report["first_difference"] is None
    assert report["files_compared"] == ["rows.jsonl"]
    assert set(report["links"]) == {"src->relay", "relay->sink"}
    assert report["fuzzed_run"]["exit_code"] == 0 and not report["fuzzed_run"]["hung"]
    for name, link in report["links"].items():
        assert sum(link["sent"].values()) == 20, name
        attempts = {c["attempt"] for c in link["connections"]}
        assert {"none", "plain", "curve_foreign_key"} <= attempts
        assert any(a.startswith("curve_key_of_") for a in attempts)  # another stage's valid key
        assert all(c["handshake"] == "refused" for c in link["connections"]), link["connections"]
        assert link["refused"] >= len(link["connections"]) > 0
        assert link["rejected"] == {reason: 0 for reason in COUNTED}  # nothing got far enough to be decoded
        assert link["accepted_by_design"] == {}


def test_insecure_links_reject_and_count_every_malformed_message(tmp_path: Path) -> None:
    kinds = select_kinds(["malformed"], "insecure", forge=False)
    report = fuzz_graph(demo_graph(**FAST_DEMO), tmp_path, security="insecure", messages=20, kinds=kinds)
    assert report["ok"], report["problems"]
    assert report["outputs_equal"], report["first_difference"]
    for name, link in report["links"].items():
        assert sum(link["sent"].values()) == 20, name
        assert link["settled"] and link["refused"] == 0
        assert all(c["handshake"] == "accepted" for c in link["connections"])  # no authentication
        for reason in COUNTED:
            assert link["rejected"][reason] == link["expected"].get(reason, 0), (name, reason)
        assert (
            link["rejected"]["malformed"]
            == sum(
                n
                for kind, n in link["sent"].items()
                if kind not in ("unknown_type", "unaccepted", "stage_done_wrong_sender")
            )
            + link["sentinels"]
        )
        assert link["rejected"]["unknown_type"] == link["sent"]["unknown_type"]
        assert link["rejected"]["forged"] == link["sent"]["stage_done_wrong_sender"]
    # relay accepts only Frame, so a PersonCrops is unaccepted there; sink takes both: nothing to send
    assert (
        report["links"]["src->relay"]["rejected"]["unaccepted"]
        == report["links"]["src->relay"]["sent"]["unaccepted"]
        > 0
    )
    assert "unaccepted" not in report["links"]["relay->sink"]["sent"]


def test_main_writes_the_report_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    code = main(
        [
            "--demo",
            "--demo-frames",
            "30",
            "--security",
            "insecure",
            "--kinds",
            "protocol",
            "--messages",
            "4",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert code == 0, report["problems"]
    assert report["config"] == "demo" and report["workdir"] == str(tmp_path / "work")
    for link in report["links"].values():
        assert link["sent"] == {"unmarked": 2, "lseq_gap": 2}
        assert link["expected"] == {"ignored": 4, "malformed": link["sentinels"]}
        replies = [c["replies"] for c in link["connections"] if c["lane"] != "marked"]
        assert all(r.get("resend_request", 0) >= 1 for r in replies)  # the receiver asked them to resync


def test_kind_selection_and_spread() -> None:
    insecure = select_kinds(None, "insecure", forge=False)
    assert insecure and all(k.group != "forged" for k in insecure)
    assert {k.name for k in select_kinds(None, "insecure", forge=True)} == {k.name for k in KINDS}
    assert {k.name for k in select_kinds(None, "secured", forge=False)} == {k.name for k in KINDS}
    # groups take turns, so a few messages still cover every group
    assert [k.group for k in select_kinds(None, "secured", False)[:4]] == [
        "malformed",
        "hostile",
        "protocol",
        "forged",
    ]
    assert spread(select_kinds(["bad_json", "bad_version", "unknown_type"], "insecure", False), 7) == {
        "bad_json": 3,
        "bad_version": 2,
        "unknown_type": 2,
    }
    with pytest.raises(ValueError, match="no kind or group 'nope'"):
        select_kinds(["nope"], "insecure", False)
    assert main(["--demo", "--kinds", "nope"]) == 2
    with pytest.raises(SystemExit):
        main(["--demo", "--transport", "ipc", "--security", "insecure"])


def _db(path: Path, rows: list[tuple]) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS t (stream_id TEXT, seq INTEGER, capture_time REAL)")
    db.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    db.commit()
    db.close()


def test_compare_outputs_ignores_wall_clock_and_names_the_first_difference(tmp_path: Path) -> None:
    a, b = tmp_path / "clean", tmp_path / "fuzzed"
    for folder, t, extra in ((a, 1.0, []), (b, 2.0, [])):
        folder.mkdir()
        lines = [{"stream_id": s, "seq": i, "capture_time": t + i} for i in range(3) for s in ("x", "y")]
        (folder / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines + extra))
        _db(folder / "e.db", [("x", i, t + i) for i in range(3)])
    assert compare_outputs(a, b) == (["e.db", "e.jsonl"], None)
    # streams interleaved differently are still equal; a record more is not
    lines = [{"stream_id": s, "seq": i, "capture_time": 0} for s in ("y", "x") for i in range(3)]
    (b / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert compare_outputs(a, b)[1] is None
    with (b / "e.jsonl").open("a") as f:
        f.write(json.dumps({"stream_id": "evil", "seq": 0}) + "\n")
    assert "stream 'evil': 0 records in the clean run, 1 in the fuzzed run" in compare_outputs(a, b)[1]
    (b / "e.jsonl").write_text((a / "e.jsonl").read_text())
    _db(b / "e.db", [("x", 9, 0.0)])
    difference = compare_outputs(a, b)[1]
    assert difference.startswith("e.db: table t: 3 rows clean, 4 fuzzed") and '"seq": 9' in difference
    (b / "e.db").unlink()
    assert compare_outputs(a, b)[1] == "e.db: only in the clean run"


# -- what the fuzzer found, fixed: hostile headers are MessageErrors; outside markers cannot evict a
# sender with messages in progress (transport.Inputs._forget_idle_peer) ----------------------------
_HOSTILE = [k for k in KINDS if k.group == "hostile"]


@pytest.mark.parametrize("kind", _HOSTILE, ids=[k.name for k in _HOSTILE])
def test_hostile_headers_are_message_errors(kind) -> None:
    link = Link("src", "relay", "tcp://127.0.0.1:1", "block", 4, ("frame",))
    with pytest.raises(MessageError):
        decode(kind.build(link, None))


def test_outside_markers_cannot_make_a_link_deliver_twice() -> None:
    context = zmq.Context()
    metrics = RuntimeMetrics()
    abort = threading.Event()
    spec = Link("src", "relay", "tcp://127.0.0.1:*", "block", 16, ("frame",))
    sock = bind_input(context, spec)
    link = Link("src", "relay", sock.getsockopt_string(zmq.LAST_ENDPOINT), "block", 16, ("frame",))
    inputs = Inputs(context, "relay", [link], (Frame,), metrics, bound={link.name: sock})
    inputs.start()
    outlet = Outlet(context, link, metrics, linger_s=0)
    intruders = []
    try:
        image = np.zeros((2, 2, 3), np.uint8)
        assert outlet.send(encode(Frame("a", 0, 0.0, 0.0, image)), "frame", "a", 0, abort)
        first = inputs.get(1, 0.0, 5.0)
        assert [r.message.seq for r in first] == [0]  # delivered, not done yet (still being processed)
        for _ in range(8):
            intruder = context.socket(zmq.DEALER)
            intruder.linger = 0
            intruder.connect(link.endpoint)
            intruder.send(envelope(MARKER, 1))
            intruders.append(intruder)
        time.sleep(0.5)
        assert outlet.send(encode(Frame("a", 1, 0.0, 0.0, image)), "frame", "a", 1, abort)
        seen: list[int] = []
        deadline = time.monotonic() + 3.0
        while 1 not in seen and time.monotonic() < deadline:
            outlet.service(abort)  # takes the receiver's resend request
            seen += [r.message.seq for r in inputs.get(8, 0.0, 0.05)]
        assert seen == [1], f"delivered again: {seen}"
    finally:
        for intruder in intruders:
            intruder.close(linger=0)
        outlet.close(abort=True)
        inputs.close()
        context.destroy(linger=0)
