"""Writes the big files of an ingest's materialised copy on a thread of its own.

Why
---
``TreeIngest`` writes files of ``DIRECT_MIN`` or more to the copy with ``O_DIRECT``
(``directio``). Such a write returns only once the device has the bytes; on the
reference VM, with both CPUs busy compressing, a thread woken from one waits for a CPU
too, and the walk spent ~60 % of an ingest blocked in these writes while the hashing and
compression threads starved for input. Here the walk only queues the pieces and carries
on reading; this thread waits for the device.

Invariants
----------
- Pieces of one file arrive in file order and are written in that order, back to back
  from offset 0; a file's pieces are never interleaved with another file's (the walk
  copies one file at a time), so one "current file" is all the state kept.
- A piece is memory the walk will reuse: it is not touched after the writer's ``done``
  count has passed the ticket ``put`` returned for it (``wait_done``).
- The writer owns a file's descriptor from its first piece on: ``end_file`` queues the
  final ``fchmod``/``utime``/``close``, which run after the last write (a write would
  move the mtime again).
- At most ``max_files`` files are queued or being written at once, so descriptors stay
  bounded however small the files are.
- After an error every later piece is skipped (descriptors are still closed) and the
  error is raised to the walk at its next call; ``stop`` closes whatever is left.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Final, Literal

from .directio import ALIGN, DirectRate, set_direct
from .nar_restore import write_all

_WRITE: Final = 0
_END: Final = 1
#: a queued operation: (_WRITE, fd, piece) or (_END, fd, mode); None stops the thread
_Op = tuple[Literal[0], int, memoryview] | tuple[Literal[1], int, int]


class CopyWriter(threading.Thread):
    """Writes queued pieces of copy files (``O_DIRECT`` for whole blocks while the device
    keeps up, see ``DirectRate``) and finishes each file with its mode and mtime."""

    def __init__(self, direct: bool, mtime: int, max_files: int) -> None:
        super().__init__(daemon=True, name="kiln-copy-writer")
        self.direct = direct  # off for good once refused or too slow
        self.rate = DirectRate()
        self.mtime = mtime
        self.max_files = max(1, max_files)
        self.ops: deque[_Op | None] = deque()
        self.cond = threading.Condition()
        self.queued = 0  # ops handed over
        self.done = 0  # ops finished with
        self.files_queued = 0
        self.files_done = 0
        self.error: BaseException | None = None
        self.queued_fd = -1  # the walk's current file
        self.cur_fd = -1  # the thread's current file
        self.cur_direct = False

    # -- the walk's side ------------------------------------------------------------

    def put(self, fd: int, piece: memoryview) -> int:
        """Queue ``piece`` as the next bytes of ``fd``; returns its ticket. The first
        piece of a file hands ``fd`` to the writer."""
        if fd != self.queued_fd:
            self._start_file(fd)
        return self._push((_WRITE, fd, piece))

    def end_file(self, fd: int, mode: int) -> None:
        """Queue the end of ``fd`` (every piece queued): chmod, mtime, close. From this
        call on the writer owns ``fd``; until then the walk does (see ``stop``). If the
        writer has failed, ``fd`` is closed here once the thread is done with it, and
        the error raised."""
        self.queued_fd = -1
        if self.error is not None:
            self.stop()  # no queued write may still reach ``fd``
            os.close(fd)
            raise self.error
        self._push((_END, fd, mode), check=False)

    def wait_done(self, ticket: int) -> None:
        """Block until the op ``ticket`` names (and all before it) is finished with;
        raise the writer's error if it has one."""
        if self.done < ticket and self.error is None:
            with self.cond:
                self.cond.wait_for(lambda: self.done >= ticket or self.error is not None)
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Write everything queued, end the thread, raise its error if any."""
        self._push(None, check=False)
        self.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """On the walk's failure: skip what is queued (closing the descriptors of ended
        files) and end. Call it before closing a descriptor the walk still owns, so no
        queued write can reach a reused descriptor number."""
        with self.cond:
            if self.error is None:
                self.error = _Stopped()
        if self.is_alive():
            self._push(None, check=False)
            self.join()

    def _start_file(self, fd: int) -> None:
        if self.files_queued - self.files_done >= self.max_files and self.error is None:
            with self.cond:
                self.cond.wait_for(
                    lambda: self.files_queued - self.files_done < self.max_files or self.error is not None
                )
        self.files_queued += 1
        self.queued_fd = fd

    def _push(self, op: _Op | None, check: bool = True) -> int:
        if check and self.error is not None:
            raise self.error
        with self.cond:
            self.ops.append(op)
            self.queued += 1
            self.cond.notify_all()
            return self.queued

    # -- the thread -----------------------------------------------------------------

    def run(self) -> None:
        ops, cond = self.ops, self.cond
        while True:
            with cond:
                cond.wait_for(lambda: ops)
                op = ops.popleft()
            last, ended = op is None, op is not None and op[0] == _END
            try:
                if op is None:
                    pass
                elif op[0] == _END:
                    self._end(op[1], op[2])
                elif self.error is None:
                    self._write(op[1], op[2])
            except BaseException as e:  # noqa: BLE001 - handed to the walk
                self.error = self.error or e
            del op  # a piece's memory may be reused as soon as ``done`` moves
            with cond:
                self.done += 1
                self.files_done += ended
                cond.notify_all()
            if last:
                return

    def _write(self, fd: int, piece: memoryview) -> None:
        if fd != self.cur_fd:
            self.cur_fd = fd
            self.cur_direct = self.direct and set_direct(fd, True)
        whole = len(piece) - len(piece) % ALIGN if self.cur_direct else 0
        if whole:
            self.cur_direct = self.rate.write_blocks(fd, piece[:whole])
            self.direct = not self.rate.slow  # a slow device: page cache for the rest
        if len(piece) > whole:
            if self.cur_direct:
                self.cur_direct = set_direct(fd, False)  # a tail that is not whole blocks
            write_all(fd, piece[whole:])

    def _end(self, fd: int, mode: int) -> None:
        self.cur_fd = -1
        try:
            if self.error is None:
                os.fchmod(fd, mode)
                os.utime(fd, (self.mtime, self.mtime))
        finally:
            os.close(fd)


class _Stopped(Exception):
    """The walk stopped the writer (it raises its own error)."""
