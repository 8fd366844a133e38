"""Reading the temp-roots files of other processes (``temproots/<pid>``, written by
``locks.TempRoots``): which paths live processes keep, and who keeps one.

A file whose exclusive ``flock`` a probe cannot take belongs to a live process; one it
can take is a dead process's (immune to pid reuse). ``live_temp_roots`` (GC, under the
exclusive GC lock) also deletes the dead ones; ``live_rooter`` (registration, verify;
under the shared lock) deletes nothing, and a line being appended may be cut short
there: it only asks whether a path is named, where a miss is harmless.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import StoreError
from .fileopen import FileTooLarge, NotRegularFile, open_regular_fd, read_capped

#: the most of one temp-roots file that is read: some three million paths (a path line is
#: under 100 bytes), far more than one process keeps (its inputs and what it registered);
#: a bound because a sparse file of any size costs nothing to make, and reading one whole
#: would end GC in a MemoryError while it holds the GC lock
TEMP_ROOTS_MAX_BYTES = 256 << 20


def temp_root_files(dir_: Path, probe: int) -> Iterator[tuple[os.DirEntry, list[bytes] | None]]:
    """Each temp-roots file in ``dir_`` with its lines if its owner is alive (its
    exclusive ``flock`` held, so our non-blocking ``probe`` lock fails), else None; then
    the probe lock we got is held until the caller moves on (closing drops it).

    Anything but a regular file there (a FIFO, a symbolic link, a device, a directory) is
    skipped: opened without waiting or following, never read, never deleted. It holds no
    live process's roots, as ``TempRoots._open`` writes them only into a regular file it
    opened without following a link, and refuses anything else at its name. A live
    process's file over ``TEMP_ROOTS_MAX_BYTES`` is an error (``StoreError``), not
    skipped: its paths cannot be told, and the readers must not lose them — GC would
    delete paths it keeps, registration would replace a tree a running build placed."""
    for entry in os.scandir(dir_):
        try:
            fd = open_regular_fd(entry.path)
        except (FileNotFoundError, NotRegularFile):
            continue
        try:
            try:
                fcntl.flock(fd, probe | fcntl.LOCK_NB)
            except BlockingIOError:  # the owner holds it: alive
                try:
                    data = read_capped(fd, TEMP_ROOTS_MAX_BYTES, entry.path)
                except FileTooLarge as e:
                    raise StoreError(
                        f"temp-roots file {entry.path} of a live process {e.strerror}: "
                        "cannot tell which paths it keeps alive"
                    ) from None
                yield entry, [line for line in data.splitlines() if line]
            else:
                yield entry, None
        finally:
            os.close(fd)


def live_temp_roots(dir_: Path, delete_dead: bool = True) -> set[str]:
    """Paths in the temp-roots files of live processes; deletes files of dead ones
    (unless ``delete_dead`` is false: a dry run changes nothing). Call with the GC lock
    held exclusively."""
    roots: set[str] = set()
    for entry, lines in temp_root_files(dir_, fcntl.LOCK_EX):
        if lines is not None:
            roots.update(line.decode() for line in lines)
        elif delete_dead:
            os.unlink(entry.path)  # we hold its lock: the owner is gone
    return roots


def live_rooter(dir_: Path, path: str) -> int | None:
    """The pid of a live process other than this one whose temp-roots file names
    ``path``, or None. Probes with a shared lock and deletes nothing, so this may run
    under the shared GC lock."""
    me, want = str(os.getpid()), path.encode()
    for entry, lines in temp_root_files(dir_, fcntl.LOCK_SH):
        if entry.name != me and lines is not None and want in lines:
            return int(entry.name) if entry.name.isdigit() else -1
    return None
