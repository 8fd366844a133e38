"""What GC and registration do with a ``temproots/`` entry that is not a temp-roots file
kiln wrote (``temprootscan.temp_root_files``): a FIFO is not waited on (GC would hang holding
the exclusive GC lock, and every writer with it), a link to ``/dev/zero`` is not read
until memory runs out, a directory does not crash GC — and none of it costs a live
process its roots. A live process's file too large to read fails GC rather than losing
that process's roots."""

from __future__ import annotations

import fcntl
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.store.errors import StoreError
from kiln.store.fileopen import FileTooLarge, open_regular_fd, read_capped
from kiln.store.localstore import LocalStore

#: the address space of a child that must not read ``/dev/zero`` whole: enough for kiln,
#: small enough that such a read fails at once (MemoryError) instead of swapping
_CHILD_MEMORY = 2 << 30


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_CHILD_MEMORY, _CHILD_MEMORY))


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` run by another Python process (so our own flocks count as another
    process's), 30 s and ``_CHILD_MEMORY`` at most."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_limited,
    )


_GC = """
import sys
from kiln.store.localstore import LocalStore
s = LocalStore.open(sys.argv[1])
r = s.gc(dry_run=sys.argv[2] == "dry")
print("deleted", *r.deleted)
"""

_ROOTER = """
import sys
from kiln.store.temprootscan import live_rooter
print("rooter", live_rooter(__import__("pathlib").Path(sys.argv[1]), sys.argv[2]))
"""


@pytest.mark.parametrize("junk", ["fifo", "directory", "link-to-dev-zero"])
def test_junk_in_temproots_neither_hangs_nor_crashes_gc_and_keeps_live_roots(
    tmp_path: Path, junk: str
) -> None:
    root = tmp_path / "st"
    temproots = root / "temproots"
    with LocalStore.open(root) as s, open("/dev/zero", "rb") as zero:
        kept = s.add_text("kept", b"mine", []).path  # a temp root of this (live) process
        if junk == "fifo":
            os.mkfifo(temproots / "junk")
        elif junk == "directory":
            (temproots / "junk").mkdir()
        else:
            os.symlink("/dev/zero", temproots / "junk")
            # someone holds a lock on /dev/zero: a probe through the link finds it "alive"
            fcntl.flock(zero, fcntl.LOCK_EX)
        for mode in ("dry", "real"):
            r = _python(_GC, str(root), mode)
            assert r.returncode == 0, r.stderr[-2000:]
            assert kept not in r.stdout, r.stdout
        r = _python(_ROOTER, str(temproots), kept)
        assert r.returncode == 0 and f"rooter {os.getpid()}" in r.stdout, r.stderr[-2000:]
        assert s.is_valid(kept)
    assert os.path.lexists(temproots / "junk")  # left alone: neither read nor deleted


def test_a_live_temp_roots_file_too_large_to_read_fails_gc_and_deletes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "st"
    with LocalStore.open(root) as s:
        path = s.add_text("unrooted", b"x", []).path
    big = root / "temproots" / "99999999"
    with open(big, "wb") as f:
        f.truncate(6 << 30)  # sparse: costs nothing to make
        fcntl.flock(f, fcntl.LOCK_EX)  # its owner is alive
        r = _python(_GC, str(root), "real")
        assert r.returncode != 0 and "MemoryError" not in r.stderr, r.stderr[-2000:]
        assert f"temp-roots file {big} of a live process is too large" in r.stderr, r.stderr[-2000:]
    with LocalStore.open(root) as s:
        assert s.is_valid(path)


def test_read_capped_holds_to_the_cap_whatever_the_size_says() -> None:
    """``/proc`` files say size 0: the cap is enforced on what is read, not only on
    ``st_size`` (a file may also grow between the two)."""
    fd = open_regular_fd("/proc/self/status")
    try:
        assert os.fstat(fd).st_size == 0
        with pytest.raises(FileTooLarge, match="too large"):
            read_capped(fd, 100)
        assert len(read_capped(fd, 1 << 20)) > 100
    finally:
        os.close(fd)


@pytest.mark.parametrize("junk", ["symlink", "fifo"])
def test_a_process_refuses_junk_at_its_temp_roots_name(tmp_path: Path, junk: str) -> None:
    """Roots written through a link or into a FIFO would be roots GC never reads."""
    root = tmp_path / "st"
    LocalStore.open(root).close()
    name = root / "temproots" / str(os.getpid())
    target = tmp_path / "elsewhere"
    target.touch()
    if junk == "symlink":
        os.symlink(target, name)
    else:
        os.mkfifo(name)
    with LocalStore.open(root) as s, pytest.raises(StoreError, match="not a regular file kiln made"):
        s.keep([f"{s.store_dir}/{'a' * 32}-x"])
    assert target.read_bytes() == b""
