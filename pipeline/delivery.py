"""Acknowledged delivery on a link: the bookkeeping of who has what, without sockets.

Why: a stage process that is killed loses whatever sits in its memory (its inbox, the message it is
working on, its send queue). ZeroMQ alone cannot tell the sender which of the messages it handed over
were lost, so every link numbers its messages and the receiver acknowledges them.

The guarantee (documented in docs/runtime.md, "Delivery"):

* ``block`` links are **at-least-once** end to end: the sender keeps every message until the receiver
  acknowledges it, and the receiver acknowledges a message only once it is *done*: the stage has
  processed it and every message that processing sent on has been acknowledged downstream in turn
  (a sink: committed). So an acknowledgement that reaches a source means "durable in every sink". A
  restarted receiver asks for everything unacknowledged again; duplicates that this creates are
  recognised and skipped (by link sequence number on one connection, by ``(stream, seq)`` across a
  restarted sender, and by the sinks against what they committed), which makes the sinks
  **effectively exactly-once**.
* ``drop_oldest`` links keep no data for resending (live video is not worth queuing), but they number
  it too: data a restarted receiver never got is counted as lost (``amodal_lost_total``), and control
  messages (EndOfStream, StageDone, TrackEnd) are resent like on a ``block`` link, so they are never
  lost.

The protocol on a link (DEALER sender -> ROUTER receiver): every message travels behind an 11-byte
envelope ``b"AM" | kind | lseq``. A sender starts every connection with a *marker* (kind ``R``: "my
messages continue at lseq N"). A receiver that gets anything else from a peer it has no marker for (it
was restarted, or the sender's reconnect got a new identity) drops it and answers ``Q`` (resend
request); the sender then sends a marker for its oldest unacknowledged message followed by all of
them, in order. Acknowledgements (kind ``A``) are cumulative: "everything up to lseq N is done". A
sender pings (kind ``P``, carrying the last acknowledgement it saw) every ``delivery.ping_s``: a
heartbeat that tells a receiver its upstream is alive though busy, lets a restarted receiver learn about
it when nothing new is sent, and is answered with the latest acknowledgement if the sender missed it.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MESSAGE",
    "MARKER",
    "RESEND",
    "ACK",
    "PING",
    "envelope",
    "parse_envelope",
    "Sent",
    "SendWindow",
    "ReceiveWindow",
]

MESSAGE, MARKER, RESEND, ACK, PING = b"M", b"R", b"Q", b"A", b"P"
_KINDS = frozenset((MESSAGE, MARKER, RESEND, ACK, PING))
_ENVELOPE = struct.Struct(">2scQ")  # magic, kind, lseq
ENVELOPE_BYTES = _ENVELOPE.size


def envelope(kind: bytes, lseq: int = 0) -> bytes:
    """The 11-byte frame in front of every message and protocol signal on a link."""
    return _ENVELOPE.pack(b"AM", kind, lseq)


def parse_envelope(frame: bytes | memoryview) -> tuple[bytes, int] | None:
    """(kind, lseq), or None when ``frame`` is not an envelope (garbage from a foreign peer)."""
    if len(frame) != ENVELOPE_BYTES:
        return None
    magic, kind, lseq = _ENVELOPE.unpack(bytes(frame))
    if magic != b"AM" or kind not in _KINDS:
        return None
    return kind, lseq


@dataclass
class Sent:
    """One numbered message the sender has not seen acknowledged yet."""

    lseq: int
    parts: list[Any] | None  # None: not kept for resending (drop_oldest data)
    stream_id: str | None
    seq: int | None  # the data message's frame number; None for control messages
    kind: str  # wire type name
    nbytes: int


class SendWindow:
    """The sender's side: numbers messages and keeps those not yet acknowledged."""

    def __init__(self) -> None:
        self.next_lseq = 1
        self.acked = 0
        self._entries: collections.deque[Sent] = collections.deque()
        self.kept_bytes = 0

    def add(self, parts: list[Any], keep: bool, kind: str, stream_id: str | None, seq: int | None) -> int:
        lseq = self.next_lseq
        self.next_lseq += 1
        nbytes = sum(_nbytes(part) for part in parts) if keep else 0
        self._entries.append(Sent(lseq, parts if keep else None, stream_id, seq, kind, nbytes))
        self.kept_bytes += nbytes
        return lseq

    @property
    def last_lseq(self) -> int:
        return self.next_lseq - 1

    def ack(self, lseq: int) -> list[Sent]:
        """Forget everything up to ``lseq``; returns what was released (oldest first)."""
        released = []
        while self._entries and self._entries[0].lseq <= lseq:
            entry = self._entries.popleft()
            self.kept_bytes -= entry.nbytes
            released.append(entry)
        self.acked = max(self.acked, min(lseq, self.last_lseq))
        return released

    def unacked(self) -> int:
        return len(self._entries)

    def resend(self) -> tuple[int, list[Sent], list[Sent]]:
        """For a resend request: (marker lseq, entries to send again, entries lost for good).

        Entries that were not kept (drop_oldest data) cannot be sent again: they are given up, and the
        caller counts them as lost. The kept ones keep their numbers, so the receiver's cumulative
        acknowledgements still line up.
        """
        lost = [e for e in self._entries if e.parts is None]
        kept = [e for e in self._entries if e.parts is not None]
        self._entries = collections.deque(kept)
        start = kept[0].lseq if kept else self.next_lseq
        return start, kept, lost


class ReceiveWindow:
    """The receiver's side for one sender connection (one peer identity).

    ``expect`` is the next lseq in order; ``offer`` says what to do with an arriving message; ``done``
    marks a delivered message finished; ``watermark`` is the cumulative acknowledgement to send.
    """

    def __init__(self, start: int) -> None:
        self.expect = start
        self._pending: collections.OrderedDict[int, bool] = collections.OrderedDict()
        self.watermark = start - 1
        self.acked = start - 1  # last acknowledgement actually sent

    @property
    def idle(self) -> bool:
        """Nothing of this sender is in progress here."""
        return not self._pending

    def resync(self, lseq: int) -> None:
        """A marker on a connection we know: what follows from ``lseq`` on may repeat what we have (those
        are duplicates); numbers it skips were given up by the sender (drop_oldest data)."""
        if lseq > self.expect:
            self.expect = lseq
            if not self._pending:
                self.watermark = max(self.watermark, lseq - 1)

    def offer(self, lseq: int) -> str:
        """'new' (deliver it), 'duplicate' (already had it: skip) or 'gap' (some were lost: resync)."""
        if lseq < self.expect:
            return "duplicate"
        if lseq > self.expect:
            return "gap"
        self.expect += 1
        self._pending[lseq] = False
        return "new"

    def done(self, lseq: int) -> None:
        if lseq in self._pending:
            self._pending[lseq] = True
        while self._pending:
            first, finished = next(iter(self._pending.items()))
            if not finished:
                break
            self._pending.popitem(last=False)
            self.watermark = first


def _nbytes(part: Any) -> int:
    if isinstance(part, bytes | bytearray):
        return len(part)
    if isinstance(part, memoryview):
        return part.nbytes
    nbytes = getattr(part, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    return len(memoryview(part).cast("B")) if part is not None else 0
