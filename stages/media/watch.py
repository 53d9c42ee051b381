"""Poll a small file for content changes (the ingest stage's watched streams file).

Polling rather than inotify: it works the same on every filesystem (bind mounts, NFS, config maps
that are swapped by symlink) and costs one ``stat`` per interval. A change is a different content
hash; the ``stat`` result only decides whether the file needs reading at all.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

__all__ = ["WatchedFile"]

# Some filesystems stamp mtimes in coarse ticks (FAT: 2 s), so a rewrite right after a poll can keep
# both mtime and size. A file modified this recently is re-read on every poll (git's "racy clean").
_RACY_S = 2.0


class WatchedFile:
    """Hands back a file's bytes each time its content changes.

    ``poll()`` stats the file; when (mtime, size) differ from the last poll, or the mtime is too recent
    to trust, it reads the file and compares a SHA-256 of the bytes. The first successful poll always
    counts as a change. A file that cannot be read raises ``OSError`` once; the same failure on later
    polls is quiet, and the next readable content counts as a change even when it equals the last one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stat: tuple[int, int] | None = None
        self._digest: bytes | None = None
        self._failure: tuple[type, int | None] | None = None

    def poll(self) -> bytes | None:
        """The file's bytes when its content changed since the last poll, else None."""
        try:
            st = os.stat(self.path)
            signature = (st.st_mtime_ns, st.st_size)
            racy = time.time() - st.st_mtime < _RACY_S
            if signature == self._stat and self._failure is None and not racy:
                return None
            data = self.path.read_bytes()
        except OSError as exc:
            failure = (type(exc), exc.errno)
            self._stat, self._digest = None, None
            if failure == self._failure:
                return None
            self._failure = failure
            raise
        self._failure = None
        self._stat = signature
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return None
        self._digest = digest
        return data
