"""A source that changes while ``add_path`` reads it is refused, with the entry named and
"the source changed" said, and nothing is registered; never archived half old and half
new, never followed out of the tree (``treeplan.open_listed``, ``TreeIngest._regular``).

The change is made at a known moment through the path filter, which the listing calls
for each entry right after its ``lstat``: what the walk opens later is then no longer
what was listed. (Without the checks: a directory swapped for a symbolic link had the
link's target's files stored inside the path, a FIFO hung the add for ever, a device was
stored as an empty file, a directory gave an internal ``IsADirectoryError``.)"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fskit import bind_socket
from storekit import make_tree

from kiln.store import db
from kiln.store.errors import StoreError
from kiln.store.localstore import LocalStore


def _when_listed(entry: Path, change: Callable[[], None]) -> Callable[[str, str], bool]:
    """A filter keeping everything that makes ``change`` once, just after ``entry`` was
    listed (``lstat``-ed) and before the walk opens it."""
    done = []

    def keep(path: str, kind: str) -> bool:
        if path == str(entry) and not done:
            done.append(1)
            change()
        return True

    return keep


def _refused(store: LocalStore, src: Path, keep: Callable[[str, str], bool], entry: Path) -> str:
    with pytest.raises(StoreError) as e:
        store.add_path(src, filter=keep)
    msg = str(e.value)
    assert msg.startswith(f"{entry}: the source changed while it was being added"), msg
    assert db.all_infos(store.conn) == []
    return msg


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", {"a": "a\n", "zd/f": "inside\n", "z": "last\n"})


def test_a_directory_swapped_for_a_symlink_is_not_followed(
    store: LocalStore, src: Path, tmp_path: Path
) -> None:
    outside = make_tree(tmp_path / "secret", {"f": "TOPSECRET\n"})

    def swap() -> None:
        (src / "zd" / "f").unlink()
        (src / "zd").rmdir()
        (src / "zd").symlink_to(outside)

    msg = _refused(store, src, _when_listed(src / "zd", swap), src / "zd")
    assert "a directory when listed, now a symlink" in msg


def test_a_file_swapped_for_a_fifo_fails_at_once(store: LocalStore, src: Path) -> None:
    def swap() -> None:
        (src / "z").unlink()
        os.mkfifo(src / "z")

    result: list[BaseException | None] = []

    def add() -> None:
        try:
            _refused(store, src, _when_listed(src / "z", swap), src / "z")
            result.append(None)
        except BaseException as e:  # (reported below, in the test's thread)
            result.append(e)

    t = threading.Thread(target=add, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():  # unblock the open of the FIFO so the thread can end
        os.close(os.open(src / "z", os.O_WRONLY | os.O_NONBLOCK))  # (its reader is waiting)
        pytest.fail("the add hung on a FIFO put in place of a listed file")
    assert result == [None], result


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device needs root")
def test_a_file_swapped_for_a_device_is_refused(store: LocalStore, src: Path) -> None:
    def swap() -> None:
        (src / "z").unlink()
        os.mknod(src / "z", 0o644 | 0o020000, os.makedev(1, 5))  # /dev/zero's numbers

    msg = _refused(store, src, _when_listed(src / "z", swap), src / "z")
    assert "a regular file when listed, now a character device" in msg


def test_a_file_swapped_for_a_directory_is_named(store: LocalStore, src: Path) -> None:
    def swap() -> None:
        (src / "z").unlink()
        (src / "z").mkdir()

    msg = _refused(store, src, _when_listed(src / "z", swap), src / "z")
    assert "a regular file when listed, now a directory" in msg


def test_a_file_replaced_by_another_file_is_refused(store: LocalStore, src: Path) -> None:
    def swap() -> None:
        (src / "z.new").write_text("other\n")
        os.replace(src / "z.new", src / "z")

    msg = _refused(store, src, _when_listed(src / "z", swap), src / "z")
    assert "another regular file than the one listed" in msg


def test_an_entry_removed_after_listing_is_named(store: LocalStore, src: Path) -> None:
    msg = _refused(store, src, _when_listed(src / "z", (src / "z").unlink), src / "z")
    assert "gone when opened" in msg


def test_a_file_written_while_it_is_read_is_refused(store: LocalStore, tmp_path: Path) -> None:
    """A writer rewriting a 64 MiB file in place the whole time: the copy would mix old and
    new bytes (a state the file never had), so the add is refused."""
    src = make_tree(tmp_path / "big", {"a": b"\0" * (64 << 20)})
    stop = threading.Event()
    wrote = threading.Event()

    def writer() -> None:
        with open(src / "a", "r+b") as f:
            n = 0
            while not stop.is_set():
                f.seek((n * 4096 * 37) % (64 << 20))
                f.write(os.urandom(4096))
                f.flush()
                n += 1
                wrote.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        assert wrote.wait(10)
        with pytest.raises(StoreError) as e:
            store.add_path(src)
    finally:
        stop.set()
        t.join()
    assert str(e.value).startswith(f"{src / 'a'}: the source changed while it was being added")
    assert "written to while it was read" in str(e.value)
    assert db.all_infos(store.conn) == []
    # once nothing writes to it, it is added
    assert store.add_path(src).nar_size > 64 << 20


def test_a_file_swapped_for_a_socket_is_named(store: LocalStore, src: Path) -> None:
    """A socket cannot be opened (ENXIO): the error was a bare errno naming the path."""
    import socket

    sock = socket.socket(socket.AF_UNIX)

    def swap() -> None:
        (src / "z").unlink()
        bind_socket(sock, src / "z")

    try:
        msg = _refused(store, src, _when_listed(src / "z", swap), src / "z")
    finally:
        sock.close()
    assert "a regular file when listed, now a socket" in msg
