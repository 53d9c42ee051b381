"""Fuzz every link of a running graph and check that its outputs do not change (issue 13, item 8).

    python tools/fuzz_links.py --config configs/replay.yaml [--set STAGE.key=value ...] \\
        [--security secured|insecure] [--transport tcp|ipc] [--messages 20] [--forge] [--out fuzz.json]
    python tools/fuzz_links.py --demo [--security insecure]      # the test stages: quick, self-contained

What it does:

* runs the graph twice in embedded mode with identical input: a *clean* run and a *fuzzed* run, each
  into its own ``output_dir`` (``--workdir``, else a temporary folder). The sources must be
  deterministic (files, the test source); ``--check-baseline`` runs the clean graph twice first and
  stops (exit 2) when even two clean runs differ;
* puts every link on a transport an outsider can reach: ``tcp`` (default) with CURVE keys that the tool
  makes for every stage in a temporary ``keys_dir`` (``--security secured``) or plain tcp with
  ``security.insecure: true`` (``--security insecure``), or ``ipc`` (per-run PLAIN secrets; secured only);
* during the fuzzed run, as soon as ``runtime.links`` is set, connects DEALER sockets from outside to
  each link in turn and sends ``--messages`` messages spread over the kinds in :data:`KINDS`:
  ``malformed`` (random bytes, a wire message without envelope, an envelope alone, bad JSON, a bad
  version, an unknown type, a wrong array length, extra buffers, a type the receiver does not accept,
  a bare link signal, a StageDone from a stranger), ``hostile`` (headers that break the decoder
  itself: deep JSON nesting, shapes beyond int64, a 5000-digit number, a non-string type),
  ``protocol`` (a valid message without the connection's marker, or out of sequence) and ``forged``
  (well-formed Frame, PersonCrops, EndOfStream, TrackEnd for a stream "evil", and a StageDone naming
  the link's real upstream). Each connection ends with one *sentinel* (garbage that is always counted)
  so the tool knows the receiver read everything before it moves on;
* compares the output folders (every ``*.jsonl`` and ``*.db``; JSONL as parsed records per stream,
  SQLite tables as sorted rows, both without wall-clock fields such as ``capture_time``), and writes
  a JSON report (``--out``, else stdout).

Secured links must refuse every fuzz connection: the attempts are no security at all, PLAIN with the
upstream's name, a fresh CURVE key, and the CURVE key of another stage of the graph (tcp), or no
security, a wrong password and CURVE (ipc). Insecure links have no authentication, so anyone who can
reach the port is a sender: malformed messages must be rejected and counted, while forged well-formed
messages are *accepted by design*. They are sent only with ``--forge`` and reported apart, never as
blocked.

Exit code: 0 the outputs are equal, the fuzzed run ended on its own, and (secured) every connection was
refused and counted, or (insecure) every message the receiver can recognise was rejected and counted;
1 otherwise (``problems`` says why); 2 the tool could not run (bad option or config).
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import logging
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from amodal.graphs import load_app_graph
from pipeline.configfile import ConfigError, load_yaml
from pipeline.delivery import ACK, MARKER, MESSAGE, RESEND, envelope
from pipeline.messages import EndOfStream, Frame, PersonCrops, StageDone, TrackEnd, Tracks
from pipeline.runtime import EmbeddedRuntime
from pipeline.security import KeyDir, make_keys
from pipeline.stage_overrides import apply_stage_overrides
from pipeline.transport import Link
from pipeline.wire import encode

__all__ = [
    "KINDS",
    "GROUPS",
    "DEFAULT_IGNORED_FIELDS",
    "Kind",
    "LinkReport",
    "RunSummary",
    "parse_args",
    "select_kinds",
    "spread",
    "demo_graph",
    "prepare_graph",
    "fuzz_link",
    "run_graph",
    "compare_outputs",
    "fuzz_graph",
    "main",
]

logger = logging.getLogger(__name__)

Security = Literal["secured", "insecure"]
Transport = Literal["tcp", "ipc"]
Group = Literal["malformed", "hostile", "protocol", "forged"]
Framing = Literal["raw", "message", "signal"]
Lane = Literal["marked", "unmarked", "gap"]
#: What the receiver does with a message: a rejection reason it counts, "delivered" (a forged message
#: on a link without authentication) or "ignored" (dropped without a count: the protocol's resync).
Outcome = Literal["malformed", "unknown_type", "unaccepted", "forged", "delivered", "ignored"]
COUNTED: tuple[str, ...] = ("malformed", "unknown_type", "unaccepted", "forged")
GROUPS: tuple[Group, ...] = ("malformed", "hostile", "protocol", "forged")
#: Wall-clock or per-run values that legitimately differ between two runs of the same input.
DEFAULT_IGNORED_FIELDS: tuple[str, ...] = ("capture_time", "first_seen", "last_seen", "session")
EVIL = "evil"  # the stream id of every forged data/control message
STRANGER = "fuzz-intruder"  # a StageDone sender that is no stage of the graph
_POLL_S = 0.05
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


# -- what is sent ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """One kind of fuzz message: how it is framed, on which connection, and what the receiver should do."""

    name: str
    group: Group
    what: str
    framing: Framing  # raw: sent as is; message: behind a MESSAGE envelope; signal: a bare link signal
    build: Callable[[Link, random.Random], list[bytes]]
    outcome: Callable[[Link], Outcome]
    lane: Lane = "marked"  # marked: after the connection's marker; unmarked: never a marker; gap: bad lseq

    def available(self, link: Link) -> bool:
        """False when the link cannot show this kind (``unaccepted`` on a link that accepts every type)."""
        return self.name != "unaccepted" or _unaccepted_type(link) is not None


def _evil_frame() -> Frame:
    return Frame(EVIL, 0, 0.0, 0.0, np.zeros((4, 4, 3), np.uint8))


def _evil_crops() -> PersonCrops:
    tracks = Tracks(
        np.array([1], np.int64),
        np.array([[0, 0, 2, 2]], np.float32),
        np.array([0.9], np.float32),
        np.array([0], np.uint8),
    )
    return PersonCrops(EVIL, 0, 0.0, 0.0, (4, 4), tracks, np.zeros((1, 2, 2, 3), np.uint8))


_DATA_BUILDERS: dict[str, Callable[[], Any]] = {"frame": _evil_frame, "person_crops": _evil_crops}


def _unaccepted_type(link: Link) -> str | None:
    """A data message type the link's receiver does not consume (None: it takes them all)."""
    return next((name for name in _DATA_BUILDERS if name not in link.accepts), None)


def _data_outcome(name: str) -> Callable[[Link], Outcome]:
    return lambda link: "delivered" if name in link.accepts else "unaccepted"


def _bytes(parts: Iterable[Any]) -> list[bytes]:
    return [bytes(memoryview(p).cast("B")) if not isinstance(p, bytes) else p for p in parts]


def _random_bytes(link: Link, rng: random.Random) -> list[bytes]:
    size = rng.randint(1, 64)
    body = bytes(rng.getrandbits(8) for _ in range(size))
    return [b"\x00" + body]  # never b"AM...": it must not parse as a link envelope by chance


def _header(**values: Any) -> bytes:
    return json.dumps(values, separators=(",", ":")).encode()


_FRAME_FIELDS = {
    "stream_id": EVIL,
    "seq": 0,
    "pts": 0.0,
    "capture_time": 0.0,
    "has_detections": False,
    "has_tracks": False,
}


def _fixed(*parts: bytes) -> Callable[[Link, random.Random], list[bytes]]:
    return lambda link, rng: list(parts)


def _always(outcome: Outcome) -> Callable[[Link], Outcome]:
    return lambda link: outcome


def _unaccepted(link: Link, rng: random.Random) -> list[bytes]:
    name = _unaccepted_type(link)
    if name is None:
        raise ValueError(f"link {link.name} accepts every data type; no unaccepted message to send")
    return _bytes(encode(_DATA_BUILDERS[name]()))


def _bad_signal(link: Link, rng: random.Random) -> list[bytes]:
    return [envelope(rng.choice([ACK, RESEND]), rng.randint(0, 1 << 32))]


# fmt: off
KINDS: tuple[Kind, ...] = (
    # -- malformed: every receiver must reject and count these ------------------------------------
    Kind("random_bytes", "malformed", "1-65 random bytes (no envelope)", "raw", _random_bytes,
         _always("malformed")),
    Kind("no_envelope", "malformed", "a valid wire Frame without the link envelope", "raw",
         lambda link, rng: _bytes(encode(_evil_frame())), _always("malformed")),
    Kind("envelope_only", "malformed", "a MESSAGE envelope and nothing else", "message", _fixed(),
         _always("malformed")),
    Kind("bad_json", "malformed", "a header that is not JSON", "message",
         _fixed(b"\x00\x01\x02 not json {"), _always("malformed")),
    Kind("bad_version", "malformed", "schema version 99", "message",
         _fixed(_header(v=99, type="frame", f=_FRAME_FIELDS, a=[])), _always("malformed")),
    Kind("unknown_type", "malformed", "type 'rm -rf'", "message",
         _fixed(_header(v=2, type="rm -rf", f={}, a=[])), _always("unknown_type")),
    Kind("wrong_array_length", "malformed", "image uint8[99,99,3] in a 5-byte buffer", "message",
         _fixed(_header(v=2, type="frame", f=_FRAME_FIELDS, a=[["image", "uint8", [99, 99, 3]]]), b"short"),
         _always("malformed")),
    Kind("extra_buffers", "malformed", "an EndOfStream followed by a buffer its header does not list",
         "message", lambda link, rng: [*_bytes(encode(EndOfStream(EVIL, "finished"))), b"extra"],
         _always("malformed")),
    Kind("unaccepted", "malformed", "a well-formed data type the receiver does not consume", "message",
         _unaccepted, _always("unaccepted")),
    Kind("bad_signal", "malformed", "an ACK or RESEND signal sent to the receiver", "signal", _bad_signal,
         _always("malformed")),
    Kind("stage_done_wrong_sender", "malformed", f"StageDone(sender={STRANGER!r})", "message",
         lambda link, rng: _bytes(encode(StageDone(STRANGER))), _always("forged")),
    # -- hostile: headers that the decoder must turn into MessageError, not crash on -------------
    Kind("deep_json", "hostile", "a header nested 20000 lists deep (RecursionError in json)", "message",
         _fixed(b'{"v":2,"type":"frame","f":' + b"[" * 20000 + b"]" * 20000 + b',"a":[]}'),
         _always("malformed")),
    Kind("huge_shape", "hostile", "an array dimension of 2**70 (OverflowError in numpy)", "message",
         _fixed(_header(v=2, type="frame", f=_FRAME_FIELDS, a=[["image", "uint8", [2**70, 1, 3]]]), b"x"),
         _always("malformed")),
    Kind("wrapped_shape", "hostile", "dimensions whose byte count wraps to 0 in int64 (reshape ValueError)",
         "message",
         _fixed(_header(v=2, type="frame", f=_FRAME_FIELDS, a=[["image", "uint8", [2**40, 2**40, 3]]]), b""),
         _always("malformed")),
    Kind("long_number", "hostile", "a 5000-digit integer in the header (int conversion limit)", "message",
         _fixed(b'{"v":2,"type":"stage_done","f":{"sender":"x"},"a":[],"n":' + b"9" * 5000 + b"}"),
         _always("malformed")),
    Kind("non_string_type", "hostile", "type ['frame'] (unhashable)", "message",
         _fixed(_header(v=2, type=["frame"], f={}, a=[])), _always("malformed")),
    # -- protocol: valid messages outside the link protocol; dropped, answered with a resend request
    Kind("unmarked", "protocol", "a valid Frame on a connection that never sent its marker", "message",
         lambda link, rng: _bytes(encode(_evil_frame())), _always("ignored"), lane="unmarked"),
    Kind("lseq_gap", "protocol", "a valid Frame whose link sequence number skips ahead", "message",
         lambda link, rng: _bytes(encode(_evil_frame())), _always("ignored"), lane="gap"),
    # -- forged: well-formed; an unauthenticated link cannot tell them from its sender's ----------
    Kind("frame", "forged", f"Frame of stream {EVIL!r}", "message",
         lambda link, rng: _bytes(encode(_evil_frame())), _data_outcome("frame")),
    Kind("person_crops", "forged", f"PersonCrops of stream {EVIL!r}", "message",
         lambda link, rng: _bytes(encode(_evil_crops())), _data_outcome("person_crops")),
    Kind("end_of_stream", "forged", f"EndOfStream of stream {EVIL!r}", "message",
         lambda link, rng: _bytes(encode(EndOfStream(EVIL, "finished"))), _always("delivered")),
    Kind("track_end", "forged", f"TrackEnd of stream {EVIL!r}", "message",
         lambda link, rng: _bytes(encode(TrackEnd(EVIL, 0, 0.0, np.array([1], np.int64)))),
         _always("delivered")),
    Kind("stage_done_upstream", "forged", "StageDone naming the link's real upstream (sent last)", "message",
         lambda link, rng: _bytes(encode(StageDone(link.upstream))), _always("delivered")),
)
# fmt: on
_BY_NAME = {kind.name: kind for kind in KINDS}
_SENTINEL = Kind(
    "sentinel",
    "malformed",
    "closes each connection: always counted",
    "raw",
    _fixed(b"\x00fuzz-links sentinel"),
    _always("malformed"),
)


def select_kinds(names: Sequence[str] | None, security: Security, forge: bool) -> list[Kind]:
    """The kinds to send: ``names`` (kind or group names), else the defaults for ``security``.

    Secured links get everything (nothing may get in). Insecure links get every kind they can recognise,
    and the forged ones only with ``forge`` (they are accepted by design there).
    """
    if names:
        chosen: list[Kind] = []
        for name in names:
            if name in GROUPS:
                chosen += [k for k in KINDS if k.group == name]
            elif name in _BY_NAME:
                chosen.append(_BY_NAME[name])
            else:
                raise ValueError(f"--kinds: no kind or group {name!r}; have {list(GROUPS) + list(_BY_NAME)}")
        return _interleave(list(dict.fromkeys(chosen)))
    if security == "secured" or forge:
        return _interleave(list(KINDS))
    return _interleave([k for k in KINDS if k.group != "forged"])


def _interleave(kinds: list[Kind]) -> list[Kind]:
    """One kind of each group in turn, so that a small ``--messages`` still covers every group."""
    queues = [[k for k in kinds if k.group == group] for group in GROUPS]
    out: list[Kind] = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def spread(kinds: Sequence[Kind], total: int) -> dict[str, int]:
    """``total`` messages over ``kinds`` as evenly as possible, in order (the first ones get the rest)."""
    if not kinds:
        return {}
    base, rest = divmod(total, len(kinds))
    return {kind.name: base + (1 if i < rest else 0) for i, kind in enumerate(kinds)}


# -- connecting from outside ----------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """The credentials one fuzz connection presents."""

    name: str
    mechanism: Literal["null", "plain", "curve"]
    username: str = ""
    password: str = ""
    public: bytes = b""
    secret: bytes = field(default=b"", repr=False)
    server_key: bytes = b""


def attempts_for(
    link: Link, security: Security, keys_dir: Path | None, stages: Sequence[str]
) -> list[Attempt]:
    """The credentials to try on ``link``: none of them is the link's sender's (see the module docstring)."""
    if security == "insecure":
        return [Attempt("none", "null")]
    public, secret = zmq.curve_keypair()
    if link.endpoint.startswith("ipc://"):
        return [
            Attempt("none", "null"),
            Attempt("plain_wrong_password", "plain", username=link.upstream, password="fuzz"),
            Attempt("plain_other_stage", "plain", username=link.downstream, password="fuzz"),
            Attempt("curve", "curve", public=public, secret=secret, server_key=zmq.curve_keypair()[0]),
        ]
    assert keys_dir is not None
    keys = KeyDir(keys_dir)
    server_key = keys.public(link.downstream).public
    out = [
        Attempt("none", "null"),
        Attempt("plain", "plain", username=link.upstream, password="fuzz"),
        Attempt("curve_foreign_key", "curve", public=public, secret=secret, server_key=server_key),
    ]
    sender = keys.key_name(link.upstream)
    other = next((s for s in stages if s != link.upstream and keys.key_name(s) != sender), None)
    if other is not None:  # a valid key of the graph, but not this link's sender's
        pair = keys.pair(other)
        assert pair.secret is not None
        out.append(
            Attempt(
                f"curve_key_of_{other}",
                "curve",
                public=pair.public,
                secret=pair.secret,
                server_key=server_key,
            )
        )
    return out


class _Connection:
    """One DEALER from outside to a link, with a monitor that tells whether its handshake went through."""

    def __init__(self, context: zmq.Context, endpoint: str, attempt: Attempt, lane: Lane) -> None:
        self.attempt = attempt
        self.lane = lane
        self.sock = context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.sndhwm = 0  # never block or drop: the tool decides how much is sent
        # one handshake per connection, so refusals = connections
        self.sock.setsockopt(zmq.RECONNECT_IVL, 60_000)
        if attempt.mechanism == "plain":
            self.sock.plain_username = attempt.username.encode()
            self.sock.plain_password = attempt.password.encode()
        elif attempt.mechanism == "curve":
            self.sock.curve_publickey = attempt.public
            self.sock.curve_secretkey = attempt.secret
            self.sock.curve_serverkey = attempt.server_key
        self._monitor = self.sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        self.sock.connect(endpoint)
        self.handshake: Literal["pending", "accepted", "refused"] = "pending"
        self.events: list[str] = []
        self.replies: collections.Counter[str] = collections.Counter()
        self.lseq = 0
        self.not_queued = 0

    def send(self, frames: list[bytes]) -> bool:
        """Queue one message; False when the socket has no connection to queue it on (a refused
        handshake drops the connection, and the next attempt is a minute away)."""
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=True)
            return True
        except zmq.Again:
            self.not_queued += 1
            return False

    def poll(self) -> None:
        """Take handshake events and whatever the receiver answered (resend requests, acknowledgements)."""
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor, flags=zmq.NOBLOCK)
            code = int(event["event"])
            self.events.append(_EVENT_NAMES.get(code, str(code)))
            if code == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake = "accepted"
            elif self.handshake == "pending":
                self.handshake = "refused"
        while self.sock.poll(0):
            parts = self.sock.recv_multipart(flags=zmq.NOBLOCK)
            kind = parts[0][2:3] if len(parts) == 1 and len(parts[0]) == 11 else b"?"
            self.replies[{ACK: "ack", RESEND: "resend_request"}.get(kind, "other")] += 1

    def close(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=0)


_EVENT_NAMES = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake_succeeded",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed_no_detail",
}


# -- one link -------------------------------------------------------------------------------------
@dataclass
class LinkReport:
    """What the fuzzer sent on one link and what the receiver made of it."""

    link: str
    endpoint: str
    accepts: list[str]
    sent: dict[str, int] = field(default_factory=dict)  # per kind (sentinels apart)
    sentinels: int = 0
    markers: int = 0
    expected: dict[str, int] = field(default_factory=dict)  # outcome -> messages (the receiver's view)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count (the downstream stage's delta)
    refused: int = 0  # amodal_rejected_total{reason="auth"} delta
    connections: list[dict[str, Any]] = field(default_factory=list)
    accepted_by_design: dict[str, int] = field(default_factory=dict)
    settled: bool = False  # the receiver accounted for everything within the settle time
    graph_running: bool = True  # the graph was still running when this link's fuzzing ended
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _rejected(runtime: EmbeddedRuntime, stage: str) -> dict[str, int]:
    return {
        reason: int(runtime.metrics.value("amodal_rejected_total", stage=stage, reason=reason))
        for reason in (*COUNTED, "auth")
    }


def _plan(link: Link, kinds: Sequence[Kind], total: int, rng: random.Random) -> list[Kind]:
    usable = [k for k in kinds if k.available(link)]
    counts = spread(usable, total)
    order = [k for k in usable for _ in range(counts[k.name])]
    rng.shuffle(order)
    # a StageDone of the real upstream ends the link: send it after everything else
    order.sort(key=lambda k: k.name == "stage_done_upstream")
    return order


def fuzz_link(
    runtime: EmbeddedRuntime,
    link: Link,
    kinds: Sequence[Kind],
    total: int,
    security: Security,
    attempts: Sequence[Attempt],
    connections: int = 3,
    seed: int = 0,
    settle_s: float = 5.0,
    running: Callable[[], bool] = lambda: True,
) -> LinkReport:
    """Send ``total`` messages of ``kinds`` into ``link`` of a running graph and account for them.

    Insecure: ``connections`` connections carry the marked messages (each starts with a marker), one
    more each the ``unmarked`` and ``lseq_gap`` ones. Secured: one connection per attempt, the messages
    dealt out over them in turn. Every connection ends with a sentinel. The report holds the deltas of
    the downstream stage's ``amodal_rejected_total`` while this link was fuzzed (a stage with several
    inputs: fuzz them one by one, as :func:`fuzz_graph` does).
    """
    started = time.monotonic()
    rng = random.Random(f"{seed}:{link.name}")
    report = LinkReport(link.name, link.endpoint, list(link.accepts))
    order = _plan(link, kinds, total, rng)
    before = _rejected(runtime, link.downstream)
    context = zmq.Context()
    conns: list[_Connection] = []
    try:
        if security == "secured":
            conns = [_Connection(context, link.endpoint, a, "marked") for a in attempts]
        else:
            conns = [
                _Connection(context, link.endpoint, attempts[0], "marked") for _ in range(max(1, connections))
            ]
            for lane in ("unmarked", "gap"):
                if any(k.lane == lane for k in order):
                    conns.append(_Connection(context, link.endpoint, attempts[0], lane))
        by_lane: dict[Lane, list[_Connection]] = collections.defaultdict(list)
        for conn in conns:
            by_lane[conn.lane].append(conn)
            if conn.lane in ("marked", "gap"):
                report.markers += conn.send([envelope(MARKER, 1)])
        turn = 0
        for kind in order:
            lane = kind.lane if security == "insecure" else "marked"
            pool = by_lane[lane]
            conn = pool[turn % len(pool)]
            turn += 1
            queued = _send(conn, kind, link, rng)
            report.sent[kind.name] = report.sent.get(kind.name, 0) + 1
            outcome = kind.outcome(link) if security == "insecure" else "refused"
            if not queued and security == "insecure":
                outcome = "ignored"  # never left the fuzzer (see the connection's not_queued)
            report.expected[outcome] = report.expected.get(outcome, 0) + 1
            if outcome == "delivered":
                report.accepted_by_design[kind.name] = report.accepted_by_design.get(kind.name, 0) + 1
        for conn in conns:
            if _send(conn, _SENTINEL, link, rng) and security == "insecure":
                report.expected["malformed"] = report.expected.get("malformed", 0) + 1
            report.sentinels += 1
        report.settled = _settle(runtime, link, conns, report, before, security, settle_s, running)
        report.graph_running = running()
    finally:
        for conn in conns:
            conn.poll()
            report.connections.append(
                {
                    "attempt": conn.attempt.name,
                    "lane": conn.lane,
                    "handshake": conn.handshake,
                    "events": conn.events,
                    "replies": dict(conn.replies),
                    "not_queued": conn.not_queued,
                }
            )
            conn.close()
        context.destroy(linger=0)
    after = _rejected(runtime, link.downstream)
    delta = {reason: after[reason] - before[reason] for reason in after}
    report.refused = delta.pop("auth")
    report.rejected = delta
    report.problems = _link_problems(report, security)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _send(conn: _Connection, kind: Kind, link: Link, rng: random.Random) -> bool:
    parts = kind.build(link, rng)
    if kind.framing == "raw" or kind.framing == "signal":
        return conn.send(parts)
    lseq = conn.lseq + 1 + 1000 * (conn.lane == "gap")  # the gap lane's numbers never follow its marker
    queued = conn.send([envelope(MESSAGE, lseq), *parts])
    conn.lseq += queued  # the receiver sees consecutive numbers only if nothing was left out
    return queued


def _settle(
    runtime: EmbeddedRuntime,
    link: Link,
    conns: Sequence[_Connection],
    report: LinkReport,
    before: dict[str, int],
    security: Security,
    settle_s: float,
    running: Callable[[], bool],
) -> bool:
    """Wait until the receiver accounted for everything (counts reached, every handshake decided)."""
    deadline = time.monotonic() + settle_s
    want = sum(report.expected.get(reason, 0) for reason in COUNTED)
    while time.monotonic() < deadline:
        for conn in conns:
            conn.poll()
        now = _rejected(runtime, link.downstream)
        if security == "secured":
            decided = all(conn.handshake != "pending" for conn in conns)
            if decided and now["auth"] - before["auth"] >= len(conns):
                return True
        elif sum(now[r] - before[r] for r in COUNTED) >= want:
            time.sleep(0.2)  # anything beyond the expected count shows up too
            return True
        if not running():
            return False
        time.sleep(_POLL_S)
    return False


def _link_problems(report: LinkReport, security: Security) -> list[str]:
    problems: list[str] = []
    if not report.settled and not report.graph_running:
        problems.append(
            f"{report.link}: the graph ended before the receiver accounted for the fuzz (a longer input, "
            "or fewer links/messages)"
        )
    if security == "secured":
        accepted = [c["attempt"] for c in report.connections if c["handshake"] == "accepted"]
        pending = [c["attempt"] for c in report.connections if c["handshake"] == "pending"]
        if accepted:
            problems.append(f"{report.link}: the receiver ACCEPTED the connection(s) {accepted}")
        if pending:
            problems.append(f"{report.link}: no handshake answer for {pending} (did the graph end first?)")
        if report.refused < len(report.connections):
            problems.append(
                f"{report.link}: {len(report.connections)} connections refused but only {report.refused} "
                "refusals counted (amodal_rejected_total{reason=auth})"
            )
        got_in = {r: n for r, n in report.rejected.items() if n}
        if got_in:
            problems.append(f"{report.link}: messages reached the receiver despite the refusals: {got_in}")
        return problems
    for reason in COUNTED:
        want, got = report.expected.get(reason, 0), report.rejected.get(reason, 0)
        if got < want:
            problems.append(
                f"{report.link}: {want} {reason} messages sent, {got} counted "
                f"(amodal_rejected_total{{reason={reason}}}); {want - got} unaccounted"
            )
        elif got > want:
            problems.append(f"{report.link}: {got} {reason} rejections counted for {want} sent")
    return problems


# -- graphs and runs ------------------------------------------------------------------------------
def demo_graph(frames: int = 60, fps: float = 20.0) -> dict[str, Any]:
    """src (test_source, streams a and b) -> relay (test_relay) -> sink (test_collect: rows.jsonl).

    The test stages of ``tests/test_pipeline_support.py`` (plugin ``tests.test_pipeline_support``, which
    needs pytest installed): deterministic, no video or model, and paced by ``fps`` so the graph runs
    long enough (``frames / fps`` seconds) to be fuzzed.
    """
    return {
        "plugins": ["tests.test_pipeline_support"],
        "shutdown": {"linger_s": 1.0, "idle_drain_s": 3.0, "drain_timeout_s": 20.0},
        "stages": [
            {
                "name": "src",
                "type": "test_source",
                "config": {"streams": ["a", "b"], "frames": frames, "fps": fps},
            },
            {"name": "relay", "type": "test_relay", "inputs": ["src"], "config": {}},
            {"name": "sink", "type": "test_collect", "inputs": ["relay"], "config": {"path": "rows.jsonl"}},
        ],
    }


def prepare_graph(
    raw: dict[str, Any], output_dir: Path, security: Security, transport: Transport, keys_dir: Path | None
) -> dict[str, Any]:
    """The raw graph, made fuzzable: embedded mode (the tool reads ``runtime.links`` and the metrics
    in-process), links on ``transport`` an outsider can reach, the security chosen, metrics port off,
    and its own ``output_dir``."""
    if transport == "ipc" and security == "insecure":
        raise ValueError(
            "--transport ipc is always secured (PLAIN with per-run secrets); use tcp for insecure"
        )
    data = copy.deepcopy(raw)
    data["mode"] = "embedded"
    data["output_dir"] = str(output_dir)
    data["transport"] = dict(data.get("transport") or {}, kind=transport)
    if transport == "tcp":
        data["security"] = {"insecure": True} if security == "insecure" else {"keys_dir": str(keys_dir)}
    else:
        data["security"] = {}
    data["metrics"] = dict(data.get("metrics") or {}, port=0)
    return data


@dataclass
class RunSummary:
    """How one run of the graph ended."""

    exit_code: int | None
    error: str | None
    seconds: float
    hung: bool = False  # it did not end within the timeout and was stopped, then aborted if needed
    thread_errors: list[str] = field(default_factory=list)  # exceptions that killed a runtime thread
    rejected: dict[str, int] = field(default_factory=dict)  # every stage's rejections, by reason

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@contextmanager
def _thread_errors() -> Iterator[list[str]]:
    """Record exceptions that end a thread (a reader thread that died is a silent hang otherwise)."""
    seen: list[str] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        seen.append(f"{name}: {args.exc_type.__name__}: {str(args.exc_value)[:200]}")
        previous(args)

    threading.excepthook = hook
    try:
        yield seen
    finally:
        threading.excepthook = previous


def run_graph(
    data: dict[str, Any],
    timeout_s: float,
    during: Callable[[EmbeddedRuntime, Callable[[], bool]], None] | None = None,
) -> RunSummary:
    """Run the graph (embedded) in a thread; ``during(runtime, running)`` runs once its links exist.

    A run that has not ended after ``timeout_s`` is asked to stop (sources stop, stages drain), and
    aborted if it does not drain within its ``shutdown.drain_timeout_s``.
    """
    graph = load_app_graph(data=data)
    runtime = EmbeddedRuntime(graph)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["report"] = runtime.run()
        except Exception as exc:  # noqa: BLE001 - reported, the tool decides the exit code
            box["exception"] = exc

    started = time.monotonic()
    with _thread_errors() as errors:
        thread = threading.Thread(target=target, name="fuzz-links-graph", daemon=True)
        thread.start()
        if during is not None:
            while not runtime.links and thread.is_alive() and time.monotonic() - started < timeout_s:
                time.sleep(0.01)
            if runtime.links and thread.is_alive():
                during(runtime, thread.is_alive)
        thread.join(max(0.0, timeout_s - (time.monotonic() - started)))
        hung = thread.is_alive()
        if hung:
            logger.error("the graph did not end within %.0fs; stopping it", timeout_s)
            runtime.request_stop()
            thread.join(graph.shutdown.drain_timeout_s + graph.shutdown.idle_drain_s + 5)
            if thread.is_alive():
                runtime.abort("fuzz_links: the graph hung")
                thread.join(10)
    rejected = {
        reason: int(runtime.metrics.value("amodal_rejected_total", reason=reason))
        for reason in (*COUNTED, "auth")
    }
    report = box.get("report")
    error = str(box["exception"]) if "exception" in box else (report.error if report is not None else None)
    return RunSummary(
        exit_code=report.exit_code if report is not None else None,
        error=error if report is not None or "exception" in box else "the graph thread did not end",
        seconds=round(time.monotonic() - started, 3),
        hung=hung,
        thread_errors=list(errors),
        rejected=rejected,
    )


# -- comparing outputs ----------------------------------------------------------------------------
def _strip(value: Any, ignore: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [_strip(v, ignore) for v in value]
    return value


def _jsonl_groups(path: Path, ignore: frozenset[str]) -> dict[str, list[Any]]:
    """Records per stream (``stream_id``, ``stream`` or ``eos`` key), in file order, minus ``ignore``."""
    groups: dict[str, list[Any]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            groups[""].append(line)
            continue
        key = ""
        if isinstance(record, dict):
            key = str(record.get("stream_id", record.get("stream", record.get("eos", ""))))
        groups[key].append(_strip(record, ignore))
    return dict(groups)


def _compare_jsonl(name: str, a: Path, b: Path, ignore: frozenset[str]) -> str | None:
    clean, fuzzed = _jsonl_groups(a, ignore), _jsonl_groups(b, ignore)
    for stream in sorted(set(clean) | set(fuzzed)):
        left, right = clean.get(stream, []), fuzzed.get(stream, [])
        for i, (x, y) in enumerate(zip(left, right, strict=False)):
            if x != y:
                return f"{name}: stream {stream!r} record {i}: clean {_short(x)} != fuzzed {_short(y)}"
        if len(left) != len(right):
            longer, which = (left, "clean") if len(left) > len(right) else (right, "fuzzed")
            extra = longer[min(len(left), len(right))]
            return (
                f"{name}: stream {stream!r}: {len(left)} records in the clean run, {len(right)} in the "
                f"fuzzed run; first extra ({which}): {_short(extra)}"
            )
    return None


def _table_rows(path: Path, ignore: frozenset[str]) -> dict[str, list[dict[str, Any]]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        out: dict[str, list[dict[str, Any]]] = {}
        for table in tables:
            cursor = db.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from sqlite_master
            columns = [c[0] for c in cursor.description]
            rows = [{c: v for c, v in zip(columns, row, strict=True) if c not in ignore} for row in cursor]
            out[table] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
        return out
    finally:
        db.close()


def _compare_db(name: str, a: Path, b: Path, ignore: frozenset[str]) -> str | None:
    clean, fuzzed = _table_rows(a, ignore), _table_rows(b, ignore)
    if set(clean) != set(fuzzed):
        return f"{name}: tables differ: clean {sorted(clean)} vs fuzzed {sorted(fuzzed)}"
    for table in sorted(clean):
        left, right = clean[table], fuzzed[table]
        if left == right:
            continue
        key = lambda r: json.dumps(r, sort_keys=True, default=str)  # noqa: E731
        only_left = collections.Counter(map(key, left)) - collections.Counter(map(key, right))
        only_right = collections.Counter(map(key, right)) - collections.Counter(map(key, left))
        first = (
            f"only in fuzzed: {next(iter(only_right))}"
            if only_right
            else f"only in clean: {next(iter(only_left))}"
        )
        return f"{name}: table {table}: {len(left)} rows clean, {len(right)} fuzzed; {_short(first)}"
    return None


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def compare_outputs(
    clean: Path, fuzzed: Path, ignore: Iterable[str] = DEFAULT_IGNORED_FIELDS
) -> tuple[list[str], str | None]:
    """(files compared, first difference or None) for every ``*.jsonl`` and ``*.db`` under the two folders."""
    ignored = frozenset(ignore)
    pattern = ("*.jsonl", "*.db")
    left = {str(p.relative_to(clean)) for g in pattern for p in clean.rglob(g)}
    right = {str(p.relative_to(fuzzed)) for g in pattern for p in fuzzed.rglob(g)}
    files = sorted(left | right)
    for name in files:
        if name not in left or name not in right:
            return files, f"{name}: only in the {'fuzzed' if name in right else 'clean'} run"
        compare = _compare_jsonl if name.endswith(".jsonl") else _compare_db
        difference = compare(name, clean / name, fuzzed / name, ignored)
        if difference is not None:
            return files, difference
    return files, None


# -- the whole tool -------------------------------------------------------------------------------
def fuzz_graph(
    raw: dict[str, Any],
    workdir: Path,
    security: Security = "secured",
    transport: Transport = "tcp",
    messages: int = 20,
    kinds: Sequence[Kind] | None = None,
    forge: bool = False,
    connections: int = 3,
    seed: int = 0,
    settle_s: float = 5.0,
    timeout_s: float | None = None,
    ignore: Iterable[str] = DEFAULT_IGNORED_FIELDS,
    check_baseline: bool = False,
    source: str = "config",
) -> dict[str, Any]:
    """Clean run, fuzzed run, comparison: the JSON report (``ok`` and ``problems`` decide the exit code).

    ``timeout_s`` bounds each run (default: three times the clean run plus 30 s for the fuzzed one).
    """
    kinds = list(kinds) if kinds is not None else select_kinds(None, security, forge)
    keys_dir = None
    if security == "secured" and transport == "tcp":
        keys_dir = workdir / "keys"
        names = [s["name"] for s in raw.get("stages", []) if isinstance(s, dict) and "name" in s]
        make_keys(keys_dir, names, overwrite=True)
    graphs = {
        name: prepare_graph(raw, workdir / name, security, transport, keys_dir)
        for name in ("clean", "baseline", "fuzzed")
    }
    stage_names = [s["name"] for s in graphs["clean"]["stages"]]
    limit = timeout_s if timeout_s is not None else 600.0
    report: dict[str, Any] = {
        "tool": "fuzz_links",
        "config": source,
        "security": security,
        "transport": transport,
        "messages_per_link": messages,
        "kinds": [k.name for k in kinds],
        "forge": any(k.group == "forged" for k in kinds),
        "connections": connections,
        "seed": seed,
        "ignored_fields": sorted(set(ignore)),
        "workdir": str(workdir),
    }
    problems: list[str] = []
    clean = run_graph(graphs["clean"], limit)
    report["clean_run"] = clean.to_dict()
    if clean.exit_code != 0 or clean.hung:
        problems.append(f"the clean run failed (exit {clean.exit_code}): {clean.error}")
        report.update(ok=False, problems=problems, links={}, outputs_equal=None, first_difference=None)
        return report
    if check_baseline:
        baseline = run_graph(graphs["baseline"], limit)
        _, difference = compare_outputs(workdir / "clean", workdir / "baseline", ignore)
        report["baseline_run"] = dict(
            baseline.to_dict(), outputs_equal=difference is None, first_difference=difference
        )
        if difference is not None:
            problems.append(f"two clean runs already differ ({difference}): the graph is not deterministic")
            report.update(
                ok=False,
                problems=problems,
                links={},
                outputs_equal=None,
                first_difference=None,
                not_deterministic=True,
            )
            return report
    links: dict[str, LinkReport] = {}

    def during(runtime: EmbeddedRuntime, running: Callable[[], bool]) -> None:
        for link in runtime.links:
            attempts = attempts_for(link, security, keys_dir, stage_names)
            links[link.name] = fuzz_link(
                runtime, link, kinds, messages, security, attempts, connections, seed, settle_s, running
            )

    fuzz_limit = timeout_s if timeout_s is not None else 3 * clean.seconds + 30
    fuzzed = run_graph(graphs["fuzzed"], fuzz_limit, during)
    report["fuzzed_run"] = fuzzed.to_dict()
    report["links"] = {name: r.to_dict() for name, r in links.items()}
    files, difference = compare_outputs(workdir / "clean", workdir / "fuzzed", ignore)
    report.update(files_compared=files, outputs_equal=difference is None, first_difference=difference)
    if not links:
        problems.append("the graph ended before its links could be fuzzed (use a longer input)")
    for name, link_report in links.items():
        problems += link_report.problems
        if security == "insecure" and link_report.accepted_by_design:
            problems.append(
                f"{name}: forged well-formed messages were ACCEPTED (by design: insecure links have no "
                f"authentication): {link_report.accepted_by_design}"
            )
    if fuzzed.hung:
        problems.append("the fuzzed run hung: it did not end on its own and had to be stopped")
    if fuzzed.exit_code != 0:
        problems.append(f"the fuzzed run exited {fuzzed.exit_code}: {fuzzed.error}")
    if fuzzed.thread_errors:
        problems.append(f"runtime threads died: {fuzzed.thread_errors}")
    if difference is not None:
        problems.append(f"outputs changed: {difference}")
    report["ok"] = not problems
    report["problems"] = problems
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fuzz_links",
        description="Send malformed and forged messages into every link of a running graph and check that "
        "its outputs do not change (see the module docstring and docs/runtime.md, 'Fuzzing links').",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="graph YAML; its sources must be deterministic (files, not cameras)")
    what.add_argument(
        "--demo",
        action="store_true",
        help="the test stages (tests/test_pipeline_support.py): src -> relay -> sink",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, as for amodal run (STAGE.key=value or a top-level key)",
    )
    parser.add_argument(
        "--security",
        choices=["secured", "insecure"],
        default="secured",
        help="secured: CURVE keys on tcp (PLAIN secrets on ipc); insecure: plain tcp",
    )
    parser.add_argument("--transport", choices=["tcp", "ipc"], default="tcp")
    parser.add_argument("--messages", type=int, default=20, metavar="N", help="fuzz messages per link")
    parser.add_argument(
        "--kinds",
        nargs="+",
        metavar="KIND",
        help=f"kinds or groups {list(GROUPS)} (default: all when secured; all but forged when insecure)",
    )
    parser.add_argument(
        "--forge",
        action="store_true",
        help="insecure: send the forged well-formed kinds too (they are accepted by design)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=3,
        help="insecure: connections that carry the marked messages per link",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait per link for the receiver to account for what was sent",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="per run (default: 600 s for the clean run, 3 x clean + 30 s for the fuzzed)",
    )
    parser.add_argument(
        "--ignore-field",
        action="append",
        default=[],
        metavar="NAME",
        help=f"another field/column to leave out of the comparison "
        f"(always: {', '.join(DEFAULT_IGNORED_FIELDS)})",
    )
    parser.add_argument(
        "--check-baseline",
        action="store_true",
        help="run the clean graph twice first; exit 2 when even those differ",
    )
    parser.add_argument("--demo-frames", type=int, default=60, help="--demo: frames per stream")
    parser.add_argument("--demo-fps", type=float, default=20.0, help="--demo: frames per second")
    parser.add_argument("--workdir", help="keep keys and both output folders here (default: a temp folder)")
    parser.add_argument("--out", help="write the JSON report here (default: stdout)")
    parser.add_argument("--log-level", default="ERROR", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if args.messages < 0 or args.connections < 1:
        parser.error("--messages must be >= 0 and --connections >= 1")
    if args.transport == "ipc" and args.security == "insecure":
        parser.error("--transport ipc is always secured; use --transport tcp with --security insecure")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.demo:
            raw, source = demo_graph(args.demo_frames, args.demo_fps), "demo"
        else:
            raw, source = load_yaml(args.config), args.config
        raw = apply_stage_overrides(raw, args.sets)
        kinds = select_kinds(args.kinds, args.security, args.forge)
    except (ConfigError, ValueError) as exc:
        print(f"fuzz_links: error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fuzz-links-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            report = fuzz_graph(
                raw,
                workdir,
                args.security,
                args.transport,
                args.messages,
                kinds,
                args.forge,
                args.connections,
                args.seed,
                args.settle,
                args.timeout,
                (*DEFAULT_IGNORED_FIELDS, *args.ignore_field),
                args.check_baseline,
                source,
            )
        except (ConfigError, ValueError) as exc:
            print(f"fuzz_links: error: {exc}", file=sys.stderr)
            return 2
        if not args.workdir:
            report["workdir"] = None  # a temporary folder, removed now
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    for problem in report["problems"]:
        print(f"fuzz_links: {problem}", file=sys.stderr)
    if report.get("not_deterministic"):
        return 2
    verdict = "ok" if report["ok"] else "FAILED"
    print(
        f"fuzz_links: {verdict}: outputs_equal={report['outputs_equal']} links={len(report['links'])}",
        file=sys.stderr,
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
