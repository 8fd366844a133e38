"""Write transactions on a store database connection (``db``, ``dbschema``): ``BEGIN
IMMEDIATE`` … ``COMMIT`` under the connection's lock, rolled back on any error, refused on
a connection opened read-only."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from .dbreadonly import ReadOnlyDatabase


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, durable: bool = False) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any error) under the
    connection's lock. ``durable``: the commit is synced to disk before it returns
    (``synchronous=FULL`` for this transaction: the WAL is fsynced at commit, whatever
    other connections are reading, which a checkpoint would wait for)."""
    if (why := getattr(conn, "read_only", None)) is not None:
        raise ReadOnlyDatabase(why)
    with getattr(conn, "lock", None) or contextlib.nullcontext():
        if durable:
            conn.execute("PRAGMA synchronous=FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
        finally:
            if durable:
                conn.execute("PRAGMA synchronous=NORMAL")


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already: on a full disk or an
    I/O error it rolls back by itself, and a ``ROLLBACK`` then fails with "no transaction
    is active", an error that would replace the one that says what happened."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
