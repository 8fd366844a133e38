"""Giving the store database's free pages back to the file system, after a collection.

SQLite never shrinks a database file by itself: the pages of deleted rows go on its
freelist and are reused by later inserts, so after a GC of many paths ``db.sqlite``
keeps its size. ``compact`` (run by ``gc.collect`` at the end of every collection that is
not a dry run) rewrites the database with ``VACUUM`` when that is worth it: at least
``MIN_FREE_BYTES`` and ``MIN_FREE_SHARE`` of its pages free. Otherwise it does nothing:
a freelist is reused by the next registrations, and a ``VACUUM`` rewrites every page.

Why ``VACUUM`` and not ``auto_vacuum=INCREMENTAL``: that mode has to be chosen before
the first table exists (an existing store would need a ``VACUUM`` anyway to switch),
keeps pointer-map pages updated on every insert, and only moves pages to the end of the
file without defragmenting. One rule for every store, old or new, costs one rewrite
when a collection has freed a large share of the file, and nothing otherwise.

Safety: ``VACUUM`` is one write transaction. It builds the new content in a temporary
database (SQLite's temp directory: ``SQLITE_TMPDIR``, ``TMPDIR``, ``/var/tmp``, ``/tmp``)
and writes it into the WAL at commit; a failure of any kind (no space, the database busy,
an I/O error) rolls it back and leaves the database as it was: the collection is
reported as done, with a warning saying why the database was not compacted. It is
skipped up front when the store's file system has less free than the live pages (the
WAL grows by them) plus ``SPACE_MARGIN``. In WAL mode readers are never blocked: one
that started before goes on reading its snapshot. Writers wait while it runs (it holds
the write lock, as any commit does); ``VACUUM`` waits at most ``WRITE_WAIT`` s for the
lock, then the compaction is skipped.

The file shrinks when the WAL is checkpointed into it: ``compact`` checkpoints with
``wal_checkpoint(TRUNCATE)``, waiting at most ``CHECKPOINT_WAIT`` s for readers of older
snapshots (meanwhile new writers wait); if one is still reading, the checkpoint goes as
far as it can and the file shrinks at a later checkpoint (at the latest when the last
connection closes). The bytes reported are the pages the database gave back.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .fsstate import state_of

#: compact only when at least this many bytes of the file are free pages ...
MIN_FREE_BYTES = 1 << 20
#: ... and they are at least this share of the file
MIN_FREE_SHARE = 0.25
#: free space kept on the store's file system beyond the live pages the WAL grows by
SPACE_MARGIN = 16 << 20
#: how long ``VACUUM`` waits for the write lock, and the checkpoint for older readers (ms)
WRITE_WAIT = 5000
CHECKPOINT_WAIT = 1000
#: the connection's usual busy timeout (``db._connect``'s 60 s), put back afterwards
_BUSY_MS = 60000


@dataclass(frozen=True, slots=True)
class Compaction:
    """What ``compact`` did: the bytes the database gave back (0 if it was not
    compacted), and why it was not though it was worth it (None: done, or not needed)."""

    freed: int
    not_done: str | None = None


def free_pages(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """``(page size, page count, free pages)`` of the main database."""
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    count = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return size, count, free


def worth_it(page_size: int, pages: int, free: int) -> bool:
    """Whether ``free`` of ``pages`` pages are enough to rewrite the database for."""
    return free * page_size >= MIN_FREE_BYTES and free >= pages * MIN_FREE_SHARE


def compact(conn: sqlite3.Connection, path: Path) -> Compaction:
    """``VACUUM`` the database ``path`` (open as ``conn``, a ``db.Connection``, outside
    any transaction) when ``worth_it``. What the ``VACUUM`` meets (no space, the
    database busy, an I/O error; see the module docstring) is not raised: it is
    ``Compaction.not_done``, the database as it was. A checkpoint that cannot finish
    leaves the file's shrinking to a later one."""
    page_size, pages, free = free_pages(conn)
    if not worth_it(page_size, pages, free):
        return Compaction(0)
    live = (pages - free) * page_size
    state = state_of(path.parent)
    if state is not None and state.free < live + SPACE_MARGIN:
        return Compaction(
            0,
            f"compacting it needs {live + SPACE_MARGIN:,} bytes free on its file system, which has "
            f"{state.free:,}",
        )
    lock = getattr(conn, "lock", None)
    if lock is not None:
        lock.acquire()  # (no other thread's transaction on this connection meanwhile)
    try:
        conn.execute(f"PRAGMA busy_timeout={WRITE_WAIT}")
        try:
            conn.execute("VACUUM")
        except sqlite3.Error as e:  # rolled back: the database is as it was
            return Compaction(0, f"VACUUM failed: {e}")
        conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT}")
        with contextlib.suppress(sqlite3.Error):  # (committed; the file shrinks at a later checkpoint)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        after = conn.execute("PRAGMA page_count").fetchone()[0]
        return Compaction(max(pages - after, 0) * page_size)
    finally:
        conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        if lock is not None:
            lock.release()
