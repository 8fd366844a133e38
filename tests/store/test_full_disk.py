"""A full, read-only or failing disk is reported as such: what failed, the file system,
how much is free and what to do, never SQLite's "cannot rollback" nor a traceback.

The file-system tests make a real ext4 file system (4 KiB blocks, as a real disk's) in
a loop-mounted image, so they need root and a loop device; they fill it with
``fallocate`` and run the ``kiln`` command against a store on it."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from fskit import fill, small_file_system

from kiln.store import db

KILN = [sys.executable, "-m", "kiln"]


def test_a_write_transaction_on_a_full_database_says_it_is_full(tmp_path: Path) -> None:
    """SQLite rolls a transaction back by itself when the disk is full; kiln's ROLLBACK
    then failed with "cannot rollback - no transaction is active", hiding the cause."""
    conn = db.connect(tmp_path / "db.sqlite")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")  # (the database file cannot grow: full)
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"), db._transaction(conn):
        conn.execute(
            "INSERT INTO paths (path, hash_part, nar_hash, nar_size, file_hash, file_size) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            ("/kiln/store/x" * 1000, "x" * 32, "h" * 5000, 1, "f" * 5000, 1),
        )
    assert not conn.in_transaction
    with db._transaction(conn):  # the connection is usable afterwards
        pass


class _FailingStream:
    """A stderr whose first write fails as a full disk's does (``2> file`` on it)."""

    def __init__(self) -> None:
        self.calls = 0

    def write(self, data: str) -> int:
        self.calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_message_that_cannot_be_written_ends_quietly_with_the_status(monkeypatch) -> None:
    from kiln.common import _Quiet, run_command
    from kiln.store.errors import StoreError

    stream = _FailingStream()
    monkeypatch.setattr(sys, "stderr", _Quiet(stream))

    def command(argv: list[str]) -> int:
        raise StoreError("no such path")

    assert run_command(command, ["x"]) == 1  # (no exception out of the reporter)
    assert stream.calls == 1  # then silent


def _kiln(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILN_HOME=str(home))
    return subprocess.run([*KILN, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_full_disk_is_named_with_what_to_do(tmp_path: Path) -> None:
    with small_file_system(tmp_path) as mnt:
        home = mnt / "home"
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_bytes(os.urandom(1 << 20))
        assert _kiln("store", "add", str(src), home=home).returncode == 0
        (src / "g").write_bytes(os.urandom(4 << 20))
        fill(mnt)
        r = _kiln("store", "add", str(src), home=home)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr and "cannot rollback" not in r.stderr
        assert f"the file system holding the store at {home} has" in r.stderr or "is full" in r.stderr, (
            r.stderr
        )
        assert "kiln store gc" in r.stderr or "free some space" in r.stderr, r.stderr
        for f in mnt.glob("filler*"):
            f.unlink()
        assert _kiln("store", "add", str(src), home=home).returncode == 0
        assert _kiln("store", "verify", home=home).returncode == 0


def test_a_read_only_store_says_it_is_read_only(tmp_path: Path) -> None:
    with small_file_system(tmp_path) as mnt:
        home = mnt / "home"
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_text("x")
        r = _kiln("store", "add", str(src), home=home)
        assert r.returncode == 0, r.stderr
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        try:
            # reading works (a read-only store opens for reading: dbreadonly); writing
            # says why it cannot
            path = r.stdout.strip()
            r = _kiln("store", "info", path, home=home)
            assert r.returncode == 0 and path in r.stdout, r.stderr
            r = _kiln("store", "add", str(src), "--name", "again", home=home)
            assert r.returncode == 1 and "read-only file system" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=False)


def test_key_generate_on_a_full_disk_leaves_no_half_pair(tmp_path: Path) -> None:
    """Room for the secret key's block and not the public key's: the command failed, yet
    left a secret key nobody saw (a rerun said it exists and never showed its public half)."""
    with small_file_system(tmp_path) as mnt:
        home = mnt / "home"
        assert _kiln("key", "generate", "first", home=home).returncode == 0  # (keys/ is made)
        keys = home / "keys"
        for leave in (4096, 0):
            fill(mnt, leave)
            r = _kiln("key", "generate", "knew", home=home)
            for f in mnt.glob("filler*"):
                f.unlink()
            if r.returncode == 0:
                continue  # (the fill left room for both)
            assert "Traceback" not in r.stderr
            assert not (keys / "knew.sec").exists() or (keys / "knew.pub").exists(), r.stderr
            assert "knew" in r.stderr, r.stderr  # (the file that could not be written)
            assert "no key was made" in r.stderr or not (keys / "knew.sec").exists(), r.stderr
            (keys / "knew.sec").unlink(missing_ok=True)
            (keys / "knew.pub").unlink(missing_ok=True)
        r = _kiln("key", "generate", "knew", home=home)
        assert r.returncode == 0, r.stderr
        assert (keys / "knew.sec").exists() and (keys / "knew.pub").exists()
