"""``NarinfoCache``: narinfo bodies a server keeps in memory, bounded in entries *and*
in bytes (a narinfo may be 4 MiB, ``narinfo.MAX_SIZE``: 200,000 entries alone bound
nothing). Each entry carries a ``tag`` its owner checks before using it (a file stamp,
the object the narinfo names). Over either bound the cache is emptied (cheap, and the
next reads refill it); a body over ``one_max`` is never kept. Thread-safe: batch
answers read narinfos on worker threads."""

from __future__ import annotations

import threading
from typing import Any


class NarinfoCache:
    def __init__(self, max_entries: int, max_bytes: int, one_max: int) -> None:
        self.max_entries, self.max_bytes, self.one_max = max_entries, max_bytes, one_max
        self._entries: dict[str, tuple[Any, bytes]] = {}
        self.bytes = 0  # (of the bodies held: exact)
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[Any, bytes] | None:
        """``(tag, body)`` kept for ``key``, or None."""
        return self._entries.get(key)

    def put(self, key: str, tag: Any, body: bytes) -> None:
        """Keep ``body`` for ``key`` with ``tag`` (not if it is over ``one_max``)."""
        if len(body) > self.one_max:
            return
        with self._lock:
            self._drop(key)
            if len(self._entries) >= self.max_entries or self.bytes + len(body) > self.max_bytes:
                self._entries.clear()
                self.bytes = 0
            self._entries[key] = (tag, body)
            self.bytes += len(body)

    def drop(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def _drop(self, key: str) -> None:
        if (old := self._entries.pop(key, None)) is not None:
            self.bytes -= len(old[1])

    def values(self) -> list[tuple[Any, bytes]]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
