"""A produced output file that is hard-linked elsewhere gets an inode of its own
(``unshare_inode``), copied hole for hole (``copy_data``), so registering one output
cannot change another's metadata and a store path shares no inode with what it does
not own. Called by the build loop on each output (``buildproduce``)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from .nar_restore import write_all
from .refscan import ScanStopped


def unshare_inode(tree: Path, stopped: Callable[[], bool]) -> None:
    """An output that is a file hard-linked elsewhere (``ln $out $dev``) gets an inode of
    its own: two outputs sharing one would change each other's metadata while being
    registered, and a store path must not share an inode with anything it does not own.
    The copy keeps holes holes (a sparse file of terabytes is quick to make: copied
    byte for byte it filled the disk), and asks ``stopped()`` per MiB of data, raising
    ``ScanStopped`` (a build's ``--timeout`` covers it)."""
    st = os.lstat(tree)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        # beside it in the scratch store dir, under a name no store path can have
        fd, tmp = tempfile.mkstemp(prefix=".unshare-", dir=tree.parent)
        try:
            with open(tree, "rb") as src, open(fd, "wb") as dst:
                copy_data(src.fileno(), dst.fileno(), st.st_size, stopped)
            shutil.copystat(tree, tmp)
            os.replace(tmp, tree)
        except BaseException:  # (a signal may land after the replace: nothing to remove then)
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def copy_data(src: int, dst: int, size: int, stopped: Callable[[], bool]) -> None:
    """Copy the ``size`` bytes of ``src`` to the empty ``dst``, writing only its data
    extents (``SEEK_DATA``/``SEEK_HOLE``; where those are not supported the whole file
    counts as data), then setting the length: what ``src`` has as holes reads back as
    zeros from ``dst`` too."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
            end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data past pos: the rest is a hole
                break
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            start, end = pos, size
        os.lseek(src, start, os.SEEK_SET)
        os.lseek(dst, start, os.SEEK_SET)
        while start < end:
            chunk = os.read(src, min(1 << 20, end - start))
            if not chunk:  # the file shrank: the rest reads as zeros
                return os.ftruncate(dst, size)
            write_all(dst, chunk)
            start += len(chunk)
            if stopped():
                raise ScanStopped("copying the output was stopped")
        pos = end
    os.ftruncate(dst, size)
