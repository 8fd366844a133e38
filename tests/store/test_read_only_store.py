"""A store on a read-only file system (read-only media, a read-only container layer, a
``mount -o ro,bind``) could not be read at all: every command failed "cannot open the
store database .../db.sqlite: unable to open database file", as SQLite makes the WAL's
``-wal`` and ``-shm`` at every open. Now it is opened for reading (``store.dbreadonly``:
immutable when no log holds changes, through a ``-wal`` and ``-shm`` left in place
otherwise, refused when a log cannot be read), its temp roots kept by holding the GC
lock (``store.readonlyroots``), and what would write it fails saying it is read-only.

Real read-only bind mounts (root), unmounted in a ``finally``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from storekit import make_tree

from kiln.store import db
from kiln.store.dbreadonly import ReadOnlyDatabase
from kiln.store.localstore import LocalStore
from kiln.store.locks import FileLock

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bind mounts)")


@contextlib.contextmanager
def read_only_view(src: Path, dst: Path) -> Iterator[Path]:
    """``src`` bind-mounted read-only at ``dst`` for the block."""
    dst.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(dst)], check=True)
        yield dst
    finally:
        if subprocess.run(["umount", str(dst)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(dst)], check=False)


@pytest.fixture
def rw(tmp_path: Path) -> dict[str, str]:
    """A store at ``tmp_path/rw`` with a tool, a text referring to it and a root."""
    s = LocalStore.open(tmp_path / "rw")
    try:
        tool = s.add_path(
            make_tree(tmp_path / "src", {"bin/hi": 'x:#!/bin/sh\necho hi "$@"\n', "a.txt": "A\n"}), "tool"
        )
        text = s.add_text("uses", f"{tool.path}\n".encode(), [tool.path])
        s.add_root("main", text.path)
    finally:
        s.close()
    return {"tool": tool.path, "text": text.path}


@pytest.fixture
def ro(tmp_path: Path, rw) -> Iterator[Path]:  # noqa: ANN001
    with read_only_view(tmp_path / "rw", tmp_path / "ro") as d:
        yield d


def kiln(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KILN_HOME": str(home)},
    )


def test_the_database_is_read_and_writing_it_is_refused_saying_why(ro, rw):
    conn = db.connect(ro / "db.sqlite")
    try:
        assert conn.read_only is not None
        assert db.is_valid(conn, rw["tool"]) and db.references(conn, rw["text"]) == [rw["tool"]]
        with pytest.raises(
            ReadOnlyDatabase, match=r"is on a read-only file system: it can be read, not changed"
        ):
            db.add_signatures(conn, rw["tool"], ["k:sig"])
    finally:
        conn.close()


def test_a_store_opened_read_only_reads_trees_and_objects(ro, rw):
    with LocalStore.open(ro) as s:
        assert s.read_only is not None
        assert s.closure([rw["text"]]) == [rw["tool"], rw["text"]]
        assert b"".join(s.nar(rw["tool"]))  # (the object, checked against its row)
        assert (s.real_path(rw["tool"]) / "a.txt").read_text() == "A\n"


def test_its_temp_roots_hold_the_gc_lock_instead_of_writing(tmp_path, ro, rw):
    """A GC of the same store through the writable mount waits while a path is held."""
    gc = FileLock(tmp_path / "rw" / "gc.lock")
    with LocalStore.open(ro) as s:
        with s.temp_root([rw["tool"]]):
            assert not gc.acquire(blocking=False)
        assert gc.acquire(blocking=False)
        gc.release()


def test_a_live_writers_log_is_read_not_lost(tmp_path, ro):
    """A writer on the writable side has committed a path into the ``-wal`` (its
    connection open: not checkpointed). ``immutable`` would not see it; the reader
    reads the log through the ``-shm`` left in place."""
    with LocalStore.open(tmp_path / "rw") as w:
        new = w.add_text("late", b"late\n", []).path
        assert (tmp_path / "rw" / "db.sqlite-wal").stat().st_size > 32
        with LocalStore.open(ro) as s:
            assert s.read_only is not None and s.is_valid(new)


_WRITE_AND_DIE = """
import os, sys
from pathlib import Path
from kiln.store.localstore import LocalStore
s = LocalStore.open(Path(sys.argv[1]))
print(s.add_text("orphan-log", b"x\\n", []).path, flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_log_that_cannot_be_read_there_is_refused_not_ignored(tmp_path, rw):
    """A writer killed with a committed row in its ``-wal``, the ``-shm`` gone: SQLite
    cannot read the log on a read-only file system, and ``immutable`` would lose the
    row. Refused, saying what to do; once opened where it is writable, it is read."""
    home = tmp_path / "rw"
    p = subprocess.run([sys.executable, "-c", _WRITE_AND_DIE, str(home)], capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    path = p.stdout.strip()
    (home / "db.sqlite-shm").unlink()
    assert (home / "db.sqlite-wal").stat().st_size > 32
    with read_only_view(home, tmp_path / "ro") as ro:
        with pytest.raises(
            ReadOnlyDatabase, match=r"write-ahead log \(db.sqlite-wal, .* bytes\) holds changes"
        ):
            LocalStore.open(ro)
        r = kiln(ro, "store", "roots")
        assert r.returncode == 1 and "open the store once where it can be written" in r.stderr, r.stderr
    LocalStore.open(home).close()  # (the log is merged)
    with read_only_view(home, tmp_path / "ro2") as ro, LocalStore.open(ro) as s:
        assert s.is_valid(path)


@pytest.mark.parametrize(
    "cmd",
    [
        pytest.param(("store", "info", "{tool}")),
        pytest.param(("store", "roots")),
        ("store", "ls", "{tool}"),
        ("store", "cat", "{tool}/a.txt"),
        ("store", "dump", "{tool}"),
        pytest.param(("store", "why", "{tool}")),
        pytest.param(("store", "verify")),
        ("run", "{tool}", "--", "hi", "there"),
        ("store", "diff", "{tool}", "{text}"),
        ("sbom", "{text}"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_read_commands_work(ro, rw, cmd):
    r = kiln(ro, *(a.format(**rw) for a in cmd))
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr


@pytest.mark.parametrize(
    "cmd",
    [
        ("store", "add", "{src}", "--name", "new"),
        ("store", "gc"),
        ("store", "add-root", "other", "{tool}"),
        ("store", "remove-root", "main"),
        ("store", "sign", "--key", "{key}", "{tool}"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_what_would_write_fails_saying_the_store_is_read_only(tmp_path, ro, rw, cmd):
    r = kiln(tmp_path / "keyhome", "key", "generate", "k")
    assert r.returncode == 0, r.stderr
    names = {**rw, "src": str(tmp_path / "src"), "key": str(tmp_path / "keyhome" / "keys" / "k.sec")}
    r = kiln(ro, *(a.format(**names) for a in cmd))
    assert r.returncode == 1, r.stderr
    assert "is on a read-only file system" in r.stderr and "Traceback" not in r.stderr, r.stderr
    if cmd[1] == "remove-root":  # (the file named by its path, not the root's bare name)
        assert f"{ro / 'gcroots' / 'main'}" in r.stderr, r.stderr


def test_a_recipe_s_path_source_is_hashed_not_added(tmp_path, ro):
    """``kiln path``/``eval`` of a recipe with a local ``path`` source: the source is
    hashed as with no store (the same path), not added (which failed: "cannot add path
    './src' to the store: Read-only file system")."""
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "a.txt").write_text("a\n")
    (proj / "r.recipe").write_text(
        'package p {\n  version = "1.0"\n  src = path "./src"\n  build = "cp -r ${src} $out"\n}\n'
    )
    recipe = str(proj / "r.recipe")
    want = kiln(tmp_path / "no-store", "path", "--no-cache", recipe, "p")
    assert want.returncode == 0 and want.stdout.startswith("/kiln/store/"), want.stderr
    for args in (["path", "--no-cache", recipe, "p"], ["eval", "--no-cache", recipe]):
        r = kiln(ro, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert want.stdout.strip() in r.stdout, (args, r.stdout)
