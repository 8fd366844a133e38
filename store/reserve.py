"""The store's reserved space: ``<root>/reserved``, a file of allocated (not sparse)
blocks that ``kiln store gc`` deletes first, so a collection can run on a full disk.

Why: the database is in WAL mode, and SQLite deletes ``db.sqlite-wal`` and ``-shm`` when
its last connection closes, so every open makes them again (a 32 KiB ``-shm``, then the
WAL grows with each commit: GC's deletes too). On a disk with no bytes free no command
could open the database, not even the one that frees space. As Nix does
(``gc-reserved-space``: a ``reserved`` file of 8 MiB in its state dir, deleted at the
start of a collection), the store keeps that space in reserve:

- ``ensure`` makes it, when a store is opened (``LocalStore.open``), after its database
  is open: one ``stat`` when it is there at its size; otherwise it is allocated
  (``posix_fallocate``) only if the file system keeps at least as much free afterwards
  (the last bytes of a nearly full disk are for the work at hand: a reserve taking them
  would make the very command that opened the store fail). It never raises: a store
  opens whether or not its reserve could be made.
- ``release`` deletes it: ``kiln store gc`` does, before it opens the database
  (``LocalStore.open(release_reserve=True)``), and ``gc.collect`` again, for a store
  opened otherwise (its trash and its deletions in the WAL need space too).
- ``restore``, at the end of a collection, makes it again: as ``ensure`` would, else
  as much of what the collection released as is free then (a collection that freed
  nothing on a full disk leaves it as it found it, full but with its reserve, so the
  next ``kiln store gc`` still runs; one that found none takes nothing).

Its size is the store config's ``reserved`` (bytes, ``storeconfig.config_reserved``;
default ``DEFAULT_RESERVED``, 8 MiB; 0 keeps none and ``ensure`` deletes one left
over). Only a regular file at that name is ever written (opened without following a
symbolic link) or deleted: anything else there is left alone. GC and verify do not look
at the store root's own entries, so it is neither garbage nor corruption to them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from .fsstate import state_of
from .perms import PRIVATE_FILE_MODE, give_to_owner_of

#: the reserve's name in the store root
NAME = "reserved"
#: its default size, as Nix's ``gc-reserved-space``
DEFAULT_RESERVED = 8 << 20
#: left free when the reserve is restored from what is free (an allocation of the last
#: blocks fails on ext4: its extent tree needs blocks of its own)
_SLACK = 64 << 10

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _free(root: Path) -> int | None:
    """Bytes this user may still write on ``root``'s file system (None: unknown)."""
    state = state_of(root)
    return None if state is None or state.read_only else state.free


def held(root: Path) -> int:
    """Bytes the reserve of the store at ``root`` holds now (0: none)."""
    try:
        st = os.lstat(root / NAME)
    except OSError:
        return 0
    return min(st.st_size, st.st_blocks * 512) if stat.S_ISREG(st.st_mode) else 0


def release(root: Path) -> int:
    """Delete the reserve of the store at ``root``; the bytes it held (0: none)."""
    p = root / NAME
    try:
        st = os.lstat(p)
        if not stat.S_ISREG(st.st_mode):
            return 0
        os.unlink(p)
    except OSError:
        return 0
    return st.st_blocks * 512


def ensure(root: Path, size: int) -> None:
    """Make the reserve of the store at ``root`` ``size`` bytes, if the file system keeps
    ``size`` bytes free besides (see the module docstring); ``size`` 0 deletes it. Never
    raises. Cheap when it is there at its size: one ``lstat``."""
    p = root / NAME
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError:
        return
    if st is not None and not stat.S_ISREG(st.st_mode):
        return  # (not ours)
    if size <= 0:
        if st is not None:
            release(root)
        return
    if st is not None and st.st_size == size and st.st_blocks * 512 >= size:
        return
    have = 0 if st is None else min(st.st_size, st.st_blocks * 512)
    free = _free(root)
    if free is None or (size > have and free - (size - have) < size):
        return
    _allocate(p, size)


def restore(root: Path, size: int, released: int) -> None:
    """After a collection that released ``released`` bytes of reserve: make it ``size``
    bytes as ``ensure`` would, else take back what the collection released, as much of it
    as is free now (but ``_SLACK``), however little that leaves free: never more. Never
    raises."""
    ensure(root, size)
    have, free = held(root), _free(root)
    if size <= 0 or have >= size or free is None:
        return
    want = min(size, have + released, have + free - _SLACK)
    want -= want % 4096
    if want > have:
        _allocate(root / NAME, want)


def _allocate(p: Path, size: int) -> None:
    """Make ``p`` a regular file of ``size`` allocated bytes (shrunk if it was larger); an
    allocation that fails (the space went meanwhile) is undone, as ext4 may keep part of
    it. Never raises."""
    try:
        fd = os.open(p, _OPEN_FLAGS, PRIVATE_FILE_MODE)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        give_to_owner_of(fd, p.parent)
        if st.st_size > size:
            os.ftruncate(fd, size)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError:
            # (a reserve that did not fit is no use half made: give the blocks back)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, st.st_size if st.st_size <= size else size)
    except OSError:
        pass
    finally:
        os.close(fd)
