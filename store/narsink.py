"""``NarSink``: hashes a NAR and writes its compressed object, on threads, in one pass.

Theory of operation
-------------------
A producer (``ingest.TreeIngest`` walking a tree, or a NAR stream being restored) hands
NAR bytes over in chunks of up to ``CHUNK`` (1 MiB). Chunk ``k`` (counting from 1) goes
to the hasher (SHA-256 of the NAR) and to compressor ``(k - 1) % n`` of ``n``; each
compressor turns each chunk into one zstd frame, and the output thread takes the frames
in chunk order — compressor 0, 1, …, n-1, 0, … — SHA-256es them and writes them to the
object. So the object is a sequence of independent zstd frames, one per chunk: RFC 8878
allows any number, and zstd, libzstd's streaming API, Nix and ``objread`` read them as
one stream (python-zstandard's one-shot ``decompress`` and ``decompressobj`` stop after
the first). ``write`` cuts its input at every ``CHUNK`` bytes of the NAR, so a byte
stream's object depends only on the NAR; ``write_pooled`` takes the producer's chunks
as they are (the tree walk's ring slots: the same for the same tree).

Why frames and not zstd's own worker pool: one-shot compression of a chunk reads it where
it lies, while a streaming compressor (multi-threaded or not) first copies every input
byte into its own buffers. On the 200 MiB benchmark NAR, level 1: 0.46 CPU-s in 1 MiB
frames against 0.53 for the multi-threaded stream, for 0.632 of the NAR instead of 0.626.

Invariants
----------
- No worker thread ever blocks on a put: the compressors' output queues are unbounded.
  Memory is bounded on the producer's side instead: ``write`` waits while more than
  ``OUT_LAG`` chunks are compressed-or-queued but not yet written out. Hence ``abort``
  can always stop every thread by queueing ``None``: nothing it waits for is waiting.
- A compressor never raises: a chunk that fails to compress is handed on as the
  exception, so the output thread, which waits for frames in order, is never left
  waiting for a frame that will not come.
- ``wait_consumed(t)`` returns once the hasher and the compressors are done reading
  chunks 1..t (a frame is new memory; the output thread holds no producer memory).
- Errors: each thread records its first error and drains on; ``wait_consumed`` raises
  one as soon as it is seen, ``finish`` after the threads end.
- Signals: the producer's queue, condition and thread operations run inside
  ``sigshield.shielded`` regions (a ^C's exception cut into ``queue.Queue`` or
  ``threading.Condition`` would leave a lock held or a stale waiter, and the threads, or
  ``abort``, waiting for ever; one cut into ``Thread.join`` marks a running thread
  stopped); their waits poll for a deferred signal, so it is raised within ``POLL``.
  ``abort`` waits at most ``ABORT_WAIT`` seconds in all: a thread that has not stopped by
  then is left behind (a daemon), and the object's descriptor is pointed at
  ``/dev/null`` rather than closed (its number is never reused under a writer).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable

import zstandard

from .directio import DirectWriter
from .errors import StoreError
from .hashes import Hash
from .nar_restore import write_all
from .objects import (
    CHUNK,
    DIRECT,
    INLINE_MAX,
    QUEUE_DEPTH,
    WRITEBACK_STEP,
    ZSTD_LEVEL,
    ZSTD_THREADS,
    ObjectInfo,
    start_writeback,
)
from .sigshield import join as join_shielded
from .sigshield import shielded
from .sigshield import wait_for as wait_shielded

#: chunks compressed (or queued for it) but not yet written out, before ``write`` waits
OUT_LAG = 2 * QUEUE_DEPTH
#: seconds ``abort`` waits, in all, for the threads to stop
ABORT_WAIT = 2.0


class _Worker(threading.Thread):
    """Applies ``fn`` to every chunk from a bounded queue. On error it keeps draining so
    the producer never blocks; the error is re-raised by ``join_checked``. ``done``
    counts the chunks finished with (for ``NarSink.wait_consumed``)."""

    def __init__(self, fn: Callable[[bytes], None], cond: threading.Condition) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.q: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self.error: BaseException | None = None
        self.cond = cond
        self.done = 0
        self.stopped = False

    def run(self) -> None:
        fn, get, cond = self.fn, self.q.get, self.cond
        while True:
            chunk = get()
            if chunk is None:
                with cond:
                    self.stopped = True
                    cond.notify_all()
                return
            if self.error is None:
                try:
                    fn(chunk)
                except BaseException as e:  # noqa: BLE001 - handed to the producer
                    self.error = e
            del chunk  # a pooled buffer's slot may be reused as soon as ``done`` moves
            with cond:
                self.done += 1
                cond.notify_all()

    def join_checked(self) -> None:
        with shielded:
            self.q.put(None)
            join_shielded(self)
        if self.error is not None:
            raise self.error


class _Compressor(_Worker):
    """Compresses each chunk into one zstd frame, queued on ``frames`` (the exception,
    if compressing fails); ``None`` there once it has ended."""

    def __init__(self, level: int, cond: threading.Condition) -> None:
        super().__init__(self._frame, cond)
        self.cctx = zstandard.ZstdCompressor(level=level)  # one per thread: not thread-safe
        self.frames: queue.SimpleQueue = queue.SimpleQueue()

    def _frame(self, chunk: bytes) -> None:
        try:
            frame: bytes | BaseException = self.cctx.compress(chunk)
        except BaseException as e:  # noqa: BLE001 - handed on in order, see the module doc
            frame = e
        self.frames.put(frame)

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.frames.put(None)


class _Output(threading.Thread):
    """Takes the compressors' frames in chunk order and hands them to ``out``."""

    def __init__(
        self, compressors: list[_Compressor], out: Callable[[bytes], None], cond: threading.Condition
    ):
        super().__init__(daemon=True)
        self.compressors = compressors
        self.out = out
        self.cond = cond
        self.error: BaseException | None = None
        self.done = 0  # frames taken

    def run(self) -> None:
        cs, n, k = self.compressors, len(self.compressors), 0
        while True:
            frame = cs[k % n].frames.get()
            if frame is None:  # that compressor ended, so every chunk has been framed
                return
            k += 1
            if self.error is None:
                try:
                    if isinstance(frame, BaseException):
                        raise frame
                    self.out(frame)
                except BaseException as e:  # noqa: BLE001 - handed to the producer
                    self.error = e
            del frame
            with self.cond:
                self.done = k
                self.cond.notify_all()


class NarSink:
    """Consumes NAR bytes: hashes them and writes the compressed object to ``obj_fd``
    (an open temp file the sink takes ownership of). ``finish`` fsyncs the file and
    returns the digests; ``abort`` stops the threads (the caller removes the file).

    Small NARs never start a thread: the first ``INLINE_MAX`` bytes are only collected;
    if the NAR ends there, ``finish`` hashes and compresses them (one frame) on the
    calling thread (starting the threads costs more than compressing a few KiB). Past
    ``INLINE_MAX`` the threads start and get the collected chunks first. ``threads`` is
    the number of compressor threads (at least one)."""

    def __init__(self, obj_fd: int, level: int = ZSTD_LEVEL, threads: int = ZSTD_THREADS) -> None:
        self.nar_sha = hashlib.sha256()
        self.file_sha = hashlib.sha256()
        self.nar_size = 0
        self.file_size = 0
        self.synced = 0
        self.fd = obj_fd
        self.level, self.threads = level, max(1, threads)
        self.held: list[bytes | bytearray | memoryview] | None = []  # None once the threads run
        self.hasher: _Worker | None = None
        self.compressors: list[_Compressor] = []
        self.output: _Output | None = None
        self.writer: DirectWriter | None = None
        self.consumed = threading.Condition()
        self.queued = 0  # chunks handed to the threads
        self.gather = bytearray()  # small ``write`` chunks not yet queued

    def _start(self) -> None:
        held, self.held = self.held or [], None
        if DIRECT:
            self.writer = DirectWriter(self.fd)
        self.hasher = _Worker(self.nar_sha.update, self.consumed)
        self.compressors = [_Compressor(self.level, self.consumed) for _ in range(self.threads)]
        self.output = _Output(self.compressors, self._out, self.consumed)
        with shielded:  # (``start`` waits on a Condition)
            for t in (self.hasher, *self.compressors, self.output):
                t.start()
        data = b"".join(held)  # at most INLINE_MAX + CHUNK: whole chunks, not a frame per write
        whole = len(data) - len(data) % CHUNK
        for i in range(0, whole, CHUNK):
            self._queue(data[i : i + CHUNK])
        self.gather = bytearray(data[whole:])  # frames stay on the CHUNK grid (``write``)

    def _queue(self, chunk: bytes | bytearray | memoryview) -> None:
        assert self.hasher is not None and self.output is not None
        with shielded:  # (see the module docstring; the puts wait only for a thread that never blocks)
            self.hasher.q.put(chunk)
            self.compressors[self.queued % self.threads].q.put(chunk)
            self.queued += 1
            out = self.output
            if self.queued - out.done > OUT_LAG:
                with self.consumed:
                    wait_shielded(
                        self.consumed, lambda: self.queued - out.done <= OUT_LAG or not out.is_alive()
                    )

    def _out(self, data: bytes) -> None:
        if data:
            self.file_sha.update(data)
            self.file_size += len(data)
            if self.writer is not None:
                self.writer.write(data)
                if self.writer.direct:
                    return
            else:
                write_all(self.fd, data)
            # buffered (no O_DIRECT here, or the device proved slow): writeback as we go;
            # a range the writer still stages is simply not dirty yet
            if self.file_size - self.synced >= WRITEBACK_STEP:
                # start writing back what we have (non-blocking), so the final fsync
                # waits only for the tail instead of the whole object
                start_writeback(self.fd, self.synced, self.file_size - self.synced)
                self.synced = self.file_size

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Queue ``chunk``; it must not be mutated afterwards. The object's frames are cut
        at every ``CHUNK`` bytes of the NAR whatever the sizes of the writes (pieces
        that do not fill a frame are copied until they do), so the object of a NAR
        written this way does not depend on how its reads fell."""
        if not chunk:
            return
        self.nar_size += len(chunk)
        if self.held is not None:
            self.held.append(chunk)
            if self.nar_size > INLINE_MAX:
                self._start()
            return
        view = memoryview(chunk)
        if self.gather:
            take = CHUNK - len(self.gather)
            self.gather += view[:take]
            view = view[take:]
            if len(self.gather) < CHUNK:
                return
            self._flush_gathered()
        while len(view) >= CHUNK:
            self._queue(view[:CHUNK])
            view = view[CHUNK:]
        if view:
            self.gather += view

    def write_pooled(self, view: memoryview) -> int:
        """Queue ``view`` (at most ``CHUNK`` bytes), memory the caller will reuse, as one
        chunk: returns a ticket; the memory may be overwritten once
        ``wait_consumed(ticket)`` returns. (Until the threads start, the bytes are
        copied, so the ticket is then 0.)"""
        if self.held is not None:
            self.write(bytes(view))
            return 0
        if view:
            self._flush_gathered()
            self.nar_size += len(view)
            self._queue(view)
        return self.queued

    def _flush_gathered(self) -> None:
        if self.gather:
            chunk, self.gather = bytes(self.gather), bytearray()
            self._queue(chunk)

    def wait_consumed(self, ticket: int) -> None:
        """Block until the hasher and the compressors are done with the chunk ``ticket``
        names (and all before it). Raises a thread's error (a full disk, say) as soon as
        it is seen, so the producer stops instead of reading the rest of its input."""
        h, cs, n = self.hasher, self.compressors, self.threads
        if not ticket or h is None:
            return

        def consumed() -> bool:
            # compressor i gets chunks i+1, i+1+n, ...: (ticket - i + n - 1) // n of 1..ticket
            return (h.done >= ticket or h.stopped) and all(
                c.done >= (ticket - i + n - 1) // n or c.stopped for i, c in enumerate(cs)
            )

        if not consumed():
            with shielded, self.consumed:
                wait_shielded(self.consumed, consumed)
        for w in (h, self.output):
            if w is not None and w.error is not None:
                raise w.error

    def finish(self, sync: bool = True) -> ObjectInfo:
        """Flush, fsync (unless ``sync`` is false: the caller makes the file durable
        some other way before it is used) and close the object; return the digests.
        If that fails (a thread's error, a full disk), the sink is aborted first: no
        thread, descriptor or buffer outlives it."""
        try:
            return self._finish(sync)
        except BaseException:
            self.abort()
            raise

    def _finish(self, sync: bool) -> ObjectInfo:
        if self.held is not None:
            data = b"".join(self.held)
            self.held = None
            self.nar_sha.update(data)
            self._out(zstandard.ZstdCompressor(level=self.level).compress(data))
        else:
            assert self.hasher is not None and self.output is not None
            self._flush_gathered()
            self.hasher.join_checked()
            for c in self.compressors:
                c.join_checked()
            with shielded:
                join_shielded(self.output)
            if self.output.error is not None:
                raise self.output.error
            if self.writer is not None:
                self.writer.close()
        if sync:
            os.fsync(self.fd)
        fd, self.fd = self.fd, -1  # marked closed first: a failing close is not retried
        os.close(fd)
        return ObjectInfo(
            Hash("sha256", self.nar_sha.digest()),
            self.nar_size,
            Hash("sha256", self.file_sha.digest()),
            self.file_size,
        )

    def abort(self) -> None:
        """Stop every thread, free the staging buffer, close the file (idempotent). Never
        waits more than about ``ABORT_WAIT`` seconds (see the module docstring); a signal
        meanwhile is raised when it returns."""
        with shielded:
            self._abort(time.monotonic() + ABORT_WAIT)

    def _abort(self, deadline: float) -> None:
        workers = [w for w in (self.hasher, *self.compressors) if w is not None and w.is_alive()]
        for w in workers:
            w.error = w.error or StoreError("aborted")
            # (a full queue empties at once: a worker with an error only drains). The lock is
            # tried first: one a signal's exception left held (a handler other than kiln's,
            # which defers to ``sigshield``) would block ``put`` for ever
            if not w.q.mutex.acquire(timeout=max(0.0, deadline - time.monotonic())):
                continue
            w.q.mutex.release()
            with contextlib.suppress(queue.Full):
                w.q.put(None, timeout=max(0.0, deadline - time.monotonic()))
        for w in workers:
            join_shielded(w, deadline - time.monotonic())
        out = self.output
        if out is not None and out.is_alive():
            out.error = out.error or StoreError("aborted")
            join_shielded(out, deadline - time.monotonic())  # every compressor has queued its None
        writing = out is not None and out.is_alive()
        if self.writer is not None and not writing:
            self.writer.release()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            if writing:  # the output thread may still write to ``fd``: never to a file opened later
                null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                os.dup2(null, fd, inheritable=False)
                os.close(null)
            else:
                os.close(fd)
