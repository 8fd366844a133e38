"""Fresh temp directories for builds, made ahead of time.

Each build runs in its own ``<store root>/tmp/build-<random>/`` holding an empty
``build/`` (the sandbox's ``/build``), an empty ``store/`` (the scratch store dir) and
an empty ``build.log`` (``LOG_NAME``, which the build's log is written to). Making them
is three mkdirs and a file creation on the build's critical path, and on ext4 under a
busy journal each can wait milliseconds; so while one build runs, the bookkeeping
thread makes the next one's (``prepare``). A directory is handed out once (``take``) and
removed with ``release``; ready ones nobody took are removed by ``discard``.

Ownership: every such directory (and ``--check``'s ``check-*``) is ``flock``ed by the
process using it, from the moment it exists (made under the shared GC lock, so a
collector never sees it unlocked) until it is gone. The garbage collector removes the
``build-*``/``check-*`` directories whose lock it can take: their owner died (kill -9,
a crash) without cleaning up, and each can hold a whole build tree.

ACLs: a default POSIX ACL on the store's ``tmp/`` (``setfacl -d -m o::--- tmp``) would be
inherited by every directory made below it and, in a directory that has one, replaces
the umask for new files: the build's pinned umask would no longer decide its files'
modes (644 came out 600), and a harsher one (``d:u::rw-``) made builds fail. Every
directory made here is stripped of its ACLs (``plain_dir``), so nothing below it
inherits one. They are removed rather than refused: the parent directories are 0700, so
an ACL meant to keep others out of ``tmp/`` loses nothing by it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from pathlib import Path

from .errors import StoreError
from .locks import FileLock
from .perms import strip_acls

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

#: the build log's file in a build's directory
LOG_NAME = "build.log"


def plain_dir(d: Path, mode: int) -> None:
    """Make ``d`` if it is missing and leave it a directory of exactly ``mode`` with no
    POSIX ACL (see the module docstring): not the invoking shell's umask, nor an ACL
    inherited from a parent. A file system without ACLs is fine; ``StoreError`` if an
    ACL cannot be removed."""
    d.mkdir(exist_ok=True)
    _strip_acls(d, mode)


def _strip_acls(d: Path, mode: int) -> None:
    """``plain_dir`` for the existing directory ``d`` (``perms.strip_acls``)."""
    try:
        strip_acls(d, mode)
    except OSError as e:
        raise StoreError(f"cannot remove the ACL of {d}: {e.strerror}") from None


def plain_subdir(d: Path, mode: int) -> None:
    """Make the new directory ``d`` of exactly ``mode`` inside a directory ``plain_dir``
    (or ``owned_tmpdir``) made: that parent has no default ACL, so ``d`` inherits none
    and, unlike ``plain_dir``, nothing is removed (two system calls fewer per
    directory). ``FileExistsError`` if ``d`` exists: a directory found there may carry
    anything."""
    os.mkdir(d, 0o700)
    os.chmod(d, mode)  # (not the umask's)


def owned_tmpdir(parent: Path, prefix: str, gc_lock: Path | None) -> tuple[Path, int]:
    """A new 0700 directory with no ACL (``plain_dir``) under ``parent`` and an fd holding
    an exclusive ``flock`` on it (close the fd after removing the directory: see
    ``release_tmpdir``)."""
    with FileLock(gc_lock, shared=True) if gc_lock is not None else contextlib.nullcontext():
        try:
            d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        except FileNotFoundError:  # (made on first use: not a mkdir per build)
            parent.mkdir(parents=True, exist_ok=True)
            d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        fd = os.open(d, _DIR_FLAGS)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        _strip_acls(d, 0o700)  # (``plain_dir``: everything below inherits nothing from ``parent``'s ACL)
    except BaseException:
        release_tmpdir(d, fd)
        raise
    return d, fd


def release_tmpdir(d: Path, fd: int) -> None:
    """Remove an ``owned_tmpdir`` (to the end even if a signal comes meanwhile, then its
    exception is raised: ``sigshield.finish``), then drop its lock."""
    from .sigshield import finish
    from .trees import remove_tree  # read-only trees (a rebuilt output) included

    try:
        with contextlib.suppress(OSError, StoreError):
            finish(lambda: remove_tree(d))
    finally:
        os.close(fd)


def take_if_owner_gone(d: str) -> int | None:
    """An open descriptor of directory ``d`` holding its owner lock, if nobody held it
    (its owner is gone: the caller now owns it, until it closes the descriptor); None if
    its owner is alive or ``d`` cannot be opened (gone, not a directory, a symlink)."""
    try:
        fd = os.open(d, _DIR_FLAGS)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def owner_gone(d: str) -> bool:
    """True if nobody holds ``d``'s lock (for the collector; ``d`` a directory)."""
    fd = take_if_owner_gone(d)
    if fd is None:
        return False
    os.close(fd)
    return True


class BuildDirs:
    """Hands out fresh build temp dirs under ``tmp_root`` (thread-safe); ``gc_lock`` is
    the store's GC lock file (see the module docstring)."""

    def __init__(self, tmp_root: Path, gc_lock: Path | None = None) -> None:
        self.tmp_root = tmp_root
        self.gc_lock = gc_lock
        self._ready: list[Path] = []
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    def _make(self) -> Path:
        d, fd = owned_tmpdir(self.tmp_root, "build-", self.gc_lock)
        with self._lock:
            self._fds[d] = fd
        for sub in ("build", "store"):
            # the build's /build and store dir: 0755 whatever kiln's umask or an ACL (a
            # build that records its directories' modes must not depend on the host)
            plain_subdir(d / sub, 0o755)
        os.close(os.open(d / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        return d

    def take(self) -> Path:
        """A fresh directory with empty ``build/`` and ``store/`` (0755, no ACL: ready
        for ``sandboxrun.make_spec(..., dirs_made=True)``) and an empty ``LOG_NAME``: a
        prepared one if there is one, else made now."""
        with self._lock:
            if self._ready:
                return self._ready.pop()
        return self._make()

    def prepare(self) -> None:
        """Make one directory for a later ``take``."""
        d = self._make()
        with self._lock:
            self._ready.append(d)

    def release(self, d: Path) -> None:
        """Remove a directory ``take`` gave out (and drop its lock); nothing if it is gone
        already (``release_all``)."""
        with self._lock:
            fd = self._fds.pop(d, None)
        if fd is not None:
            release_tmpdir(d, fd)

    def discard(self) -> None:
        """Remove the prepared directories nobody took."""
        with self._lock:
            ready, self._ready = self._ready, []
        for d in ready:
            self.release(d)

    def release_all(self) -> None:
        """Remove every directory still held, taken or not: after ^C, those of builds that
        did not unwind in time (an in-process download cannot be cancelled; its partial
        file goes with its directory, while it may still be writing to it)."""
        with self._lock:
            held, self._ready = list(self._fds), []
        for d in held:
            self.release(d)
