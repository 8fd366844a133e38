"""Compressed NAR objects: the one-pass ingest pipeline (reading them back, verified:
``objread``).

Theory of operation
-------------------
An object is ``objects/<aa>/<sha256 hex of the file>.nar.zst``: a zstd frame holding the
NAR of one store path, named by the digest of the *compressed* bytes, written once
(temp file in ``tmp/``, fsync, rename, fsync of the directory). Renaming over an
existing object is harmless: equal names mean equal bytes.

Ingest: a producer (``ingest.TreeIngest`` walking a tree, or a NAR stream being
restored) hands NAR bytes in ~1 MiB chunks to a ``NarSink``. Each chunk goes to two
consumer threads: one runs SHA-256 over the NAR, the other feeds a multi-threaded zstd
compressor, whose output a third SHA-256es and writes (so a write waiting for the device
does not leave zstd without input). All of
hashlib, zstd and the read/write syscalls release the GIL, so both cores stay busy.
Queues are bounded (``QUEUE_DEPTH`` chunks), so memory stays flat whatever the input size.

Compression level: zstd level 1 with ``ZSTD_THREADS`` worker threads. On the 200 MiB benchmark tree
it compresses to ~0.63 of the NAR (level 3: ~0.57) at ~2x the speed of level 3, which
is what lets ``kiln store add`` beat ``nix-store --add`` while compressing (level 3
alone costs more than Nix's whole ingest on 2 cores). Registries can recompress.

A NAR past ``INLINE_MAX`` is written with ``O_DIRECT`` (``directio.DirectWriter``: no
page-cache copy; it must reach the device before the ``fsync`` anyway). Where that is
unavailable the object is handed to writeback every 16 MiB (``sync_file_range``,
non-blocking), so disk writes overlap compression and the final ``fsync`` only waits for
the tail. ``KILN_NO_DIRECT=1`` turns ``O_DIRECT`` off for objects and copies alike.

Producers that reuse their buffers (``TreeIngest``'s ring) queue them with
``write_pooled`` and wait on the returned ticket (``wait_consumed``) before overwriting:
both threads count the chunks they are done with.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from .directio import DirectWriter
from .errors import StoreError
from .hashes import Hash
from .nar_restore import fsync_dir as fsync_dir  # re-exported: the store's modules import it from here
from .nar_restore import write_all

CHUNK = 1 << 20
QUEUE_DEPTH = 8
ZSTD_LEVEL = 1
#: zstd workers: one more than the cores (up to 4), so a worker blocked handing over
#: its job does not leave a core idle (2 cores: 3 workers, ~5 % faster ingest than 2).
#: zstd's output is the same for any number of workers >= 1.
ZSTD_THREADS = min(4, (os.cpu_count() or 1) + 1)
CANON_MTIME = 1
WRITEBACK_STEP = 16 << 20
#: NARs up to this size are hashed and compressed on the caller's thread (see NarSink)
INLINE_MAX = 256 << 10
DIRECT = not os.environ.get("KILN_NO_DIRECT")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """Digests of one ingested NAR: the NAR itself and its compressed file."""

    nar_hash: Hash
    nar_size: int
    file_hash: Hash
    file_size: int


def object_rel_path(file_hash: Hash) -> str:
    """``<aa>/<hex>.nar.zst`` relative to ``objects/``."""
    h = file_hash.hex
    return f"{h[:2]}/{h}.nar.zst"


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
        self.q.put(None)
        self.join()
        if self.error is not None:
            raise self.error


class NarSink:
    """Consumes NAR bytes: hashes them and writes the compressed object to ``obj_fd``
    (an open temp file the sink takes ownership of). ``finish`` fsyncs the file and
    returns the digests; ``abort`` stops the threads (the caller removes the file).

    Small NARs never start a thread: the first ``INLINE_MAX`` bytes are only collected;
    if the NAR ends there, ``finish`` hashes and compresses them on the calling thread
    with a single-threaded compressor (starting two Python threads and zstd's worker
    pool costs more than compressing a few KiB). Past ``INLINE_MAX`` the threads start
    and get the collected chunks first."""

    def __init__(self, obj_fd: int, level: int = ZSTD_LEVEL, threads: int = ZSTD_THREADS) -> None:
        self.nar_sha = hashlib.sha256()
        self.file_sha = hashlib.sha256()
        self.nar_size = 0
        self.file_size = 0
        self.synced = 0
        self.fd = obj_fd
        self.level, self.threads = level, threads
        self.held: list[bytes | bytearray] | None = []  # None once the threads run
        self.cobj = None
        self.hasher: _Worker | None = None
        self.compressor: _Worker | None = None
        self.outputter: _Worker | None = None
        self.writer: DirectWriter | None = None
        self.consumed = threading.Condition()
        self.queued = 0  # chunks handed to the threads

    def _start(self) -> None:
        held, self.held = self.held or [], None
        if DIRECT:
            self.writer = DirectWriter(self.fd)
        self.cobj = zstandard.ZstdCompressor(level=self.level, threads=self.threads).compressobj()
        self.hasher = _Worker(self.nar_sha.update, self.consumed)
        self.compressor = _Worker(self._compress, self.consumed)
        self.outputter = _Worker(self._out, self.consumed)
        self.hasher.start()
        self.compressor.start()
        self.outputter.start()
        for chunk in held:
            self.hasher.q.put(chunk)
            self.compressor.q.put(chunk)
        self.queued = len(held)

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

    def _compress(self, chunk: bytes) -> None:
        # hashing and writing the output on a thread of its own keeps zstd fed while
        # a write waits for the device
        out = self.cobj.compress(chunk)
        if out:
            self.outputter.q.put(out)

    def write(self, chunk: bytes | bytearray) -> None:
        """Queue ``chunk``; it must not be mutated afterwards."""
        if chunk:
            self.nar_size += len(chunk)
            if self.held is not None:
                self.held.append(chunk)
                if self.nar_size <= INLINE_MAX:
                    return
                self._start()
                return
            self.hasher.q.put(chunk)
            self.compressor.q.put(chunk)
            self.queued += 1

    def write_pooled(self, view: memoryview) -> int:
        """Queue ``view``, memory the caller will reuse: returns a ticket; the memory may
        be overwritten once ``wait_consumed(ticket)`` returns. (Until the threads start,
        the bytes are copied, so the ticket is then 0.)"""
        if self.held is not None:
            self.write(bytes(view))
            return 0
        self.write(view)
        return self.queued

    def wait_consumed(self, ticket: int) -> None:
        """Block until both threads are done with the chunk ``ticket`` names (and all
        before it). Raises a thread's error (a full disk, say) as soon as it is seen, so
        the producer stops instead of reading the rest of its input for nothing."""
        h, c = self.hasher, self.compressor
        if not ticket or h is None or c is None:
            return
        with self.consumed:
            self.consumed.wait_for(
                lambda: (h.done >= ticket or h.stopped) and (c.done >= ticket or c.stopped)
            )
        for w in (h, c, self.outputter):
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
            self.hasher.join_checked()
            self.compressor.join_checked()
            self.outputter.q.put(self.cobj.flush())
            self.outputter.join_checked()
            if self.writer is not None:
                self.writer.close()
        if sync:
            os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        return ObjectInfo(
            Hash("sha256", self.nar_sha.digest()),
            self.nar_size,
            Hash("sha256", self.file_sha.digest()),
            self.file_size,
        )

    def abort(self) -> None:
        for w in (self.hasher, self.compressor, self.outputter):
            if w is not None and w.is_alive():
                w.error = w.error or StoreError("aborted")
                w.q.put(None)
                w.join()
        if self.writer is not None:
            self.writer.release()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def chunks_of(src) -> Iterator[bytes]:
    """``src`` as an iterator of byte chunks (a binary file object or an iterable)."""
    if hasattr(src, "read"):
        return iter(lambda: src.read(CHUNK), b"")
    return iter(src)


def publish_object(tmp: Path, objects: Path, file_hash: Hash) -> Path:
    """Move a finished (fsynced) temp object into place and fsync its directory."""
    final = objects / object_rel_path(file_hash)
    d = final.parent
    if not d.is_dir():
        d.mkdir(exist_ok=True)
        fsync_dir(objects)
    os.rename(tmp, final)
    fsync_dir(d)
    return final


def ingest_stream(chunks: Iterable[bytes], sink: NarSink) -> Iterator[bytes]:
    """Pass ``chunks`` through, feeding each to ``sink`` (for restoring while hashing)."""
    for c in chunks:
        if c:
            sink.write(bytes(c))
            yield c


_sync_file_range = None


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """``sync_file_range(SYNC_FILE_RANGE_WRITE)``: queue dirty pages for writing without
    waiting (durability still comes from the final ``fsync``). No-op where unavailable."""
    global _sync_file_range
    if _sync_file_range is None:
        try:
            import ctypes

            _sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
            _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        except (OSError, AttributeError):
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE


_syncfs = None


def sync_filesystem(d: Path) -> None:
    """Make everything written to the file system holding ``d`` durable: ``syncfs(2)``,
    one journal commit for a whole batch of files, renames and directories (group
    commit). Falls back to ``os.sync`` where ``syncfs`` is unavailable."""
    global _syncfs
    if _syncfs is None:
        try:
            import ctypes

            _syncfs = ctypes.CDLL(None, use_errno=True).syncfs
            _syncfs.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            _syncfs = False
    if not _syncfs:
        os.sync()
        return
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _syncfs(fd) != 0:
            import ctypes

            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}", str(d))
    finally:
        os.close(fd)
