"""ZeroMQ links between stages: one DEALER -> ROUTER socket pair per link, with a per-link policy.

* Sending (:class:`Outlet`): ``copy=False`` multipart sends of the encoded message behind a link
  envelope (pipeline.delivery: numbered, acknowledged, sent again to a restarted receiver). ``block``
  waits (behind a POLLOUT poll, so an abort can interrupt it) while the link or the window of
  unacknowledged messages is full: nothing is lost. ``drop_oldest`` never lets a slow consumer stall
  the producer: if the peer stops reading altogether (its process died) the new message is dropped
  and counted instead of blocking.
* Receiving (:class:`Inputs`): a reader thread per stage polls every input socket, checks the
  envelope (in order, once: duplicates and gaps are handled there), decodes (zero-copy,
  ``np.frombuffer`` on the zmq frame buffers) and queues messages in one bounded inbox; it also sends
  the acknowledgements for what the stage reports done (``Inputs.done``). On a ``block`` link a full
  inbox stops the reader from reading that socket, so backpressure reaches the sender through the
  ZeroMQ high-water marks. On a ``drop_oldest`` link the reader keeps draining the socket and evicts
  the oldest queued *data* message of that link (control messages, ``messages.CONTROL_TYPES``:
  EndOfStream, StageDone, TrackEnd, are never dropped), counting each eviction: queued latency is
  bounded by ``hwm``. Malformed, unknown or unaccepted messages are counted and logged once per kind,
  never raised.
* Who may connect is decided by ``pipeline.security.LinkGuard`` (``guard``), before bind/connect.

Sockets are closed with ``linger=0`` on abort, and with a short linger (``shutdown.linger_s``, set
before connecting, which is when libzmq reads it) on a clean exit so the final EndOfStream/StageDone
of a link is not thrown away.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import zmq

from pipeline.delivery import (
    ACK,
    MARKER,
    MESSAGE,
    PING,
    RESEND,
    ReceiveWindow,
    SendWindow,
    Sent,
    envelope,
    parse_envelope,
)
from pipeline.graph_settings import DeliveryConfig
from pipeline.messages import CONTROL_TYPES, DATA_TYPES
from pipeline.metrics import RuntimeMetrics
from pipeline.wire import decode, encode, wire_names

__all__ = ["Link", "Outlet", "Inputs", "Received", "OnceLog", "POLL_S", "bind_input"]

logger = logging.getLogger(__name__)

POLL_S = 0.05  # every blocking wait wakes this often to look at stop/abort flags
_CONTROL_NAMES = frozenset(wire_names(CONTROL_TYPES))
_DATA_NAMES = frozenset(wire_names(DATA_TYPES))
_MAX_PEERS = 8  # sender connections a link remembers (a restarted sender's old ones are forgotten)


@dataclass(frozen=True)
class Link:
    """One resolved edge of the graph: who sends, who receives, where, and under which policy."""

    upstream: str
    downstream: str
    endpoint: str
    policy: str
    hwm: int
    accepts: tuple[str, ...]  # wire type names the downstream stage consumes (control always passes)

    @property
    def name(self) -> str:
        return f"{self.upstream}->{self.downstream}"


class OnceLog:
    """Log a warning once per kind of problem (a flood of garbage must not flood the log)."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def warn(self, kind: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        with self._lock:
            if kind in self._seen:
                return
            self._seen.add(kind)
        self._log.warning(msg + " (further ones of this kind are only counted)", *args, exc_info=exc_info)


class Outlet:
    """The sending end of one link: a DEALER socket and the window of unacknowledged messages.

    Not thread-safe: the runner calls ``send`` and ``service`` under one lock.
    """

    def __init__(
        self,
        context: zmq.Context,
        link: Link,
        metrics: RuntimeMetrics,
        linger_s: float = 2.0,
        delivery: DeliveryConfig | None = None,
        guard: Any = None,
    ) -> None:
        self.link = link
        self._metrics = metrics
        self._delivery = delivery or DeliveryConfig()
        self._socket = context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.SNDHWM, link.hwm)
        self._socket.setsockopt(zmq.RCVHWM, 0)  # acknowledgements are tiny; never drop one
        # LINGER must be set before connect(): libzmq copies it into the connection's session then, and
        # a session with linger 0 throws away the last messages (EndOfStream, StageDone) on close.
        self._socket.setsockopt(zmq.LINGER, int(linger_s * 1000))
        if guard is not None:
            guard.client(self._socket, link)
        self._socket.connect(link.endpoint)
        self._wants = set(link.accepts)
        self.window = SendWindow()
        self._marker_due: int | None = 1  # every connection starts with a marker
        self._last_ping = 0.0
        #: called with the entries an acknowledgement released (oldest first)
        self.on_release: Callable[[list[Sent]], None] | None = None
        #: data lost for good per stream (a restarted receiver on a drop_oldest link)
        self.lost: collections.Counter[str] = collections.Counter()
        #: messages a block link gave up on (its receiver took nothing for give_up_s after a stop)
        self.gave_up = 0

    @property
    def acked(self) -> int:
        """Everything this outlet sent up to this link sequence number is done downstream."""
        return self.window.acked

    @property
    def last_lseq(self) -> int:
        return self.window.last_lseq

    def wants(self, type_name: str) -> bool:
        return type_name in self._wants or type_name in _CONTROL_NAMES

    def send(
        self,
        parts: list[Any],
        kind: str,
        stream_id: str | None,
        seq: int | None,
        abort: threading.Event,
        stop: threading.Event | None = None,
        give_up_s: float = 10.0,
    ) -> bool:
        """Send one encoded message; False if it was dropped (drop_oldest, peer not reading) or aborted.

        A ``block`` send waits while the link is full or the window of unacknowledged messages is, as long
        as the receiver is alive; once a stop was requested, a receiver that takes nothing for
        ``give_up_s`` is considered gone and the message is dropped (counted), so a dead downstream
        process cannot keep its upstream from shutting down.
        """
        self.service(abort)
        is_data = kind in _DATA_NAMES
        if is_data and self.link.policy == "drop_oldest":
            if not self._send_marker(abort, stop, give_up_s, wait=False):
                self._metrics.dropped.labels(stage=self.link.upstream, link=self.link.name).inc()
                return False
            # The receiver drains this socket continuously into its bounded inbox (where the oldest
            # are dropped), so a full socket means it fell behind for a moment or is gone: wait one
            # poll interval at most, then drop this message rather than stall the producer.
            lseq = self.window.next_lseq
            for attempt in range(2):
                try:
                    frames = [envelope(MESSAGE, lseq), *parts]
                    self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    self.window.add(parts, False, kind, stream_id, seq)
                    return True
                except zmq.Again:
                    if attempt == 0:
                        self._socket.poll(int(POLL_S * 1000), zmq.POLLOUT)
            self._metrics.dropped.labels(stage=self.link.upstream, link=self.link.name).inc()
            return False
        if not self._wait_for_window(abort, stop, give_up_s):
            return False
        lseq = self.window.add(parts, True, kind, stream_id, seq)
        return self._send_marker(abort, stop, give_up_s) and self._put(
            [envelope(MESSAGE, lseq), *parts], abort, stop, give_up_s
        )

    def service(self, abort: threading.Event) -> None:
        """Take acknowledgements and resend requests; ping a receiver that has gone quiet."""
        while self._socket.poll(0, zmq.POLLIN):
            try:
                parts = self._socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            signal = parse_envelope(parts[0]) if len(parts) == 1 else None
            if signal is None:
                continue
            kind, lseq = signal
            if kind == ACK:
                released = self.window.ack(lseq)
                if released and self.on_release is not None:
                    self.on_release(released)
            elif kind == RESEND:
                self._resend(abort)
        if self._marker_due is not None:  # open the connection even before there is anything to send
            self._send_marker(abort, None, 0.0, wait=False)
        now = time.monotonic()
        # A heartbeat: the receiver learns this sender is alive even while it is busy (so a stop does
        # not make it give up on a slow upstream), and a restarted receiver learns it exists.
        if self._marker_due is None and now - self._last_ping > self._delivery.ping_s:
            self._last_ping = now
            try:
                self._socket.send(envelope(PING, self.window.acked), flags=zmq.NOBLOCK)
            except zmq.Again:
                pass

    def _resend(self, abort: threading.Event) -> None:
        """The receiver lost its state (restarted): start over from the oldest unacknowledged message."""
        start, kept, lost = self.window.resend()
        for entry in lost:
            self.lost[entry.stream_id or ""] += 1
            self._metrics.lost.labels(stage=self.link.upstream, link=self.link.name).inc()
        if lost:
            logger.warning(
                "link=%s receiver restarted: %d drop_oldest messages it never got are lost (counted)",
                self.link.name,
                len(lost),
            )
        if kept:
            logger.info("link=%s receiver restarted: resending %d messages", self.link.name, len(kept))
        for entry in kept:  # an EndOfStream sent again carries what its stream just lost
            if entry.kind == "end_of_stream" and self.lost.get(entry.stream_id or ""):
                eos = decode(entry.parts)
                entry.parts = encode(replace(eos, lost=eos.lost + self.lost.pop(entry.stream_id or "")))
        self._marker_due = start
        expect = start
        for entry in kept:
            assert entry.parts is not None
            if entry.lseq != expect:  # numbers of lost entries in between: the receiver skips them
                self._marker_due = entry.lseq
            if not self._send_marker(abort, None, 0.0) or not self._put(
                [envelope(MESSAGE, entry.lseq), *entry.parts], abort, None, 0.0
            ):
                return  # aborted; a later request starts over
            expect = entry.lseq + 1
        if expect != self.window.next_lseq:  # lost entries after the last kept one
            self._marker_due = self.window.next_lseq

    def _send_marker(
        self, abort: threading.Event, stop: threading.Event | None, give_up_s: float, wait: bool = True
    ) -> bool:
        if self._marker_due is None:
            return True
        frames = [envelope(MARKER, self._marker_due)]
        if wait:
            sent = self._put(frames, abort, stop, give_up_s)
        else:
            try:
                self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
                sent = True
            except zmq.Again:
                sent = False
        if sent:
            self._marker_due = None
        return sent

    def _wait_for_window(
        self, abort: threading.Event, stop: threading.Event | None, give_up_s: float
    ) -> bool:
        """Wait while the receiver holds too much unacknowledged (what a crash would make us resend)."""
        cfg = self._delivery
        blocked_since: float | None = None
        while self.window.unacked() >= cfg.window or self.window.kept_bytes >= cfg.window_mb * 2**20:
            if abort.is_set():
                return False
            self._socket.poll(int(POLL_S * 1000), zmq.POLLIN)
            self.service(abort)
            if stop is not None and stop.is_set():
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > give_up_s:
                    return self._give_up(give_up_s)
        return True

    def _put(
        self, frames: list[Any], abort: threading.Event, stop: threading.Event | None, give_up_s: float
    ) -> bool:
        """Blocking send behind a POLLOUT poll (an abort interrupts it), taking acknowledgements meanwhile."""
        blocked_since: float | None = None
        while not abort.is_set():
            if self._socket.poll(int(POLL_S * 1000), zmq.POLLOUT):
                try:
                    self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    return True
                except zmq.Again:
                    pass
            if stop is not None and stop.is_set():
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > give_up_s:
                    return self._give_up(give_up_s)
        return False

    def _give_up(self, give_up_s: float) -> bool:
        self.gave_up += 1
        self._metrics.lost.labels(stage=self.link.upstream, link=self.link.name).inc()
        logger.warning(
            "link=%s receiver took nothing for %.1fs after stop; dropping", self.link.name, give_up_s
        )
        return False

    def close(self, abort: bool = False) -> None:
        """Close; pending messages keep flushing for up to the linger time unless aborting."""
        if abort:
            self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.close()


class Received(NamedTuple):
    """One delivered message: the link it came on and the token that acknowledges it (``Inputs.done``)."""

    link: str
    message: Any
    token: tuple[str, bytes, int]


class Inputs:
    """All input links of one stage: bound ROUTER sockets, a reader thread and a bounded inbox.

    The reader thread owns the sockets: it also sends the acknowledgements for the tokens the stage
    thread reports done, and the resend requests to peers it has lost track of.
    """

    def __init__(
        self,
        context: zmq.Context,
        stage: str,
        links: list[Link],
        accepts: tuple[type, ...],
        metrics: RuntimeMetrics,
        bound: dict[str, zmq.Socket] | None = None,
        guard: Any = None,
    ) -> None:
        self.stage = stage
        self.links = {link.name: link for link in links}
        self._accepts = tuple(accepts) + CONTROL_TYPES
        self._metrics = metrics
        self._once = OnceLog(logger)
        self._sockets: dict[str, zmq.Socket] = {}
        for link in links:
            sock = (bound or {}).get(link.name)
            if sock is None:
                sock = bind_input(context, link, guard)
            self._sockets[link.name] = sock
        self._items: collections.deque[Received] = collections.deque()
        self._counts = {name: 0 for name in self.links}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read_loop, name=f"{stage}-inputs", daemon=True)
        self.last_activity = time.monotonic()
        # reader-thread state: per link, the receive window of each sender connection (peer identity)
        self._peers: dict[str, collections.OrderedDict[bytes, ReceiveWindow]] = {
            name: collections.OrderedDict() for name in self.links
        }
        self._asked: dict[tuple[str, bytes], float] = {}
        self._done: list[tuple[str, bytes, int]] = []
        # done() wakes the reader (blocked in its poll) so acknowledgements leave at once
        wake = f"inproc://amodal-wake-{id(self):x}"
        self._wake_rx = context.socket(zmq.PULL)
        self._wake_rx.bind(wake)
        self._wake_tx = context.socket(zmq.PUSH)
        self._wake_tx.setsockopt(zmq.SNDHWM, 1)
        self._wake_tx.connect(wake)

    def start(self) -> None:
        self._thread.start()

    # -- reader thread ------------------------------------------------------------------------
    def _read_loop(self) -> None:
        poller_socks = {sock: name for name, sock in self._sockets.items()}
        while not self._closed:
            self._acknowledge()
            with self._cond:
                active = [
                    sock
                    for sock, name in poller_socks.items()
                    if self.links[name].policy == "drop_oldest" or self._counts[name] < self.links[name].hwm
                ]
                if not active:
                    self._cond.wait(POLL_S)
                    continue
            poller = zmq.Poller()
            for sock in active:
                poller.register(sock, zmq.POLLIN)
            poller.register(self._wake_rx, zmq.POLLIN)
            try:
                ready = poller.poll(int(POLL_S * 1000))
            except zmq.ZMQError:
                if self._closed:
                    return
                raise
            for sock, _ in ready:
                if sock is self._wake_rx:
                    while self._wake_rx.poll(0):
                        self._wake_rx.recv()
                    continue
                name = poller_socks[sock]
                try:
                    parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    continue
                self._receive(name, sock, parts)

    def _receive(self, link: str, sock: zmq.Socket, parts: list[Any]) -> None:
        """Route one arrival: a marker, a ping, or a numbered message (delivered once, in order)."""
        peer = parts[0].bytes
        signal = parse_envelope(parts[1].buffer) if len(parts) >= 2 else None
        if signal is None:
            self._reject(link, "malformed", "a message without a link envelope")
            return
        kind, lseq = signal
        peers = self._peers[link]
        window = peers.get(peer)
        if kind == MARKER:
            if window is not None:  # a resend we did not need (crossed with the first marker)
                window.resync(lseq)
                return
            if len(peers) >= _MAX_PEERS and not self._forget_idle_peer(peers):
                self._reject(link, "peers", f"a marker from a {_MAX_PEERS + 1}th sender with work pending")
                return
            peers[peer] = ReceiveWindow(lseq)
            return
        if window is None:
            self._ask_resend(link, sock, peer)
            return
        if kind == PING:
            self.last_activity = time.monotonic()  # the sender is alive, if busy
            if window.watermark > lseq:  # it has not seen our latest acknowledgement
                self._send_signal(sock, peer, ACK, window.watermark)
            return
        if kind != MESSAGE:
            self._reject(link, "malformed", f"an unexpected link signal {kind!r}")
            return
        verdict = window.offer(lseq)
        if verdict == "duplicate":
            return
        if verdict == "gap":  # something was lost in between: start over from what is unacknowledged
            del peers[peer]
            self._ask_resend(link, sock, peer)
            return
        message = self._decode(link, parts[2:])
        if message is None:
            window.done(lseq)
            return
        self._put(Received(link, message, (link, peer, lseq)))

    @staticmethod
    def _forget_idle_peer(peers: collections.OrderedDict[bytes, ReceiveWindow]) -> bool:
        """Make room by forgetting the oldest sender connection with nothing of it in progress (an old
        connection of a restarted sender). One with messages in progress is never forgotten: that would
        deliver them again."""
        for peer, window in peers.items():
            if window.idle:
                del peers[peer]
                return True
        return False

    def _ask_resend(self, link: str, sock: zmq.Socket, peer: bytes) -> None:
        now = time.monotonic()
        if len(self._asked) > 4 * _MAX_PEERS:
            self._asked = {key: at for key, at in self._asked.items() if now - at < 0.5}
        if now - self._asked.get((link, peer), 0.0) < 0.5:
            return
        self._asked[(link, peer)] = now
        logger.info("stage=%s link=%s: a sender we have no state for; asking it to resend", self.stage, link)
        self._send_signal(sock, peer, RESEND, 0)

    def _send_signal(self, sock: zmq.Socket, peer: bytes, kind: bytes, lseq: int) -> None:
        try:
            sock.send_multipart([peer, envelope(kind, lseq)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer is gone; it will ask again (ping) if it still cares

    def _acknowledge(self) -> None:
        """Turn the stage's finished tokens into cumulative acknowledgements to their senders."""
        with self._cond:
            done, self._done = self._done, []
        touched: set[tuple[str, bytes]] = set()
        for link, peer, lseq in done:
            window = self._peers[link].get(peer)
            if window is not None:
                window.done(lseq)
                touched.add((link, peer))
        for link, peer in touched:
            window = self._peers[link].get(peer)
            if window is not None and window.watermark > window.acked:
                window.acked = window.watermark
                self._send_signal(self._sockets[link], peer, ACK, window.watermark)

    def _reject(self, link: str, reason: str, what: Any) -> None:
        self._metrics.rejected.labels(stage=self.stage, reason=reason).inc()
        self._once.warn(
            f"{link}:{reason}", "stage=%s link=%s rejected a %s message: %s", self.stage, link, reason, what
        )

    def _decode(self, link: str, parts: list[Any]) -> Any | None:
        try:
            message = decode(parts)
        except Exception as exc:  # noqa: BLE001 - whatever a peer sends, the reader thread survives
            reason = "unknown_type" if "unknown message type" in str(exc) else "malformed"
            self._reject(link, reason, exc)
            return None
        if not isinstance(message, self._accepts):
            self._metrics.rejected.labels(stage=self.stage, reason="unaccepted").inc()
            self._once.warn(
                f"{link}:unaccepted:{type(message).__name__}",
                "stage=%s link=%s does not accept %s messages; dropped",
                self.stage,
                link,
                type(message).__name__,
            )
            return None
        return message

    def _put(self, item: Received) -> None:
        link = item.link
        spec = self.links[link]
        with self._cond:
            if (
                spec.policy == "drop_oldest"
                and self._counts[link] >= spec.hwm
                and isinstance(item.message, DATA_TYPES)
            ):
                for index, queued in enumerate(self._items):
                    if queued.link == link and isinstance(queued.message, DATA_TYPES):
                        del self._items[index]
                        self._counts[link] -= 1
                        self._done.append(queued.token)  # dropped by policy (counted): done
                        self._metrics.dropped.labels(stage=self.stage, link=link).inc()
                        break
            self._items.append(item)
            self._counts[link] += 1
            self._metrics.queue_depth.labels(stage=self.stage, link=link).set(self._counts[link])
            self._cond.notify_all()

    # -- stage thread -------------------------------------------------------------------------
    def get(self, max_batch: int, max_wait_s: float, timeout_s: float) -> list[Received]:
        """Up to ``max_batch`` consecutive data messages, or one control message; [] on timeout."""
        with self._cond:
            deadline = time.monotonic() + timeout_s
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return []
                self._cond.wait(remaining)
            batch = [self._pop()]
            if isinstance(batch[0].message, DATA_TYPES) and max_batch > 1:
                fill_deadline = time.monotonic() + max_wait_s
                while len(batch) < max_batch:
                    if self._items:
                        if not isinstance(self._items[0].message, DATA_TYPES):
                            break
                        batch.append(self._pop())
                        continue
                    remaining = fill_deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            self._cond.notify_all()
            self.last_activity = time.monotonic()
            return batch

    def done(self, tokens: Iterable[tuple[str, bytes, int]]) -> None:
        """These delivered messages are finished (processed, and what they caused is acknowledged)."""
        with self._cond:
            self._done.extend(tokens)
            if self._closed:
                return  # close() sends the last acknowledgements itself
            try:
                self._wake_tx.send(b"", flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # a wake-up is already pending

    def _pop(self) -> Received:
        item = self._items.popleft()
        if self.links[item.link].policy == "drop_oldest" and isinstance(item.message, DATA_TYPES):
            # never resent, so "done" means taken: a sender counts as lost only what never got here
            self._done.append(item.token)
        self._counts[item.link] -= 1
        self._metrics.queue_depth.labels(stage=self.stage, link=item.link).set(self._counts[item.link])
        return item

    def depth(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self._acknowledge()  # the last tokens (a sink's final commit) still reach their senders
        for sock in [*self._sockets.values(), self._wake_rx, self._wake_tx]:
            sock.close(linger=0)


def bind_input(context: zmq.Context, link: Link, guard: Any = None) -> zmq.Socket:
    """Create and bind the ROUTER socket of a link (the downstream side always binds)."""
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVHWM, link.hwm)
    sock.setsockopt(zmq.SNDHWM, 0)  # acknowledgements are tiny; never drop one
    sock.setsockopt(zmq.LINGER, 0)
    if guard is not None:
        guard.server(sock, link)
    try:
        sock.bind(link.endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise RuntimeError(f"link {link.name}: cannot bind {link.endpoint}: {exc}") from exc
    return sock
