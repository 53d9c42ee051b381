"""Recognising messages a restarted sender produced again (acknowledged delivery, pipeline.delivery)."""

from __future__ import annotations

from typing import Any

__all__ = ["RedeliveryFilter"]


class RedeliveryFilter:
    """Recognises messages a restarted sender produced again (pipeline.delivery).

    Frame numbers of a stream only grow, so data older than what a link already delivered is a
    duplicate; the same number again is one only from another sender connection (a tracker sends a
    second message for a stream's last frame at its end, from the same connection). A second
    EndOfStream with no data in between is a duplicate too.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._ended: set[tuple[str, str]] = set()

    def data(self, link: str, message: Any, peer: bytes) -> bool:
        key = (link, message.stream_id)
        last = self._last.get(key)
        if last is not None and (message.seq < last[0] or (message.seq == last[0] and peer != last[1])):
            return False
        self._last[key] = (message.seq, peer)
        self._ended.discard(key)
        return True

    def end(self, link: str, stream_id: str) -> bool:
        key = (link, stream_id)
        if key in self._ended:
            return False
        self._ended.add(key)
        return True
