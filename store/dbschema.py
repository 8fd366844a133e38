"""The store database's schema (``db``): its creation, and what an older kiln's database
lacks added when it is opened (``upgrade``). The tables and columns are described in
``db``'s docstring."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from .dbtx import rollback, transaction
from .errors import StoreError

if TYPE_CHECKING:
    from .db import Connection

SCHEMA_VERSION = 1


def create_schema(conn: sqlite3.Connection, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store database has schema version {version}, this kiln understands up to {SCHEMA_VERSION}; "
            "upgrade kiln"
        )
    import sqlite_utils  # slow import (~0.1 s), paid only when the schema changes

    conn.execute("BEGIN IMMEDIATE")
    try:
        # re-check under the write lock: another process may have just created it
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            conn.execute("COMMIT")
            return
        db = sqlite_utils.Database(conn)
        db.table("paths").create(
            {
                "id": int,
                "path": str,
                "hash_part": str,
                "nar_hash": str,
                "nar_size": int,
                "file_hash": str,
                "file_size": int,
                "deriver": str,
                "registration_time": int,
                "ca": str,
                "ultimate": int,
            },
            pk="id",
            not_null={"path", "hash_part", "nar_hash", "nar_size", "file_hash", "file_size"},
            if_not_exists=True,
        )
        db.table("paths").create_index(["path"], unique=True, if_not_exists=True)
        db.table("paths").create_index(["hash_part"], unique=True, if_not_exists=True)
        db.table("refs").create(
            {"referrer": str, "reference": str}, pk=("referrer", "reference"), if_not_exists=True
        )
        db.table("refs").create_index(["reference"], if_not_exists=True)
        conn.execute(f"CREATE INDEX IF NOT EXISTS {NAR_HASH_INDEX} ON paths(nar_hash)")
        db.table("sigs").create({"path": str, "sig": str}, pk=("path", "sig"), if_not_exists=True)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


#: lookups by NAR hash (a registry's ``by_nar_hash``, ``kiln serve --store``)
NAR_HASH_INDEX = "paths_nar_hash"


def upgrade(conn: Connection) -> None:
    """Add what databases made by an older kiln lack: ``NAR_HASH_INDEX`` and the
    ``paths.ultimate`` column (``madehere``). Both are part of the schema of new ones, so no
    version change: an older kiln opens the file as before (and the rows it inserts get
    NULL: unknown, which counts as not made here). Skipped for now, and tried at the next
    open, if the database cannot be written (read-only, a full disk) or stays busy for a
    second; meanwhile this connection registers paths without the column (``ultimate``
    False: those rows read as unknown too)."""
    # (reads the schema pages)
    index = conn.execute("SELECT 1 FROM sqlite_master WHERE name=?", (NAR_HASH_INDEX,)).fetchone()
    if index is not None and has_ultimate(conn):
        return
    conn.execute("PRAGMA busy_timeout=1000")
    try:
        with transaction(conn):
            conn.execute(f"CREATE INDEX IF NOT EXISTS {NAR_HASH_INDEX} ON paths(nar_hash)")
            if not has_ultimate(conn):  # (re-checked under the write lock: another may have)
                conn.execute("ALTER TABLE paths ADD COLUMN ultimate INTEGER")
    except sqlite3.OperationalError:
        pass
    finally:
        conn.execute("PRAGMA busy_timeout=60000")
    conn.ultimate = has_ultimate(conn)


def has_ultimate(conn: sqlite3.Connection) -> bool:
    return any(row[1] == "ultimate" for row in conn.execute("PRAGMA table_info(paths)"))
