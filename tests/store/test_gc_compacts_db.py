"""``kiln store gc`` gives the database's free pages back (``store/dbcompact.py``).

SQLite keeps the pages of deleted rows on its freelist, so before, a store that had
registered and then collected thousands of paths kept a ``db.sqlite`` of its biggest
size for ever. A collection that leaves a large share of the file free now rewrites it
(``VACUUM``) and says how many bytes it gave back; a reader that started before goes on
reading its snapshot meanwhile, and a database the compaction cannot lock is left as it
was, with a warning, the collection done."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from storekit import run_py

from kiln.store import dbcompact
from kiln.store.gc import collect
from kiln.store.localstore import LocalStore

#: enough small paths that their rows are well over ``dbcompact.MIN_FREE_BYTES`` (~490
#: bytes of database each)
MANY = 4000


def _store_with_garbage(root: Path) -> tuple[str, int]:
    """A store at ``root`` holding ``MANY`` unrooted text paths and one rooted one (its
    path); closed, so ``db.sqlite`` is all there is of the database. Also its size."""
    s = LocalStore.open(root)
    infos = s.add_texts([("kept", b"kept\n", [])] + [(f"t{i}", b"x" * i, []) for i in range(MANY)])
    s.add_root("kept", infos[0].path)
    s.close()
    return infos[0].path, os.path.getsize(root / "db.sqlite")


def _gc(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln", "store", "gc", "--store", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_gc_shrinks_the_database_file(tmp_path: Path):
    root = tmp_path / "store"
    kept, before = _store_with_garbage(root)
    assert before > 1.5 * dbcompact.MIN_FREE_BYTES
    r = _gc(root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == MANY
    assert "the database gave back" in r.stderr and "warning" not in r.stderr, r.stderr
    freed = int(r.stderr.rsplit("(", 1)[1].split(" bytes")[0])
    after = os.path.getsize(root / "db.sqlite")
    assert after < before / 4 and freed >= before - after - 4096
    with LocalStore.open(root, create=False) as s:
        assert s.is_valid(kept) and len(s.all_paths()) == 1
        assert s.verify().ok
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # nothing more to give back: the next collection leaves the file as it is
    again = _gc(root)
    assert again.returncode == 0 and "gave back" not in again.stderr, again.stderr
    assert os.path.getsize(root / "db.sqlite") == after


#: a reader that starts a read transaction, says what it sees, waits for a line on stdin
#: (the collection runs meanwhile), reads again in the same transaction, then afresh
_READER = """
import sys
from pathlib import Path
from kiln.store import db
c = db.connect(Path(sys.argv[1]))
c.execute("BEGIN")
print(*c.execute("SELECT count(*), sum(nar_size) FROM paths").fetchone(), flush=True)
sys.stdin.readline()
print(*c.execute("SELECT count(*), sum(nar_size) FROM paths").fetchone(), flush=True)
c.execute("COMMIT")
print(c.execute("SELECT count(*) FROM paths").fetchone()[0], flush=True)
print(c.execute("PRAGMA integrity_check").fetchone()[0], flush=True)
c.close()
"""


def test_a_reader_of_an_older_snapshot_is_not_disturbed(tmp_path: Path):
    root = tmp_path / "store"
    _, before = _store_with_garbage(root)
    reader = run_py(
        _READER, str(root / "db.sqlite"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout is not None and reader.stdin is not None
        seen = reader.stdout.readline().split()
        assert seen[0] == str(MANY + 1)
        # (a gc waiting for the reader would wait for ever: the subprocess timeout fails it)
        r = _gc(root)
        assert r.returncode == 0 and "the database gave back" in r.stderr, r.stderr
        reader.stdin.write("go\n")
        reader.stdin.flush()
        assert reader.stdout.readline().split() == seen  # its snapshot, whole
        assert reader.stdout.readline().strip() == "1"  # then the collected database
        assert reader.stdout.readline().strip() == "ok"
        assert reader.wait(60) == 0
    finally:
        reader.kill()
        reader.wait()
    # the last connection closed: the file has shrunk
    assert os.path.getsize(root / "db.sqlite") < before / 4


def test_a_database_it_cannot_lock_is_left_as_it_was(tmp_path: Path, monkeypatch):
    root = tmp_path / "store"
    kept, before = _store_with_garbage(root)
    monkeypatch.setattr(dbcompact, "WRITE_WAIT", 100)  # (ms; 5 s otherwise)
    writer = sqlite3.connect(root / "db.sqlite", isolation_level=None)

    def hold_the_write_lock(done: int, total: int) -> None:
        # (called while the trash is emptied: the rows are deleted, the VACUUM not begun)
        if not writer.in_transaction:
            writer.execute("BEGIN IMMEDIATE")

    with LocalStore.open(root, create=False) as s:
        r = collect(s, progress=hold_the_write_lock)
        assert writer.in_transaction
        assert len(r.deleted) == MANY and r.db_bytes_freed == 0
        assert [k for k in r.kept if "db.sqlite at its size: VACUUM failed" in k], r.kept
        writer.execute("ROLLBACK")
        assert s.all_paths() == [kept] and s.verify().ok
    writer.close()
    assert os.path.getsize(root / "db.sqlite") >= before  # (not compacted)
    assert _gc(root).returncode == 0  # the next collection does it
    assert os.path.getsize(root / "db.sqlite") < before / 4
