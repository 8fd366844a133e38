"""Another user reading root's store. On read-only media (a read-only bind here) it reads:
every read failed "Permission denied: <store>/gc.lock" before, as that lock is 0600 (so
that others cannot hold GC off) and reads take it shared. Where the store is writable
(by root only), opening it fails saying why: SQLite's "attempt to write a readonly
database" said nothing of the directory this user cannot write in.

As user 65534 in a forked child (``setuid``): what the child runs is imported and run
once as root first, since a lazy import could need files under /root it cannot read.
Real bind mounts (root)."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from storekit import make_tree
from test_read_only_store import read_only_view

from kiln.store.errors import StoreError
from kiln.store.localstore import LocalStore

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bind mounts, setuid)")


@pytest.fixture
def top() -> Iterator[Path]:
    """A directory user 65534 can reach (pytest's own are 0700), holding root's store at
    ``rw`` with one path."""
    try:
        pwd.getpwuid(NOBODY)
    except KeyError:
        pytest.skip(f"no user {NOBODY}")
    d = Path(tempfile.mkdtemp(prefix="kiln-test-other-user-", dir="/tmp"))
    try:
        d.chmod(0o755)
        with LocalStore.open(d / "rw") as s:
            s.add_path(make_tree(d / "src", {"a.txt": "A\n"}), "tool")
        yield d
    finally:
        shutil.rmtree(d)


def _as_nobody(fn: Callable[[], None]) -> int:
    """``fn()`` run as user 65534 in a forked child: 0 if it returned (else its traceback
    on stderr, 1)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn()
            code = 0
        except BaseException:  # noqa: BLE001 - reported by the exit status
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_root_s_store_on_read_only_media_is_read_by_another_user(top: Path) -> None:
    def read(root: Path = top / "ro") -> None:
        with LocalStore.open(root) as s:
            assert s.read_only is not None
            [p] = [x for x in s.all_paths() if x.endswith("-tool")]
            with s.temp_root([p]):  # (the GC lock: 0600, root's; not taken)
                assert (s.real_path(p) / "a.txt").read_text() == "A\n"
            assert b"".join(s.nar(p))
            assert s.verify().ok  # (takes the GC lock shared too)

    with read_only_view(top / "rw", top / "ro"):
        read()  # (as root: every lazy import done)
        assert _as_nobody(read) == 0


def _refused_saying(root: Path, *says: str) -> Callable[[], None]:
    """What a child runs: opening the store at ``root`` must fail saying each of ``says``
    (``AssertionError("opened")`` if it opens)."""

    def open_it() -> None:
        try:
            LocalStore.open(root).close()
        except StoreError as e:
            msg = str(e)
            assert all(x in msg for x in says), msg
            return
        raise AssertionError("opened")

    return open_it


def test_root_s_writable_store_refuses_another_user_saying_why(top: Path) -> None:
    open_it = _refused_saying(
        top / "rw",
        f"this user, uid {NOBODY}, cannot write in {top / 'rw'}",
        "it belongs to uid 0; open the store as its owner",
    )
    with pytest.raises(AssertionError, match="opened"):
        open_it()  # (as root: it opens; every lazy import done)
    assert _as_nobody(open_it) == 0


def test_another_user_s_store_on_read_only_media_is_refused_with_advice_that_can_be_followed(
    top: Path,
) -> None:
    """A store a non-root user owns is refused to nobody even read-only (its owner could
    have changed it); the advice to chown it says where that can be done, not on the
    read-only mount where chown fails."""
    for dirpath, dirnames, filenames in os.walk(top / "rw"):
        for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
            os.lchown(n, 1234, 1234)

    open_it = _refused_saying(
        top / "ro", f"{top / 'ro'}: owned by uid 1234", "where it is writable, before it is mounted read-only"
    )
    with read_only_view(top / "rw", top / "ro"):
        assert _as_nobody(open_it) == 0
