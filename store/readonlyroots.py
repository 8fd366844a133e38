"""Temp roots of a store opened on a read-only file system (``ReadOnlyRoots``): what a
``LocalStore`` uses instead of ``locks.TempRoots`` when its database was opened read-only
(``dbreadonly``).

A temp root is a promise that GC keeps a path while a process uses it (``kiln run``,
``kiln store cat``...): normally a line in ``temproots/<pid>``, which a read-only file
system cannot take. Here the same promise is kept with the GC lock: while any path is
held, this object holds ``gc.lock`` shared (an ``flock`` on a read-only descriptor, which
needs no write access), so a GC of the same store through a writable mount (a read-only
bind of a live store) waits until the paths are let go, as it waits for a writer. Nothing
is written. Counts are kept per path, as ``TempRoots`` keeps them, so nested holders work.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from .locks import RootHolder
from .lockwait import flock_with_notice


class ReadOnlyRoots(RootHolder):
    """``TempRoots``' interface (``add``, ``remove``, ``hold``, ``release``) for a store on
    a read-only file system; see the module docstring."""

    def __init__(self, gc_lock: Path) -> None:
        self.gc_lock_path = gc_lock
        self.counts: Counter[str] = Counter()
        self.fd: int | None = None
        self.mutex = threading.Lock()

    def add(self, paths: Iterable[str], *, locked: bool = False) -> None:
        """Hold ``paths``; the first one takes the GC lock shared (waiting for a GC that
        holds it). ``locked`` (the caller holds the GC lock already) changes nothing:
        this object's lock is its own."""
        new = list(paths)
        if not new:
            return
        with self.mutex:
            if self.fd is None:
                self.fd = self._lock()
            self.counts.update(new)

    def _lock(self) -> int | None:
        """A read-only descriptor of ``gc.lock`` holding it shared; None when there is no
        ``gc.lock`` (a store that never ran a writer: no GC can be running either) or this
        user may not open it (another user's store: the lock is 0600 so that others cannot
        hold GC off; they read without that promise, see docs/store.md)."""
        try:
            fd = os.open(self.gc_lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, PermissionError):
            return None
        try:
            flock_with_notice(fd, fcntl.LOCK_SH, self.gc_lock_path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def remove(self, paths: Iterable[str]) -> None:
        """Drop one count of each of ``paths``; the last one lets the GC lock go."""
        with self.mutex:
            for p in paths:
                self.counts[p] -= 1
                if self.counts[p] <= 0:
                    del self.counts[p]
            if not self.counts:
                self._unlock()

    def release(self) -> None:
        """The store object is closed: let everything go."""
        with self.mutex:
            self.counts.clear()
            self._unlock()

    def _unlock(self) -> None:
        fd, self.fd = self.fd, None  # (cleared first: never closed twice)
        if fd is not None:
            os.close(fd)  # (closing drops the flock)
