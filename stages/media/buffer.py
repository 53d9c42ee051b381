"""The hand-off between per-stream decode threads and the single thread that emits messages.

Each stream has its own bounded deque so one stream can never crowd out another, and so a live
camera can drop its *own* oldest frame (bounded latency) while a file blocks its decoder instead
(lossless replay). End-of-stream markers are never dropped. Streams can be added and removed while
the consumer runs (cameras added to or removed from a watched streams file).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

__all__ = ["StreamBuffer"]

T = TypeVar("T")


class StreamBuffer(Generic[T]):
    """Per-stream bounded FIFOs read round-robin by one consumer."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._queues: dict[str, deque[T]] = {}
        self._order: list[str] = []
        self._next = 0
        self._cond = threading.Condition()

    def add_stream(self, stream_id: str) -> None:
        """Register a stream before its producer starts."""
        with self._cond:
            if stream_id in self._queues:
                raise ValueError(f"stream id {stream_id!r} is used twice")
            self._queues[stream_id] = deque()
            self._order.append(stream_id)

    def remove_stream(self, stream_id: str) -> None:
        """Forget a stream and whatever it still has queued; later ``put`` calls for it are discarded."""
        with self._cond:
            if self._queues.pop(stream_id, None) is None:
                return
            index = self._order.index(stream_id)
            del self._order[index]
            if index < self._next:
                self._next -= 1
            if self._next >= len(self._order):
                self._next = 0
            self._cond.notify_all()

    def put(
        self, stream_id: str, item: T, *, drop_oldest: bool, stop: threading.Event, force: bool = False
    ) -> int:
        """Queue ``item``; return how many older items were dropped to make room.

        With ``drop_oldest`` a full queue sheds its oldest item; otherwise the producer waits until
        there is room or ``stop`` is set (then the item is discarded). ``force`` always enqueues
        (end-of-stream markers must arrive even past the capacity). Items for a stream that is not
        (or no longer) registered are discarded: a decode thread that outlived its removal.
        """
        with self._cond:
            queue = self._queues.get(stream_id)
            if queue is None:
                return 0
            dropped = 0
            if not force:
                if drop_oldest:
                    while len(queue) >= self.capacity:
                        queue.popleft()
                        dropped += 1
                else:
                    while len(queue) >= self.capacity and not stop.is_set() and stream_id in self._queues:
                        self._cond.wait(0.1)
                    if len(queue) >= self.capacity or stream_id not in self._queues:
                        return 0
            queue.append(item)
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float) -> T | None:
        """Next item, taking streams in turn; None after ``timeout`` seconds with nothing queued."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                count = len(self._order)
                for offset in range(count):
                    index = (self._next + offset) % count
                    queue = self._queues[self._order[index]]
                    if queue:
                        self._next = (index + 1) % count
                        item = queue.popleft()
                        self._cond.notify_all()
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def depth(self, stream_id: str) -> int:
        """Items waiting for ``stream_id``."""
        with self._cond:
            return len(self._queues[stream_id])
