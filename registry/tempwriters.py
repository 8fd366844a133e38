"""Temp files of a ``FileStorage`` directory and the writers that make them.

Every process that writes a directory (``kiln
serve`` and each of its workers, ``kiln push --to file://``, ``kiln mirror sync``, ``kiln
copy``) first takes a *writer lock*: an exclusive ``flock`` on its own
``.kiln/writers/<id>.lock`` (``id`` random, one per process and directory), held until the
process ends. Its temp files are named ``.kiln/tmp/up-<pid>-<id>-...``. The kernel drops the
lock when the process dies, ``kill -9`` included, so ``sweep`` can tell exactly which
temp files a dead writer left: those whose writer lock it can take. No age, and no pid
(which a container's PID 1, or a reused pid, makes look alive) is involved. That holds
where an ``flock`` nobody holds means no process anywhere holds it: local file systems
(``flock_is_exact``). Elsewhere (NFS, SMB, FUSE...), and for temp files without a writer id
(named ``up-<pid>-...`` by older kiln, or where the lock could not be taken), a file also has
to pass the old guess (``locks.left_by_dead_writer``: pid gone and an hour old).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import fcntl
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kiln.store.locks import DEAD_WRITER_MIN_AGE, left_by_dead_writer
from kiln.store.mounts import mount_table
from kiln.store.perms import make_dir

#: a temp file: ``up-<writer pid>-<writer id>-...``, or ``up-<writer pid>-...`` when its writer
#: holds no writer lock (older kiln; no flock there) (``sweep``)
_TEMP_NAME = re.compile(r"up-(\d+)-(?:([0-9a-f]{16})-)?")
#: a writer lock file in ``.kiln/writers``
_LOCK_NAME = re.compile(r"([0-9a-f]{16})\.lock\Z")
#: how often a long-running writer (``kiln serve``) should sweep (``FileStorage.sweep_temp``), in seconds
SWEEP_EVERY = 600.0


def sweep(tmp: Path, writers: Path) -> int:
    """Remove the temp files in ``.kiln/tmp`` that writers which died left (kill -9 of
    a server, a push or a sync mid-upload), and the writer lock files of dead writers
    that have none left. Exact where ``flock_is_exact`` (see the module docstring): a
    temp file goes as soon as its writer lock is free, and one whose writer holds its
    lock stays, however old and whatever its pid. Elsewhere, and for a temp file with
    no writer id, it must also pass the old guess (``locks.left_by_dead_writer``: pid
    gone, an hour old); a held writer lock still keeps it. Safe at any time, beside
    live writers and other sweeps. Returns how many temp files went."""
    now, gone = time.time(), 0
    exact: bool | None = None  # (the mount table is read only when a lock is free)
    by_writer: dict[str | None, list[tuple[os.DirEntry, int | None]]] = {}
    for e in _scan(tmp):
        m = _TEMP_NAME.match(e.name)
        by_writer.setdefault(m.group(2) if m else None, []).append((e, int(m.group(1)) if m else None))
    for e in _scan(writers):  # (also the lock files of dead writers with no temp files)
        m = _LOCK_NAME.match(e.name)
        if m is not None:
            by_writer.setdefault(m.group(1), [])
    for wid, files in by_writer.items():
        if wid is None:  # no writer lock: the old guess alone
            for e, pid in files:
                if left_by_dead_writer(e, pid, now) and _remove(e.path):
                    gone += 1
            continue
        lock = writers / f"{wid}.lock"
        # one writer at a time, its lock held (if free) while what it covers goes:
        # a sweep keeps one descriptor open however many writers died
        with contextlib.ExitStack() as held:
            verdict = _judge(lock, held)
            if verdict == _ALIVE:
                continue
            if verdict == _DEAD and exact is None:
                exact = flock_is_exact(tmp)
            sure = verdict == _DEAD and bool(exact)
            left = 0
            for e, pid in files:
                if (sure or left_by_dead_writer(e, pid, now)) and _remove(e.path):
                    gone += 1
                else:
                    left += 1
            if verdict == _DEAD and not left and (sure or _age(lock, now) >= DEAD_WRITER_MIN_AGE):
                _remove(str(lock))
    return gone


@contextlib.contextmanager
def temp_file(tmp: Path, writers: Path) -> Iterator[BinaryIO]:
    """A new temp file in ``.kiln/tmp`` for the block, named for this process's writer
    lock (module docstring) so ``sweep`` leaves it alone while this process
    lives, and removed when the block ends (published by then, or dropped)."""
    make_dir(tmp, exact=True)  # (0755 whatever the umask: no other user may put files there)
    w = _writer(writers)
    prefix = f"up-{os.getpid()}-{w.id}-" if w.id else f"up-{os.getpid()}-"
    # counted before the file exists, so an exit meanwhile (``_release_at_exit``, another
    # thread) keeps the lock file that names it: a sweep then removes it once we are gone
    with _writers_lock:
        if _exiting:
            raise OSError(errno.ESHUTDOWN, "the process is exiting: no new temp file", str(tmp))
        w.active += 1
    try:
        f = tempfile.NamedTemporaryFile(dir=tmp, prefix=prefix, delete=False)  # noqa: SIM115
    except BaseException:
        with _writers_lock:
            w.active -= 1
        raise
    try:
        os.fchmod(f.fileno(), 0o644)  # published objects are world-readable (static servers)
        # (typeshed types the wrapper IO[bytes]; it hands every call to a binary file)
        yield f  # type: ignore[misc]
    except BaseException:
        # closing flushes what is buffered: on a full disk that fails too, and its error
        # would replace the one that says what happened
        with contextlib.suppress(OSError):
            f.close()
        raise
    finally:
        try:
            f.close()  # (after a failed close above: a no-op)
        finally:
            # whatever the close did: a temp file left here would stay until this
            # process ends (its writer lock is held), on a disk that is full already
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f.name)
            with _writers_lock:
                w.active -= 1


@dataclasses.dataclass(slots=True)
class _Writer:
    """This process's writer lock on one directory: ``id`` names ``<writers>/<id>.lock``,
    held (exclusive ``flock``) through ``fd`` until the process ends; ``id`` None where no
    lock could be taken (its temp files then get names without an id). ``active``: its
    temp files now in use."""

    pid: int
    id: str | None = None
    fd: int | None = None
    path: Path | None = None
    active: int = 0


#: ``.kiln/writers`` of a directory -> this process's writer lock there
_writers: dict[Path, _Writer] = {}
_writers_lock = threading.Lock()
_exit_hook = False
#: set by ``_release_at_exit``: no temp file is begun after it
_exiting = False

_ALIVE, _DEAD, _UNKNOWN = "alive", "dead", "unknown"


def _writer(writers: Path) -> _Writer:
    """This process's writer lock for the directory whose lock files are in ``writers``,
    taken on first use. Taken afresh if its file was removed (by hand, or by a sweep
    where locks are not exact): temp files named for the old one are then judged by the
    old guess only."""
    global _exit_hook
    with _writers_lock:
        w = _writers.get(writers)
        if w is not None and w.pid == os.getpid():
            if w.fd is None or os.fstat(w.fd).st_nlink > 0:
                return w
            os.close(w.fd)
        _writers[writers] = w = _take_writer_lock(writers)
        if w.fd is not None and not _exit_hook:
            atexit.register(_release_at_exit)
            _exit_hook = True
        return w


def _take_writer_lock(writers: Path) -> _Writer:
    """A new lock file in ``writers``, locked exclusively; a ``_Writer`` without one where
    that fails (the directory not writable by this user, no ``flock`` on its file system)."""
    pid = os.getpid()
    try:
        make_dir(writers, exact=True)
        while True:
            wid = secrets.token_hex(8)
            path = writers / f"{wid}.lock"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a sweep took the new file for a dead writer's: it removes it
                os.close(fd)
                continue
            except OSError:  # no flock here (NFS without a lock daemon, ...)
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                return _Writer(pid)
            if os.fstat(fd).st_nlink > 0:
                return _Writer(pid, wid, fd, path)
            os.close(fd)  # a sweep removed it before we locked it
    except OSError:
        return _Writer(pid)


def _release_at_exit() -> None:
    """Remove this process's lock files at a normal exit when none of its temp files is in
    use, so each ``kiln push`` does not leave one for a sweep. The process holds the lock
    until it is gone anyway; one still in use (a thread cut off by the exit) keeps its
    file, so its temp file goes at the next sweep. Under ``_writers_lock``, and no temp
    file is begun after it: a thread still running (an interrupted ``mirror sync``'s
    workers) cannot slip a new one past the check."""
    global _exiting
    with _writers_lock:
        _exiting = True
        for w in list(_writers.values()):
            if w.pid != os.getpid() or w.fd is None or w.path is None or w.active:
                continue
            with contextlib.suppress(OSError):
                a, b = os.stat(w.path), os.fstat(w.fd)
                if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                    os.unlink(w.path)


def _forget_in_child() -> None:
    """A forked child (``kiln serve --workers``) is a writer of its own: it drops the
    descriptors of its parent's locks (the parent still holds them) and takes its own on
    first use, so its temp files are swept once it dies, whether or not the parent lives."""
    global _writers_lock
    _writers_lock = threading.Lock()  # (another thread may have held it at the fork)
    for w in _writers.values():
        if w.fd is not None:
            with contextlib.suppress(OSError):
                os.close(w.fd)
    _writers.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _judge(lock: Path, held: contextlib.ExitStack) -> str:
    """``_ALIVE`` if a process holds writer lock ``lock``; ``_DEAD`` if it could be taken
    (it is then kept in ``held``: nobody can claim it while the sweep removes what it
    covers); ``_UNKNOWN`` if it is missing or cannot be locked (no ``flock`` there)."""
    flags = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        try:
            # writable: NFS turns an flock into a POSIX lock, which needs one
            fd = os.open(lock, os.O_RDWR | flags)
        except PermissionError:  # another user's (0644): flock takes a read-only one too
            fd = os.open(lock, os.O_RDONLY | flags)
    except OSError:
        return _UNKNOWN
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return _UNKNOWN
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return _ALIVE
    except OSError:
        os.close(fd)
        return _UNKNOWN
    held.callback(os.close, fd)
    return _DEAD


#: file systems whose ``flock`` lives in this kernel alone, which every process that can
#: open the directory's files goes through (containers sharing a volume included); not
#: network or cluster file systems or FUSE, where a lock taken on another host (or not
#: passed on at all: NFS ``nolock``, ``local_lock=``) may be invisible here
_EXACT_FLOCK_FS = frozenset(
    {
        "ext2",
        "ext3",
        "ext4",
        "xfs",
        "btrfs",
        "bcachefs",
        "f2fs",
        "zfs",
        "jfs",
        "reiserfs",
        "nilfs2",
        "tmpfs",
        "ramfs",
        "overlay",
        "vfat",
        "exfat",
    }
)


def flock_is_exact(d: Path) -> bool:
    """Whether a free ``flock`` on a file under directory ``d`` proves that no live
    process anywhere holds it: the file system ``d`` is on (from the mount table) is in
    ``_EXACT_FLOCK_FS``. False when unsure (no mount table: not Linux)."""
    try:
        table = mount_table()
    except OSError:
        return False
    top = os.path.realpath(d)
    best, fstype = -1, ""
    for point, kind in table:
        if (top == point or top.startswith(point.rstrip("/") + "/")) and len(point) >= best:
            best, fstype = len(point), kind  # (a later mount hides an earlier one)
    return fstype in _EXACT_FLOCK_FS


def _scan(d: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(d) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _remove(path: str) -> bool:
    try:
        os.unlink(path)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return False
    return True


def _age(path: Path, now: float) -> float:
    try:
        return now - os.stat(path, follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return 0.0
