"""Opening a regular file for reading without ever waiting on what else may sit at its
name.

A FIFO (or a device) where a file belongs would block a plain ``open`` until a writer
comes, past any timeout: a read that never ends. ``open_regular`` opens with
``O_NONBLOCK``, which never waits, keeps only a regular file, then reads block as usual.
"""

from __future__ import annotations

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
