"""The store's reserved space (``store/reserve.py``): ``kiln store gc`` runs on a disk
with no byte free, and frees what is dead.

Each test makes a real ext4 file system in a loop-mounted image (``test_full_disk``'s
helpers: root and a loop device, else skipped), fills it with ``fallocate`` and runs the
``kiln`` command against a store on it, as a user whose disk filled up would."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from fskit import fill, small_file_system
from test_full_disk import _kiln

from kiln.store.reserve import DEFAULT_RESERVED


def _free(mnt: Path) -> int:
    os.sync()
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def _fill_up(mnt: Path) -> None:
    """Take every free byte of ``mnt`` (``_fill`` may leave the last few blocks)."""
    fill(mnt)
    for i in range(1024):
        if _free(mnt) == 0:
            return
        with open(mnt / f"filler-block{i}", "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, 4096)
            except OSError:
                return


def _allocated(p: Path) -> int:
    return os.stat(p).st_blocks * 512


def _holds(p: Path, size: int) -> bool:
    """``p`` has ``size`` bytes allocated: ext4 may count a block or a few more, for the
    extent tree of a file it had to allocate in many pieces (a fragmented file system)."""
    return os.stat(p).st_size == size and size <= _allocated(p) <= size + (64 << 10)


def _add(home: Path, src: Path, n: int, size: int) -> list[str]:
    """``n`` paths of ``size`` random (incompressible) bytes each, unrooted."""
    out = []
    for i in range(n):
        d = src / f"p{i}"
        d.mkdir(parents=True)
        (d / "f").write_bytes(os.urandom(size))
        r = _kiln("store", "add", str(d), home=home)
        assert r.returncode == 0, r.stderr
        out.append(r.stdout.strip())
    return out


def _rows(home: Path) -> int:
    with sqlite3.connect(home / "db.sqlite") as conn:
        return conn.execute("SELECT count(*) FROM paths").fetchone()[0]


def _set_reserved(home: Path, value: object) -> None:
    cfg = home / "config.json"
    data = json.loads(cfg.read_text())
    data["reserved"] = value
    cfg.write_text(json.dumps(data))


def test_gc_on_a_disk_with_no_byte_free_frees_the_dead_paths_and_keeps_its_reserve(tmp_path: Path) -> None:
    with small_file_system(tmp_path, 64) as mnt:
        home = mnt / "home"
        dead = _add(home, tmp_path / "src", 3, 3 << 20)
        (live,) = _add(home, tmp_path / "live", 1, 1 << 10)
        assert _kiln("store", "add-root", "r", live, home=home).returncode == 0
        assert _holds(home / "reserved", DEFAULT_RESERVED), _allocated(
            home / "reserved"
        )  # (made by the first open)
        _fill_up(mnt)
        assert _free(mnt) == 0
        r = _kiln("store", "add", str(tmp_path / "live"), home=home)  # no room: said so
        assert r.returncode == 1 and "is full" in r.stderr and "'kiln store gc' can run" in r.stderr, r.stderr

        r = _kiln("store", "gc", home=home)
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.split()) == sorted(dead)
        # the dead paths' objects and trees are gone, and the reserve is back (8 MiB of the
        # space GC had), allocated
        assert _free(mnt) > 3 * (3 << 20)
        assert _holds(home / "reserved", DEFAULT_RESERVED), _allocated(home / "reserved")
        assert not list((home / "tmp").iterdir())
        r = _kiln("store", "verify", home=home)
        assert r.returncode == 0 and "checked 1 paths: 0 problem(s)" in r.stdout, r.stdout + r.stderr


def test_gc_that_frees_nothing_on_a_full_disk_leaves_the_reserve_for_the_next(tmp_path: Path) -> None:
    with small_file_system(tmp_path) as mnt:
        home = mnt / "home"
        (live,) = _add(home, tmp_path / "src", 1, 1 << 10)
        assert _kiln("store", "add-root", "r", live, home=home).returncode == 0
        _fill_up(mnt)
        for _ in range(2):
            r = _kiln("store", "gc", home=home)
            assert r.returncode == 0, r.stderr
            assert "deleted 0 paths" in r.stderr
            # (all of it but what SQLite's -wal and -shm held while GC ran)
            assert _allocated(home / "reserved") >= DEFAULT_RESERVED - (1 << 20)
        assert _free(mnt) < 2 << 20


def test_info_and_verify_read_a_store_on_a_full_disk(tmp_path: Path) -> None:
    """Neither can make SQLite's -shm there: they open the database in exclusive locking
    mode instead, and ``info`` keeps its path from GC without writing a temp root."""
    with small_file_system(tmp_path) as mnt:
        home = mnt / "home"
        (path,) = _add(home, tmp_path / "src", 1, 1 << 10)
        _fill_up(mnt)
        assert _free(mnt) == 0
        r = _kiln("store", "info", path, home=home)
        assert r.returncode == 0 and f"path:          {path}" in r.stdout, r.stderr
        r = _kiln("store", "verify", home=home)
        assert r.returncode == 0 and "checked 1 paths: 0 problem(s)" in r.stdout, r.stderr
        r = _kiln("store", "info", "/kiln/store/" + "0" * 32 + "-nope", home=home)
        assert r.returncode == 1 and "is not valid" in r.stderr, r.stderr


def test_a_store_with_less_room_than_the_reserve_opens_and_works_without_one(tmp_path: Path) -> None:
    with small_file_system(tmp_path) as mnt:
        home = mnt / "home"
        assert _kiln("store", "init", home=home).returncode == 0
        (home / "reserved").unlink()
        # 12 MiB free: a reserve of 8 would leave less than its own size free
        fill(mnt, leave=12 << 20)
        assert 8 << 20 < _free(mnt) < 16 << 20
        (path,) = _add(home, tmp_path / "src", 1, 1 << 20)
        assert not (home / "reserved").exists()
        r = _kiln("store", "info", path, home=home)
        assert r.returncode == 0, r.stderr
        assert _kiln("store", "verify", home=home).returncode == 0
        assert not (home / "reserved").exists()
        # a GC that found no reserve and freed nothing takes none of the space left
        assert _kiln("store", "add-root", "r", path, home=home).returncode == 0
        r = _kiln("store", "gc", home=home)
        assert r.returncode == 0 and "deleted 0 paths" in r.stderr, r.stderr
        assert not (home / "reserved").exists()
        for f in mnt.glob("filler*"):
            f.unlink()
        assert _kiln("store", "verify", home=home).returncode == 0  # room again: made
        assert _holds(home / "reserved", DEFAULT_RESERVED), _allocated(home / "reserved")


def test_the_reserve_follows_the_config(tmp_path: Path) -> None:
    with small_file_system(tmp_path) as mnt:
        home = mnt / "home"
        assert _kiln("store", "init", home=home).returncode == 0
        assert _holds(home / "reserved", DEFAULT_RESERVED), _allocated(home / "reserved")
        _set_reserved(home, 1 << 20)
        assert _kiln("store", "verify", home=home).returncode == 0
        assert _holds(home / "reserved", 1 << 20), _allocated(home / "reserved")
        assert os.stat(home / "reserved").st_size == 1 << 20
        _set_reserved(home, 0)  # none: the one there is deleted, GC makes none
        assert _kiln("store", "verify", home=home).returncode == 0
        assert not (home / "reserved").exists()
        assert _kiln("store", "gc", home=home).returncode == 0
        assert not (home / "reserved").exists()
        _set_reserved(home, "8M")
        r = _kiln("store", "verify", home=home)
        assert r.returncode == 1 and "'reserved' must be a whole number of bytes" in r.stderr, r.stderr


def test_without_a_reserve_a_gc_whose_trash_cannot_be_made_deletes_no_row(tmp_path: Path) -> None:
    """The trash (``tmp/gc-*``) is made before any row is deleted: a GC that cannot make
    it stops with every dead path still valid, not unregistered with its files in place."""
    with small_file_system(tmp_path) as mnt:
        home = mnt / "home"
        assert _kiln("store", "init", home=home).returncode == 0
        _set_reserved(home, 0)
        dead = _add(home, tmp_path / "src", 2, 1 << 20)
        # a connection held open keeps SQLite's -wal and -shm (and their space), and a
        # large transaction, checkpointed, leaves the WAL that long: on the full disk, GC's
        # open and its deletion of the rows (written over the WAL's first pages) succeed,
        # and its mkdir is what fails (as on a disk with a few KiB free)
        keep = sqlite3.connect(home / "db.sqlite", isolation_level=None)
        try:
            assert keep.execute("SELECT count(*) FROM paths").fetchone()[0] == 2
            keep.execute("CREATE TABLE pad(x)")
            keep.execute("INSERT INTO pad VALUES (zeroblob(1 << 20))")
            keep.execute("DROP TABLE pad")
            assert keep.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
            assert os.stat(home / "db.sqlite-wal").st_size > 1 << 20
            _fill_up(mnt)
            assert _free(mnt) == 0
            r = _kiln("store", "gc", home=home)
            assert r.returncode == 1, r.stdout + r.stderr
            assert "No space left on device" in r.stderr and "/tmp/gc-" in r.stderr, r.stderr
            assert _rows(home) == 2
            for p in dead:
                assert (home / p.lstrip("/")).is_dir()
            for f in mnt.glob("filler*"):
                f.unlink()
            r = _kiln("store", "gc", home=home)
            assert r.returncode == 0 and sorted(r.stdout.split()) == sorted(dead), r.stderr
            assert _rows(home) == 0
        finally:
            keep.close()
