"""Reading a store's database on a read-only file system (a store on read-only media, a
read-only container layer, a ``mount -o ro,bind`` of a store): ``db.connect`` opens it
with ``open_read_only`` when ``statvfs`` says the file system is read-only (or the
normal open fails saying so).

Theory (SQLite's "Read-Only Databases" in its WAL documentation and its URI parameters):
a WAL-mode database is read through a ``-wal`` and a ``-shm`` (its index); the last
connection to close checkpoints the log into ``db.sqlite`` and deletes both, and the next
open makes them again, which a read-only file system refuses ("unable to open database
file"). So:

- **No ``-wal``, or one with no frames** (at most its 32-byte header): everything
  committed is in ``db.sqlite``. It is opened ``mode=ro&immutable=1``: SQLite reads the
  file alone, with no ``-wal``/``-shm`` and no locks. Sound because nothing can write
  through a read-only mount; but a read-only *view* of a store that is written elsewhere
  (a ro bind of a writable one) is read without SQLite's coordination: a checkpoint
  made there during a long read (a writer's last close) can make that read fail or see
  a mix of before and after (SQLite: "incorrect query results and/or SQLITE_CORRUPT").
- **A ``-wal`` with frames and its ``-shm``** (a writer has it open elsewhere, or one was
  killed): ``immutable`` would ignore the log, silently losing committed registrations.
  It is opened ``mode=ro``: SQLite (3.22 and later) reads the log through the existing
  ``-shm`` it cannot write (rebuilding its index in memory where needed), and sees what
  was committed, coordinating with a writer through the other mount.
- **A ``-wal`` with frames but no ``-shm``**: SQLite cannot read the log here, and
  ``immutable`` would lose what it holds: refused (``ReadOnlyDatabase``), saying to open
  the store once where it is writable (which merges the log into ``db.sqlite``).

A connection opened here is marked (``db.Connection.read_only``, by ``db``): its write
transactions refuse it with a ``ReadOnlyDatabase`` error naming the file system, instead
of SQLite's "attempt to write a readonly database". A database that needs its schema
created or migrated cannot be used here either.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from .errors import StoreError

#: a WAL file's header; frames follow it
WAL_HEADER = 32


class ReadOnlyDatabase(StoreError):
    """The store's database is on a read-only file system and this needs to write it, or
    cannot be read there at all."""


def read_only_text(path: Path) -> str:
    """The reason every write is refused, naming the file system."""
    return f"the store at {path.parent} is on a read-only file system: it can be read, not changed"


def _size(p: Path) -> int | None:
    try:
        return os.stat(p).st_size
    except FileNotFoundError:
        return None


_Conn = TypeVar("_Conn", bound=sqlite3.Connection)


def open_read_only(path: Path, factory: type[_Conn], schema_version: int) -> _Conn:
    """Open the database at ``path``, on a read-only file system, for reading (module
    docstring) as a ``factory``; ``ReadOnlyDatabase`` where that is not possible without
    losing data, or the schema is not ``schema_version``. The caller marks it read-only
    (``db.Connection.read_only``: ``read_only_text``)."""
    wal_size = _size(Path(f"{path}-wal"))
    logged = wal_size is not None and wal_size > WAL_HEADER
    if logged and _size(Path(f"{path}-shm")) is None:
        raise ReadOnlyDatabase(
            f"cannot read the store database {path}: the file system holding it is read-only and its "
            f"write-ahead log ({path.name}-wal, {wal_size:,} bytes) holds changes not yet in {path.name}, "
            f"which SQLite cannot read there without its {path.name}-shm: open the store once where it "
            f"can be written (any kiln store command), which merges the log, then use it read-only"
        )
    uri = f"file:{quote(str(path))}?mode=ro" + ("" if logged else "&immutable=1")
    try:
        conn = sqlite3.connect(
            uri, uri=True, timeout=60.0, isolation_level=None, check_same_thread=False, factory=factory
        )
    except sqlite3.Error as e:
        raise StoreError(f"cannot read the store database {path} (on a read-only file system): {e}") from None
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # (reads the schema)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"cannot read the store database {path} (on a read-only file system): {e}") from None
    if version != schema_version:
        conn.close()
        raise ReadOnlyDatabase(
            f"the store database {path} has schema version {version}, not {schema_version}: it must be "
            "updated, which cannot be done on a read-only file system (open the store once where it can "
            "be written)"
            if version < schema_version
            else f"store database has schema version {version}, this kiln understands up to "
            f"{schema_version}; upgrade kiln"
        )
    return conn
