"""Writing the store's big write-once files past the page cache (``O_DIRECT``).

Why
---
An ingest writes every byte twice: into the materialised tree and, compressed, into the
object. Neither is read back soon, and buffered writes cost a kernel copy into freshly
allocated page-cache pages. On virtual machines that copy is expensive (each new page
may fault in the hypervisor first): on the reference machine ``dd bs=4M`` writes 200 MiB
buffered at 467 MB/s of kernel CPU and with ``oflag=direct`` at 1.9 GB/s with almost no
CPU. With ``O_DIRECT`` the device reads our (reused, page-aligned) buffer itself.

Invariants
----------
- Only whole ``ALIGN``-byte blocks at ``ALIGN``-aligned file offsets go out with
  ``O_DIRECT``, always from page-aligned memory (``mmap``). A tail shorter than
  ``ALIGN`` is written buffered after ``O_DIRECT`` is cleared on the descriptor.
- If the file system refuses ``O_DIRECT`` (tmpfs, some FUSE and network file systems:
  ``EINVAL`` at ``fcntl``, ``open`` or ``write``), writing carries on buffered from the
  same position: no byte is lost, repeated or reordered. Durability is unchanged: the
  callers ``fsync`` what must survive a crash, exactly as with buffered writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import time

from .nar_restore import write_all

ALIGN = 4096
#: bytes/s: a device writing direct more slowly than this on average (after
#: ``RATE_SAMPLE`` bytes) is left to the page cache: buffered writes return at memory
#: speed, direct ones wait for the device. Low, because the timings include waiting for
#: a CPU busy compressing: on the reference VM direct writes average over 1 GB/s during
#: an ingest and 2.5 GB/s alone; a disk spinning at 100-200 MB/s is what this catches.
MIN_DIRECT_RATE = 250e6
RATE_SAMPLE = 32 << 20
#: errors meaning "no O_DIRECT here" rather than "the write failed"
_NO_DIRECT = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


def set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; return whether it is now on. Turning it
    on fails quietly (False) where the file system does not support it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    want = flags | os.O_DIRECT if on else flags & ~os.O_DIRECT
    if want != flags:
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, want)
        except OSError as e:
            if on and e.errno in _NO_DIRECT:
                return False
            raise
    return on


def write_blocks(fd: int, view: memoryview) -> bool:
    """Write all of ``view`` (page-aligned memory, a multiple of ``ALIGN`` long) at the
    current, ``ALIGN``-aligned position of ``fd``, which has ``O_DIRECT`` on. If the
    kernel refuses ``O_DIRECT`` on the way, it is turned off and the rest is written
    buffered from the same position. Returns whether ``O_DIRECT`` is still on."""
    while view:
        try:
            n = os.write(fd, view)
        except OSError as e:
            if e.errno not in _NO_DIRECT:
                raise
            n = 0
        view = view[n:]
        if view and (n == 0 or n % ALIGN):
            # refused, or a short write off the block grid: finish buffered
            set_direct(fd, False)
            write_all(fd, view)
            return False
    return True


class DirectRate:
    """Running average of how fast ``O_DIRECT`` writes complete (one per ingest)."""

    def __init__(self) -> None:
        self.nbytes = 0
        self.secs = 0.0

    def fast_enough(self, nbytes: int, secs: float) -> bool:
        """Record a write of ``nbytes`` that took ``secs``; False once the average over at
        least ``RATE_SAMPLE`` bytes is below ``MIN_DIRECT_RATE``."""
        self.nbytes += nbytes
        self.secs += secs
        return not self.slow

    @property
    def slow(self) -> bool:
        """Whether the device has proved slower than ``MIN_DIRECT_RATE``."""
        return self.nbytes >= RATE_SAMPLE and self.nbytes < self.secs * MIN_DIRECT_RATE

    def write_blocks(self, fd: int, view: memoryview) -> bool:
        """``write_blocks``, timed: if the device has proved too slow, ``O_DIRECT`` is
        turned off for ``fd``. Returns whether it is still on."""
        t = time.perf_counter()
        if write_blocks(fd, view) and self.fast_enough(len(view), time.perf_counter() - t):
            return True
        return set_direct(fd, False)


class DirectWriter:
    """Appends to ``fd`` (opened for writing at offset 0) through a page-aligned staging
    buffer, sending whole blocks with ``O_DIRECT``; ``close`` writes the tail and turns
    ``O_DIRECT`` off (the descriptor stays open: the caller fsyncs and closes it). Falls
    back to plain buffered writes where ``O_DIRECT`` is unsupported or the device writes
    more slowly than ``MIN_DIRECT_RATE``."""

    def __init__(self, fd: int, size: int = 4 << 20) -> None:
        self.fd = fd
        self.direct = set_direct(fd, True)
        self.size = size
        self.map = mmap.mmap(-1, size) if self.direct else None
        self.view = memoryview(self.map) if self.map is not None else None
        self.fill = 0
        self.rate = DirectRate()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.view is None:
            write_all(self.fd, data)
            return
        src = memoryview(data)
        while src:
            n = min(len(src), self.size - self.fill)
            self.view[self.fill : self.fill + n] = src[:n]
            self.fill += n
            src = src[n:]
            if self.fill == self.size:
                self._send_blocks()

    def _send_blocks(self) -> None:
        assert self.view is not None
        whole = self.fill - self.fill % ALIGN
        if not whole:
            return
        if self.direct:
            self.direct = self.rate.write_blocks(self.fd, self.view[:whole])
        else:
            write_all(self.fd, self.view[:whole])
        rest = self.fill - whole
        self.view[:rest] = self.view[whole : self.fill]
        self.fill = rest

    def close(self) -> None:
        """Write what is staged and release the buffer (idempotent)."""
        if self.view is None:
            return
        self._send_blocks()
        if self.direct:
            set_direct(self.fd, False)
        write_all(self.fd, self.view[: self.fill])
        self.release()

    def release(self) -> None:
        """Free the staging buffer without writing it (the file is being discarded)."""
        if self.view is not None:
            self.view.release()
            self.view = None
        if self.map is not None:
            # a slice may still be referenced (by the traceback of the write error being
            # raised): the mapping then goes with it; closing must not hide that error
            with contextlib.suppress(BufferError):
                self.map.close()
            self.map = None
