"""ZeroMQ links between stages: one PUSH -> PULL socket pair per link, with a per-link policy.

* Sending (:class:`Outlet`): ``copy=False`` multipart sends of the encoded message. ``block`` waits
  (behind a POLLOUT poll, so an abort can interrupt it) while the link is full: nothing is lost.
  ``drop_oldest`` never lets a slow consumer stall the producer: if the peer stops reading
  altogether (its process died) the new message is dropped and counted instead of blocking.
* Receiving (:class:`Inputs`): a reader thread per stage polls every input socket, decodes
  (zero-copy, ``np.frombuffer`` on the zmq frame buffers) and queues messages in one bounded inbox.
  On a ``block`` link a full inbox stops the reader from reading that socket, so backpressure
  reaches the sender through the ZeroMQ high-water marks. On a ``drop_oldest`` link the reader keeps
  draining the socket and evicts the oldest queued *data* message of that link (control messages,
  ``messages.CONTROL_TYPES``: EndOfStream, StageDone, TrackEnd, are never dropped), counting each
  eviction: queued latency is bounded by ``hwm``.
  Malformed, unknown or unaccepted messages are counted and logged once per kind, never raised.

Sockets are closed with ``linger=0`` on abort, and with a short linger (``shutdown.linger_s``, set
before connecting, which is when libzmq reads it) on a clean exit so the final EndOfStream/StageDone
of a link is not thrown away.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from pipeline.messages import CONTROL_TYPES, DATA_TYPES, MessageError
from pipeline.metrics import RuntimeMetrics
from pipeline.wire import decode, wire_names

__all__ = ["Link", "Outlet", "Inputs", "OnceLog", "POLL_S"]

logger = logging.getLogger(__name__)

POLL_S = 0.05  # every blocking wait wakes this often to look at stop/abort flags
_CONTROL_NAMES = frozenset(wire_names(CONTROL_TYPES))


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
    """The sending end of one link."""

    def __init__(
        self, context: zmq.Context, link: Link, metrics: RuntimeMetrics, linger_s: float = 2.0
    ) -> None:
        self.link = link
        self._metrics = metrics
        self._socket = context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, link.hwm)
        # LINGER must be set before connect(): libzmq copies it into the connection's session then, and
        # a session with linger 0 throws away the last messages (EndOfStream, StageDone) on close.
        self._socket.setsockopt(zmq.LINGER, int(linger_s * 1000))
        self._socket.connect(link.endpoint)
        self._wants = set(link.accepts)

    def wants(self, type_name: str) -> bool:
        return type_name in self._wants or type_name in _CONTROL_NAMES

    def send(
        self,
        parts: list[Any],
        is_data: bool,
        abort: threading.Event,
        stop: threading.Event | None = None,
        give_up_s: float = 10.0,
    ) -> bool:
        """Send one encoded message; False if it was dropped (drop_oldest, peer not reading) or aborted.

        A ``block`` send waits as long as the receiver is alive; once a stop was requested, a receiver
        that takes nothing for ``give_up_s`` is considered gone and the message is dropped (counted),
        so a dead downstream process cannot keep its upstream from shutting down.
        """
        if is_data and self.link.policy == "drop_oldest":
            # The receiver drains this socket continuously into its bounded inbox (where the oldest
            # are dropped), so a full socket means it fell behind for a moment or is gone: wait one
            # poll interval at most, then drop this message rather than stall the producer.
            for attempt in range(2):
                try:
                    self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                    return True
                except zmq.Again:
                    if attempt == 0:
                        self._socket.poll(int(POLL_S * 1000), zmq.POLLOUT)
            self._metrics.dropped.labels(stage=self.link.upstream, link=self.link.name).inc()
            return False
        blocked_since: float | None = None
        while not abort.is_set():
            if self._socket.poll(int(POLL_S * 1000), zmq.POLLOUT):
                try:
                    self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                    return True
                except zmq.Again:
                    pass
            if stop is not None and stop.is_set():
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > give_up_s:
                    self._metrics.dropped.labels(stage=self.link.upstream, link=self.link.name).inc()
                    logger.warning(
                        "link=%s receiver took nothing for %.1fs after stop; dropping",
                        self.link.name,
                        give_up_s,
                    )
                    return False
        return False

    def close(self, abort: bool = False) -> None:
        """Close; pending messages keep flushing for up to the linger time unless aborting."""
        if abort:
            self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.close()


class Inputs:
    """All input links of one stage: bound PULL sockets, a reader thread and a bounded inbox."""

    def __init__(
        self,
        context: zmq.Context,
        stage: str,
        links: list[Link],
        accepts: tuple[type, ...],
        metrics: RuntimeMetrics,
        bound: dict[str, zmq.Socket] | None = None,
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
                sock = bind_input(context, link)
            self._sockets[link.name] = sock
        self._items: collections.deque[tuple[str, Any]] = collections.deque()
        self._counts = {name: 0 for name in self.links}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read_loop, name=f"{stage}-inputs", daemon=True)
        self.last_activity = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    # -- reader thread ------------------------------------------------------------------------
    def _read_loop(self) -> None:
        poller_socks = {sock: name for name, sock in self._sockets.items()}
        while not self._closed:
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
            try:
                ready = poller.poll(int(POLL_S * 1000))
            except zmq.ZMQError:
                if self._closed:
                    return
                raise
            for sock, _ in ready:
                name = poller_socks[sock]
                try:
                    parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    continue
                message = self._decode(name, parts)
                if message is not None:
                    self._put(name, message)

    def _decode(self, link: str, parts: list[Any]) -> Any | None:
        try:
            message = decode(parts)
        except MessageError as exc:
            reason = "unknown_type" if "unknown message type" in str(exc) else "malformed"
            self._metrics.rejected.labels(stage=self.stage, reason=reason).inc()
            self._once.warn(
                f"{link}:{reason}",
                "stage=%s link=%s rejected a %s message: %s",
                self.stage,
                link,
                reason,
                exc,
            )
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

    def _put(self, link: str, message: Any) -> None:
        spec = self.links[link]
        with self._cond:
            if (
                spec.policy == "drop_oldest"
                and self._counts[link] >= spec.hwm
                and isinstance(message, DATA_TYPES)
            ):
                for index, (owner, queued) in enumerate(self._items):
                    if owner == link and isinstance(queued, DATA_TYPES):
                        del self._items[index]
                        self._counts[link] -= 1
                        self._metrics.dropped.labels(stage=self.stage, link=link).inc()
                        break
            self._items.append((link, message))
            self._counts[link] += 1
            self._metrics.queue_depth.labels(stage=self.stage, link=link).set(self._counts[link])
            self._cond.notify_all()

    # -- stage thread -------------------------------------------------------------------------
    def get(self, max_batch: int, max_wait_s: float, timeout_s: float) -> list[tuple[str, Any]]:
        """Up to ``max_batch`` consecutive data messages, or one control message; [] on timeout."""
        with self._cond:
            deadline = time.monotonic() + timeout_s
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return []
                self._cond.wait(remaining)
            batch = [self._pop()]
            if isinstance(batch[0][1], DATA_TYPES) and max_batch > 1:
                fill_deadline = time.monotonic() + max_wait_s
                while len(batch) < max_batch:
                    if self._items:
                        if not isinstance(self._items[0][1], DATA_TYPES):
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

    def _pop(self) -> tuple[str, Any]:
        link, message = self._items.popleft()
        self._counts[link] -= 1
        self._metrics.queue_depth.labels(stage=self.stage, link=link).set(self._counts[link])
        return link, message

    def depth(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        for sock in self._sockets.values():
            sock.close(linger=0)


def bind_input(context: zmq.Context, link: Link) -> zmq.Socket:
    """Create and bind the PULL socket of a link (the downstream side always binds)."""
    sock = context.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, link.hwm)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(link.endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise RuntimeError(f"link {link.name}: cannot bind {link.endpoint}: {exc}") from exc
    return sock
