"""Opening a regular file for reading without ever waiting on what else may sit at its
name.

A FIFO (or a device) where a file belongs would block a plain ``open`` until a writer
comes, past any timeout: a read that never ends. ``open_regular`` opens with
``O_NONBLOCK``, which never waits, keeps only a regular file, then reads block as usual.

A small file of the store's own (a temp-roots file, a quarantine record) that anyone
with write access to the store may have replaced is read with ``read_small_file`` (or
``open_regular_fd`` then ``read_capped``, for a caller that must lock it in between):
no symbolic link followed to a file that is not the store's (``/dev/zero``), no FIFO
waited on, and no more than a cap read into memory (a sparse file of many gigabytes
costs nothing to make).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO


def open_regular(path: str | os.PathLike, buffering: int = -1) -> BinaryIO | None:
    """``path`` open for binary reading, or None if it is not a regular file (a FIFO, a
    device, a directory). ``FileNotFoundError`` and other ``OSError`` propagate."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return open(fd, "rb", buffering=buffering)  # noqa: SIM115 - the caller owns it


class NotRegularFile(OSError):
    """What sits at the name is not a regular file (``strerror`` says what it is)."""


class FileTooLarge(OSError):
    """A file is larger than its reader's cap (``strerror`` says so)."""


def _what_it_is(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return f"is {kind}"
    return "is not a regular file"


def open_regular_fd(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A descriptor of ``path`` opened with ``flags`` (default: for reading; ``O_CREAT``
    makes it with ``mode``; the caller closes it), never following a symbolic link at its
    last component; ``NotRegularFile`` if it is a link or anything but a regular file.
    Nothing here waits (``O_NONBLOCK``: a FIFO is refused, not waited on).
    ``FileNotFoundError`` and other ``OSError`` propagate."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        # ELOOP is all O_NOFOLLOW says of a link, EISDIR all a write-open says of a
        # directory; say what it is
        if e.errno == errno.ELOOP and os.path.islink(path):
            raise NotRegularFile(errno.ELOOP, "is a symbolic link", os.fspath(path)) from None
        if e.errno == errno.EISDIR:
            raise NotRegularFile(errno.EISDIR, "is a directory", os.fspath(path)) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, _what_it_is(mode), os.fspath(path))
    os.set_blocking(fd, True)
    return fd


def read_capped(fd: int, cap: int, name: str | os.PathLike | None = None) -> bytes:
    """The whole content of the regular file open at ``fd`` (read from offset 0, the
    descriptor's offset untouched), or ``FileTooLarge`` if it holds more than ``cap``
    bytes. The size is checked before reading, and again while reading: the file may
    grow meanwhile, and some files (``/proc``) say 0 whatever they hold. Never holds more
    than ``cap + 1`` bytes in memory."""
    where = () if name is None else (os.fspath(name),)
    too_large = FileTooLarge(errno.EFBIG, f"is too large (over {cap} bytes)", *where)
    if os.fstat(fd).st_size > cap:
        raise too_large
    buf = bytearray()
    while len(buf) <= cap:
        chunk = os.pread(fd, min(1 << 20, cap + 1 - len(buf)), len(buf))
        if not chunk:
            return bytes(buf)
        buf += chunk
    raise too_large


def read_small_file(path: str | os.PathLike, cap: int) -> bytes:
    """The content of the regular file ``path``, read safely whoever put it there: no
    symbolic link followed (``NotRegularFile``), no FIFO or device waited on or read
    (``NotRegularFile``), at most ``cap`` bytes (``FileTooLarge``). Both are ``OSError``s,
    as are the errors of opening and reading, which propagate."""
    fd = open_regular_fd(path)
    try:
        return read_capped(fd, cap, path)
    finally:
        os.close(fd)
