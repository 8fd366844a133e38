"""Markers of signing hooks still to run, so a build stopped after its commit is finished
by the next one.

Theory of operation: the build loop makes its outputs valid (the group commit) and only
then runs the ``after_build`` hook (signature, provenance) on its bookkeeping thread. A
process killed in between leaves a valid path nobody signs: planning never looks at a
valid path again. So before its outputs can be committed, a builder creates
``locks/<hash part>.hook`` for each and holds an ``flock`` on it until the hook has run;
then it deletes the file (a failed hook leaves it, to be run again).

A later build that reaches such an output reads the marker without creating it:
- no file: nothing pending (a substitute, or a hook that ran); anything but a regular
  file there (a directory...) is no marker either, never an error;
- locked: a live process will run the hook; leave it alone;
- free: its builder is gone (or its hook failed): run the hook if the path is valid,
  then delete the marker; a marker of a path never committed is just deleted.
A marker unlinked while being opened is seen by its link count (``st_nlink == 0``).

The invariant: a free marker on a valid path stands for exactly one thing, a hook that
did not finish for the build that committed the path, whatever part of it ran. The
path's signatures do not tell: a hook that failed after signing and before writing the
provenance leaves a signed path (``buildsched._finish_left_hooks`` runs the whole hook
again; it is idempotent). So a free marker must not outlive the build it belongs to: a
path that becomes valid by import (a substitute, ``kiln copy``) after its builder died
before the commit drops it (``drop_free``, called under the path's registration lock
before the row goes in, where the markers are judged too), else the next build would
sign that import as its own; GC drops the free markers of paths that are not valid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .locks import FileLock, remove_if_free
from .paths import StorePath

if TYPE_CHECKING:
    from .localstore import LocalStore

Mark = tuple[Path, int]  # (marker file, a descriptor holding its flock)

#: what opening something other than a regular file at a marker's name fails with (a
#: directory, a symbolic link, a socket): it is no marker
_NOT_A_MARKER = frozenset({errno.EISDIR, errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP, errno.ENOTDIR})


def _marker(store: LocalStore, path: str) -> Path:
    return Path(store.root) / "locks" / f"{StorePath.parse(path).hash_part}.hook"


def hold(store: LocalStore, paths: Iterable[str]) -> list[Mark]:
    """Create and lock the markers of ``paths``: their hook is pending in this process."""
    marks: list[Mark] = []
    try:
        for p in sorted(set(paths)):
            m = _marker(store, p)
            lock = FileLock(m)  # creates it; retries if it is unlinked while being locked
            lock.acquire()
            assert lock.fd is not None
            marks.append((m, lock.fd))
    except BaseException:
        release(marks, done=True)
        raise
    return marks


def hold_or_warn(store: LocalStore, paths: Iterable[str], say: Callable[[str], None]) -> list[Mark]:
    """``hold``, or [] with a warning if the markers cannot be made: the build goes on,
    only its hook would not be resumed after a kill."""
    try:
        return hold(store, paths)
    except OSError as e:
        say(f"warning: cannot mark the signing hook as pending ({e})")
        return []


def _is_file(m: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(m).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def any_left(store: LocalStore, paths: Iterable[str]) -> bool:
    """Whether any of ``paths`` has a marker (held or not): cheap (a stat each), for a
    command that would otherwise not look at valid paths at all. Only a regular file is
    a marker (see ``left_behind``)."""
    return any(_is_file(_marker(store, p)) for p in paths)


def left_behind(store: LocalStore, paths: Iterable[str]) -> list[Mark] | None:
    """The markers of ``paths`` whose owner is gone, locked now by this process; None if
    a live process holds one of them (its hook will run), [] if there are none. Only a
    regular file is a marker: anything else at a marker's name (a directory, a symbolic
    link, a FIFO: never made by kiln) is not one, and is left alone (a builder cannot
    hold its marker at a directory's name either: ``hold_or_warn`` warns)."""
    got: list[Mark] = []
    for p in sorted(set(paths)):
        m = _marker(store, p)
        try:
            # (O_NONBLOCK: a FIFO put there does not hang the open)
            fd = os.open(m, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno in _NOT_A_MARKER:
                continue
            release(got, done=False)
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            release(got, done=False)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            return None
        if os.fstat(fd).st_nlink == 0:  # its hook finished while we opened it
            os.close(fd)
            continue
        got.append((m, fd))
    return got


def release(marks: list[Mark], done: bool) -> None:
    """Let go of ``marks``; ``done``: the hook ran, delete them all before unlocking any
    (no one takes a finished marker for a pending one, and a kill in between leaves the
    rest locked by nobody only as long as it takes to unlink them)."""
    if done:
        for m, _ in marks:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(m)
    for _, fd in marks:
        os.close(fd)


def drop_free(store: LocalStore, paths: Iterable[str]) -> None:
    """Delete the markers of ``paths`` that nobody holds: they are being imported, so a
    builder that left such a marker died before its commit and has nothing to sign.
    The caller holds the paths' registration locks and makes them valid after this."""
    for p in paths:
        if _is_file(m := _marker(store, p)):  # (a directory there is no marker: see ``left_behind``)
            remove_if_free(m)


def is_marker(name: str) -> str | None:
    """The hash part a ``locks/`` entry named ``name`` is the hook marker of, or None."""
    return name[:-5] if name.endswith(".hook") and len(name) == 37 else None


@contextlib.contextmanager
def running(marks: list[Mark]) -> Iterator[None]:
    """Run a hook for ``marks``: deleted if it returns, kept (unlocked) if it raises."""
    try:
        yield
    except BaseException:
        release(marks, done=False)
        raise
    release(marks, done=True)
