"""File locks and temporary GC roots of the local store.

Theory of operation
-------------------
All locks are ``flock(2)`` locks on files under ``<root>/``. ``flock`` locks belong to an
open file description, not to a process, so two ``LocalStore`` objects in one process (or
two threads with their own descriptors) exclude each other exactly like two processes do,
and the kernel drops every lock when its holder dies (also on ``kill -9``).

- ``gc.lock``: registration holds it *shared* for the whole time it writes into the
  store (temporary files, object, tree, database row, temp root); the garbage collector
  holds it *exclusive* while it decides what goes and renames it into its own flocked
  ``tmp/gc-*``, where it deletes it after releasing the lock (``gcremove``). So GC never
  sees a half-registered path, and a writer's ``tmp/<pid>-*`` is stale while GC holds it.
- ``locks/reg-<c>.lock`` (``path_lock_file``): the registration lock of every path whose
  hash part starts with ``c`` (32 stripes). Held exclusive while a path is being
  registered, so two processes adding the same path register it once (the second sees it
  valid and drops its own copy). Striped rather than one file per path so registering a
  path does not create (and GC later delete) a lock file each time — on ext4 creating an
  inode is one of the dearest steps of registering a small path. Unrelated paths in one
  stripe merely wait for each other briefly. Taken after the GC lock (lock order: GC lock,
  then stripe locks in ascending order; a holder never takes a second stripe except in
  that order, see ``importbatch``).
- ``temproots/<pid>``: the paths a live process wants kept (build inputs, paths it just
  registered). The owner keeps the file open with an exclusive ``flock``; the collector
  treats a file it *can* lock as stale (its owner is dead - immune to pid reuse) and
  deletes it. Appends and rewrites happen under the shared GC lock and the collector
  reads under the exclusive one, so it never reads a half-written line. Registration
  also reads other processes' files (``temprootscan.live_rooter``), under the shared lock: a line
  being appended may be cut short there, and a file being rewritten may look empty for
  a moment; that reader only asks whether a path is named, and a miss is harmless (see
  ``registration``). Reading other processes' files: ``temprootscan``.

``flock`` needs no write access, so lock and temp-roots files are 0600 in 0700 ``locks/``
and ``temproots/`` whatever the umask (``perms``); one root makes in a user's store is
the user's. A ``FileLock`` not had within a second says who holds it (``lockwait``).
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import StoreError
from .fileopen import NotRegularFile, open_regular_fd
from .lockwait import PlacerWait as PlacerWait  # (moved there; imported from here too)
from .lockwait import flock_with_notice
from .perms import PRIVATE_FILE_MODE, give_to_owner_of


def path_lock_file(root: Path, hash_part: str) -> Path:
    """The registration (stripe) lock file for the path with ``hash_part``."""
    return root / "locks" / f"reg-{hash_part[0]}.lock"


#: ``FileLock.fd`` of a shared lock taken without its file (see ``acquire``)
NOT_HELD = -1


class FileLock:
    """An ``flock`` on ``path`` (created if missing). Use as a context manager or call
    ``acquire``/``release``. ``shared`` selects LOCK_SH instead of LOCK_EX. A shared lock
    whose file this user may not open, on a read-only file system, is taken as held
    (``NOT_HELD``): another user reading a store on read-only media."""

    __slots__ = ("path", "shared", "fd", "depth")

    def __init__(self, path: Path, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self.fd: int | None = None
        self.depth = 0

    def acquire(self, blocking: bool = True, notice: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False instead of waiting.
        Re-entrant within one ``FileLock`` object. A wait of over a second is said on
        stderr unless ``notice`` is false (the caller said it)."""
        if self.fd is not None:
            self.depth += 1
            return True
        op = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        while True:
            # 0600: another user who could open it could flock it and hang us (``perms``)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
            except OSError as e:  # root's (an older kiln's), or a read-only file system
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise  # (flock needs no write access: opened for reading below)
                try:
                    fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                except PermissionError:
                    from .fsstate import on_read_only_fs

                    if not (self.shared and on_read_only_fs(self.path.parent)):
                        raise
                    # another user's store on a read-only file system (root's, on read-only
                    # media): nothing changes it through this mount, and the owner's lock is
                    # 0600 so that others cannot hold GC off: read without it (docs/store.md)
                    self.fd, self.depth = NOT_HELD, 1
                    return True
            give_to_owner_of(fd, self.path.parent)
            try:
                if blocking and notice:  # (says who holds it if it is not had within a second)
                    flock_with_notice(fd, op, self.path)
                else:
                    fcntl.flock(fd, op)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            if os.fstat(fd).st_nlink > 0:
                break
            # GC unlinked the file while we waited for it (``remove_if_free``): the
            # lock we hold is on a deleted inode nobody else will open; take the new one
            os.close(fd)
        self.fd, self.depth = fd, 1
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        self.depth -= 1
        if self.depth == 0:
            # closing the last descriptor drops the flock; cleared first, as in
            # ``gcremove.Trash.close``: never closed twice, whatever interrupts
            fd, self.fd = self.fd, None
            if fd != NOT_HELD:
                os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


#: a temp file of a writer that is gone is a leftover once it is this old too: a writer
#: in another pid namespace sharing the directory looks gone from here
DEAD_WRITER_MIN_AGE = 3600.0


_exit_hook = False


def _at_exit_unlink() -> None:
    """Arrange for ``_unlink_at_exit`` to run at exit (once per process)."""
    global _exit_hook
    if not _exit_hook:
        import atexit

        atexit.register(_unlink_at_exit)
        _exit_hook = True


def _unlink_at_exit() -> None:
    """Delete this process's temp-roots files at exit even if no store object was closed
    (a command that never closes its store left ``temproots/<pid>`` behind): the roots
    die with the process anyway. Only files still open here, and only if the name still
    is that file (another pid namespace's process with our pid number may have made a
    new one after a ``release``). Lock-free, so it cannot wait for a running GC."""
    for tr in list(TempRoots._shared.values()):
        fd = tr.fd
        if tr.pid != os.getpid() or fd is None:  # (a forked child leaves its parent's alone)
            continue
        path = tr.dir / str(tr.pid)
        with contextlib.suppress(OSError):
            a, b = os.stat(path), os.fstat(fd)
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                os.unlink(path)


def left_by_dead_writer(
    entry: os.DirEntry, pid: int | None, now: float, min_age: float = DEAD_WRITER_MIN_AGE
) -> bool:
    """Whether the temp file ``entry``, written by process ``pid`` (None: its name does
    not say), is a killed writer's leftover: that process is gone (a live one, or one
    that is not ours to signal, keeps it) and the file is ``min_age`` old."""
    if pid is not None:
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            return False
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime >= min_age
    except FileNotFoundError:
        return False


def remove_if_free(path: Path) -> bool:
    """Delete lock file ``path`` if nobody holds it (True if deleted). Safe against a
    process that opened it before and waits for it: ``FileLock.acquire`` notices the
    file was unlinked once it gets the lock, and opens the path afresh."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # (flock needs no write access)
    except (FileNotFoundError, PermissionError):  # (another user's, unreadable: left alone)
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


class RootHolder(abc.ABC):
    """Temp roots a ``LocalStore`` keeps (``TempRoots``, ``readonlyroots.ReadOnlyRoots``):
    ``hold(paths)`` ``add``s them for a ``with`` block, then ``remove``s them."""

    @abc.abstractmethod
    def add(self, paths: Iterable[str], *, locked: bool = False) -> None: ...

    @abc.abstractmethod
    def remove(self, paths: Iterable[str]) -> None: ...

    @abc.abstractmethod
    def release(self) -> None:
        """The store object holding these roots is closed."""

    @contextlib.contextmanager
    def hold(self, paths: Iterable[str]) -> Iterator[None]:
        paths = list(paths)
        self.add(paths)
        try:
            yield
        finally:
            self.remove(paths)


class TempRoots(RootHolder):
    """This process's ``temproots/<pid>`` file, shared by every ``LocalStore`` of one root
    in the process (get it with ``TempRoots.get``; a second ``flock`` on the same file from
    the same process would conflict). Paths are counted so nested holders of one path
    work; the file is rewritten when a count drops to zero."""

    _shared: dict[tuple[str, int], TempRoots] = {}
    _shared_lock = threading.Lock()

    def __init__(self, dir_: Path, gc_lock: Path) -> None:
        self.dir = dir_
        self.gc_lock_path = gc_lock
        self.counts: Counter[str] = Counter()
        self.fd: int | None = None
        self.pid = os.getpid()
        self.users = 0
        self.mutex = threading.Lock()

    @classmethod
    def get(cls, dir_: Path, gc_lock: Path) -> TempRoots:
        """The process-wide instance for ``dir_`` (one more user; ``release`` when done)."""
        key = (str(dir_), os.getpid())
        with cls._shared_lock:
            tr = cls._shared.get(key)
            if tr is None:
                tr = cls._shared[key] = cls(dir_, gc_lock)
            tr.users += 1
            return tr

    @staticmethod
    def _open_regular(path: Path) -> int:
        """``path`` opened (created if missing) for writing roots: a regular file, never
        a symbolic link followed nor a FIFO, which the collector does not read (see
        ``temprootscan.temp_root_files``): roots written there would protect nothing."""
        try:
            fd = open_regular_fd(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
        except NotRegularFile:
            raise StoreError(f"temp-roots file {path} is not a regular file kiln made: remove it") from None
        give_to_owner_of(fd, path.parent)
        return fd

    def _open(self) -> int:
        if self.fd is not None:
            return self.fd
        path = self.dir / str(self.pid)
        for _ in range(100):
            fd = self._open_regular(path)
            # a dead process's file (same pid) may be probed by ``live_rooter`` or GC this
            # very moment: their locks last microseconds, so retry briefly before giving up
            for delay in (0.001, 0.01, 0.1, None):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if delay is None:
                        os.close(fd)
                        raise StoreError(f"temp-roots file {path} is locked by someone else") from None
                    time.sleep(delay)
            # the holder we waited for may have deleted the name on its way out (a process
            # of another pid namespace with our pid number): a file GC cannot see protects
            # nothing, so open the name afresh
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise StoreError(f"temp-roots file {path} keeps being replaced")
        os.ftruncate(fd, 0)
        self.fd = fd
        _at_exit_unlink()
        return fd

    def add(self, paths: Iterable[str], *, locked: bool = False) -> None:
        """Add ``paths`` (appended to the file). ``locked`` says the caller already holds
        the GC lock (shared); otherwise it is taken here."""
        new = list(paths)
        if not new:
            return
        with contextlib.nullcontext() if locked else FileLock(self.gc_lock_path, shared=True), self.mutex:
            fd = self._open()
            fresh = [p for p in dict.fromkeys(new) if self.counts[p] == 0]
            self.counts.update(new)
            if fresh:
                os.write(fd, "".join(p + "\n" for p in fresh).encode())

    def remove(self, paths: Iterable[str]) -> None:
        """Drop one count of each of ``paths``; rewrite the file if any went to zero."""
        with self.mutex:
            if self.fd is None:
                return
            gone = False
            for p in paths:
                self.counts[p] -= 1
                if self.counts[p] <= 0:
                    del self.counts[p]
                    gone = True
            if not gone:
                return
            with FileLock(self.gc_lock_path, shared=True):
                data = memoryview("".join(p + "\n" for p in self.counts).encode())
                os.ftruncate(self.fd, 0)
                done = 0
                while done < len(data):
                    done += os.pwrite(self.fd, data[done:], done)
                # ``add`` appends with write(): without this it would write at the old end
                # of the file, after a hole of NULs that the collector cannot parse
                os.lseek(self.fd, done, os.SEEK_SET)

    def release(self) -> None:
        """One user fewer; the last one deletes the file.

        The file is unlinked and closed under ``_shared_lock``: a thread that ``get``s a
        new instance right after must not open this still-flocked file (its ``LOCK_NB``
        would fail: "locked by someone else")."""
        with self._shared_lock:
            self.users -= 1
            if self.users > 0:
                return
            self._shared.pop((str(self.dir), self.pid), None)
            fd, self.fd = self.fd, None  # (cleared first: never closed twice)
            if fd is not None and self.pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.unlink(self.dir / str(self.pid))
                os.close(fd)
            self.counts.clear()
