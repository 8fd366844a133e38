"""The store's SQLite metadata (``db.sqlite``): which paths are valid and what is known
about them.

Schema (version ``SCHEMA_VERSION``, kept in ``PRAGMA user_version``):

- ``paths``: one row per valid path: ``path`` (full logical path), ``hash_part``,
  ``nar_hash``/``file_hash`` (``sha256:<nix32>``), ``nar_size``, ``file_size``,
  ``deriver``, ``registration_time``, ``ca``; ``nar_hash`` is indexed (``NAR_HASH_INDEX``,
  added to older databases when they are opened).
- ``refs(referrer, reference)``: full logical paths; ``reference`` is indexed so GC and
  ``referrers`` are cheap.
- ``sigs(path, sig)``: ``keyname:base64`` signatures over the path's fingerprint.
- ``paths.ultimate``: whether the path was made in this store (``madehere``: 1 built or
  added here, 0 imported, NULL unknown), a column added to older databases when they are
  opened (as ``NAR_HASH_INDEX``; their rows stay NULL).

Invariants: a row exists only for a path whose object is durable and whose tree is in
place (registration inserts the row last, in one transaction with its refs and sigs);
every reference of a row is itself a row (or the path itself) unless a path was
quarantined by ``verify --repair``. The database is in WAL mode with
``synchronous=NORMAL`` (as Nix): a commit is durable against a process crash (``kill -9``)
the moment it returns; after a power loss the last few commits may be rolled back, but
the database stays consistent. Objects and trees are in place before their row is
inserted, so a rolled-back row only leaves an unregistered path (GC removes it, verify
ignores it), never a row without its object. The other way round, a commit that deletes
or repoints rows is made durable (``delete``/``set_file`` commit with
``synchronous=FULL``: one WAL fsync) before
any file it released is unlinked, so a power cut cannot bring back a row whose object or
tree is gone.

SQLite deletes the ``-wal`` and ``-shm`` when the last connection closes and makes them
again at the next open, so an open needs free space: on a full disk ``kiln store gc``
first releases the store's reserved space (``reserve``), and a command that only reads
opens the database without a ``-shm`` (``connect(full_disk_read=True)``). On a read-only
file system, where neither can be made, every open falls back to reading it as SQLite
can there (``dbreadonly``: immutable, or through a ``-wal`` and ``-shm`` left in place);
a write transaction on such a connection is refused (``ReadOnlyDatabase``).

The schema is created with ``sqlite-utils`` (only when the file is new or old, so the
import is not paid by every command); the hot paths use the plain ``sqlite3``
connection, which keeps ``kiln store add`` fast.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .dbreadonly import open_read_only, read_only_text
from .dbschema import NAR_HASH_INDEX as NAR_HASH_INDEX
from .dbschema import SCHEMA_VERSION
from .dbschema import create_schema as _create_schema
from .dbschema import has_ultimate as _has_ultimate
from .dbschema import upgrade as _upgrade
from .dbtx import transaction as _transaction
from .errors import StoreError
from .fsstate import on_read_only_fs, state_of, why_refused
from .hashes import Hash
from .pathinfo import PathInfo


class Connection(sqlite3.Connection):
    """A connection with a lock: write transactions hold it, so threads that share one
    store object (against its contract, but cheaply survivable) cannot interleave
    ``BEGIN``s on one connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # (``sqlite3.connect``'s, passed on)
        super().__init__(*args, **kwargs)
        self.lock = threading.RLock()
        #: why this connection may not write (opened on a read-only file system), or None
        self.read_only: str | None = None
        #: whether ``paths`` has its ``ultimate`` column (``madehere``): an older database
        #: that could not be changed yet has not (read-only, or busy: ``dbschema.upgrade``)
        self.ultimate = True


def connect(path: Path, full_disk_read: bool = False) -> Connection:
    """Open (and create or migrate) the database at ``path``. A file that is not a
    database, or one SQLite finds damaged on opening, is a ``StoreError`` naming it.

    ``full_disk_read``: when the open fails on a full file system (SQLite cannot grow the
    ``-shm`` it makes at every open), open it again in exclusive locking mode, which keeps
    the WAL index in this process's memory and needs no ``-shm``: a command that reads
    (``kiln store info``, ``verify``) still works. Other connections then wait until this
    one is closed (they could not open without space anyway), so only for a command
    that ends soon, never a server.

    On a read-only file system (whatever ``full_disk_read``) the database is opened for
    reading only (``dbreadonly.open_read_only``), its connection marked ``read_only``:
    nothing can write there anyway. Told by ``statvfs`` first: where a ``-wal`` and
    ``-shm`` are left in place SQLite would open it read-only unasked, unmarked."""
    if on_read_only_fs(path.parent):
        return _read_only(path)
    try:
        return _connect(path, exclusive=False)
    except StoreError as e:
        if isinstance(e, _OpenFailed) and e.read_only:
            return _read_only(path)
        if not (full_disk_read and isinstance(e, _OpenFailed) and e.full):
            raise
        try:
            return _connect(path, exclusive=True)
        except StoreError:
            raise e from None


def _read_only(path: Path) -> Connection:
    conn = open_read_only(path, Connection, SCHEMA_VERSION)
    conn.read_only = read_only_text(path)
    conn.ultimate = _has_ultimate(conn)  # (nothing can add it there)
    return conn


class _OpenFailed(StoreError):
    """SQLite could not open the database (``full``: the file system is full;
    ``read_only``: it is read-only)."""

    def __init__(self, message: str, full: bool, read_only: bool = False) -> None:
        super().__init__(message)
        self.full = full
        self.read_only = read_only


def _connect(path: Path, exclusive: bool) -> Connection:
    conn = sqlite3.connect(
        path, timeout=60.0, isolation_level=None, check_same_thread=False, factory=Connection
    )
    try:
        if exclusive:  # (before the first access, or SQLite maps the ``-shm`` after all)
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            _create_schema(conn, version)
        _upgrade(conn)
    except sqlite3.OperationalError as e:
        if "locked" in str(e):  # busy beyond the timeout: not damage
            conn.close()
            raise
        conn.close()
        state = state_of(path.parent)
        raise _OpenFailed(
            f"cannot open the store database {path}: {e}{why_refused(path, state)}",
            full=state is not None and state.full(),
            read_only=state is not None and state.read_only,
        ) from None
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(
            f"the store database {path} is damaged ({e}); restore it from a backup (kiln cannot "
            "rebuild it from the objects and trees)"
        ) from None
    return conn


_COLS = "path, nar_hash, nar_size, file_hash, file_size, deriver, registration_time, ca"


def _info(conn: sqlite3.Connection, row: tuple) -> PathInfo:
    path = row[0]
    refs = tuple(r for (r,) in conn.execute("SELECT reference FROM refs WHERE referrer=?", (path,)))
    sigs = tuple(sorted(s for (s,) in conn.execute("SELECT sig FROM sigs WHERE path=?", (path,))))
    return PathInfo(
        path=path,
        nar_hash=Hash.parse(row[1]),
        nar_size=row[2],
        references=refs,
        deriver=row[5],
        sigs=sigs,
        file_hash=Hash.parse(row[3]),
        file_size=row[4],
        ca=row[7],
        registration_time=row[6] or 0,
    )


def query(conn: sqlite3.Connection, path: str) -> PathInfo | None:
    row = conn.execute(f"SELECT {_COLS} FROM paths WHERE path=?", (path,)).fetchone()
    return None if row is None else _info(conn, row)


def query_by_hash_part(conn: sqlite3.Connection, hash_part: str) -> PathInfo | None:
    row = conn.execute(f"SELECT {_COLS} FROM paths WHERE hash_part=?", (hash_part,)).fetchone()
    return None if row is None else _info(conn, row)


def path_by_nar_hash(conn: sqlite3.Connection, nar_hash: Hash) -> str | None:
    """A valid path with this NAR hash (any one, if several), through ``NAR_HASH_INDEX``
    (deploy-time lookups: a registry's ``by_nar_hash``)."""
    row = conn.execute("SELECT path FROM paths WHERE nar_hash=? LIMIT 1", (nar_hash.to_nix32(),)).fetchone()
    return None if row is None else row[0]


def is_valid(conn: sqlite3.Connection, path: str) -> bool:
    return conn.execute("SELECT 1 FROM paths WHERE path=?", (path,)).fetchone() is not None


def all_paths(conn: sqlite3.Connection) -> list[str]:
    return [p for (p,) in conn.execute("SELECT path FROM paths ORDER BY path")]


def all_infos(conn: sqlite3.Connection) -> list[PathInfo]:
    return [_info(conn, r) for r in conn.execute(f"SELECT {_COLS} FROM paths ORDER BY path").fetchall()]


def references_map(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Every valid path -> its references (one query, for GC and closures)."""
    out: dict[str, list[str]] = {p: [] for p in all_paths(conn)}
    for a, b in conn.execute("SELECT referrer, reference FROM refs"):
        out.setdefault(a, []).append(b)
    return out


def derivers_map(conn: sqlite3.Connection) -> dict[str, str]:
    """Every valid path that records a deriver -> that ``.drv`` path (valid or not)."""
    return dict(conn.execute("SELECT path, deriver FROM paths WHERE deriver IS NOT NULL AND deriver != ''"))


def references(conn: sqlite3.Connection, path: str) -> list[str]:
    return [r for (r,) in conn.execute("SELECT reference FROM refs WHERE referrer=?", (path,))]


def referrers(conn: sqlite3.Connection, path: str) -> list[str]:
    return [
        r
        for (r,) in conn.execute("SELECT referrer FROM refs WHERE reference=? AND referrer!=?", (path, path))
    ]


def file_hash_in_use(conn: sqlite3.Connection, file_hash: str) -> bool:
    return conn.execute("SELECT 1 FROM paths WHERE file_hash=? LIMIT 1", (file_hash,)).fetchone() is not None


def insert(conn: sqlite3.Connection, info: PathInfo, hash_part: str, ultimate: bool | None = None) -> None:
    """Insert a row with its refs and sigs in one transaction. The caller has checked
    that references are valid and holds the path lock. ``ultimate``: the path was made in
    this store (``madehere``): True for a build's output or a path added here, False for
    one imported; None (not said) is recorded as unknown, which counts as imported."""
    assert info.file_hash is not None and info.file_size is not None
    insert_many(conn, [(info, hash_part)], ultimate)


def insert_many(
    conn: sqlite3.Connection, rows: list[tuple[PathInfo, str]], ultimate: bool | None = None
) -> None:
    """Insert ``(info, hash_part)`` rows with their refs and sigs in one transaction
    (group commit for a batch import; same preconditions and ``ultimate`` as ``insert``,
    for every row)."""
    # (a database whose column could not be added yet: the rows read as unknown once it is)
    extra = ((", ultimate", ",?"), (None if ultimate is None else int(ultimate),))
    (cols, mark), value = extra if getattr(conn, "ultimate", True) else (("", ""), ())
    with _transaction(conn):
        conn.executemany(
            f"INSERT INTO paths (hash_part, {_COLS}{cols}) VALUES (?,?,?,?,?,?,?,?,?{mark})",
            [
                (
                    hash_part,
                    info.path,
                    info.nar_hash.to_nix32(),
                    info.nar_size,
                    info.file_hash.to_nix32(),  # type: ignore[union-attr]
                    info.file_size,
                    info.deriver,
                    info.registration_time or int(time.time()),
                    info.ca,
                    *value,
                )
                for info, hash_part in rows
            ],
        )
        conn.executemany(
            "INSERT INTO refs VALUES (?,?)", [(i.path, r) for i, _ in rows for r in i.references]
        )
        conn.executemany(
            "INSERT OR IGNORE INTO sigs VALUES (?,?)", [(i.path, s) for i, _ in rows for s in i.sigs]
        )


def set_file(conn: sqlite3.Connection, path: str, file_hash: Hash, file_size: int) -> None:
    """Point a path at a new object (``verify --repair`` rebuilt it), durably: the old
    object may be unlinked next."""
    with _transaction(conn, durable=True):
        conn.execute(
            "UPDATE paths SET file_hash=?, file_size=? WHERE path=?", (file_hash.to_nix32(), file_size, path)
        )


def add_signatures(conn: sqlite3.Connection, path: str, sigs: Iterable[str]) -> None:
    with _transaction(conn):
        conn.executemany("INSERT OR IGNORE INTO sigs VALUES (?,?)", [(path, s) for s in sigs])


def remove_signatures(
    conn: sqlite3.Connection, path: str, which: Callable[[PathInfo, str], bool]
) -> list[str]:
    """Delete the signatures ``sig`` of ``path`` for which ``which(info, sig)`` holds, and
    return them: read, judged and deleted in one write transaction, so a signature added
    meanwhile is judged too (none for a path that is not valid)."""
    with _transaction(conn):
        info = query(conn, path)
        gone = [] if info is None else [s for s in info.sigs if which(info, s)]
        conn.executemany("DELETE FROM sigs WHERE path=? AND sig=?", [(path, s) for s in gone])
    return gone


def delete(conn: sqlite3.Connection, paths: Iterable[str]) -> None:
    """Invalidate ``paths`` (rows, their refs and sigs) in one transaction, durably: their
    files are deleted next, and after a power cut a row must not come back without them."""
    rows = [(p,) for p in paths]
    with _transaction(conn, durable=True):
        conn.executemany("DELETE FROM refs WHERE referrer=?", rows)
        conn.executemany("DELETE FROM sigs WHERE path=?", rows)
        conn.executemany("DELETE FROM paths WHERE path=?", rows)
