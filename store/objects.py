"""Compressed NAR objects: names, constants, publishing and syncing (the ingest pipeline
that makes them: ``narsink``; reading them back, verified: ``objread``).

Theory of operation
-------------------
An object is ``objects/<aa>/<sha256 hex of the file>.nar.zst``: the NAR of one store path
as a sequence of zstd frames (one per chunk of up to 1 MiB, see ``narsink``), named by
the digest of the *compressed* bytes, written once (temp file in ``tmp/``, fsync,
rename, fsync of the directory). Renaming over an existing object is harmless: equal
names mean equal bytes.

Compression level: zstd level 1, on ``ZSTD_THREADS`` threads. On the 200 MiB benchmark
tree it compresses to ~0.63 of the NAR (level 3: ~0.57) at ~2x the speed of level 3
(level 3 alone costs more CPU than Nix's whole ``nix-store --add``; even level 1 leaves
kiln's ingest slower than that, see ``docs/store.md``). Registries can recompress.

A NAR past ``INLINE_MAX`` is written with ``O_DIRECT`` (``directio.DirectWriter``: no
page-cache copy; it must reach the device before the ``fsync`` anyway). Where that is
unavailable the object is handed to writeback every 16 MiB (``sync_file_range``,
non-blocking), so disk writes overlap compression and the final ``fsync`` only waits for
the tail. ``KILN_NO_DIRECT=1`` turns ``O_DIRECT`` off for objects and copies alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from .hashes import Hash
from .nar_restore import fsync_dir as fsync_dir  # re-exported: the store's modules import it from here

if TYPE_CHECKING:
    from .narsink import NarSink

CHUNK = 1 << 20
QUEUE_DEPTH = 8
ZSTD_LEVEL = 1
#: compressor threads of a ``NarSink`` (see ``narsink``), one per core: on 2 cores, 2 beat
#: 3 (in-process ingest medians 0.573 / 0.602 s over six rounds) and 4 (0.581). The
#: object is the same for any number of them.
ZSTD_THREADS = max(1, min(8, os.cpu_count() or 1))
CANON_MTIME = 1
WRITEBACK_STEP = 16 << 20
#: NARs up to this size are hashed and compressed on the caller's thread (see NarSink)
INLINE_MAX = 256 << 10
DIRECT = os.environ.get("KILN_NO_DIRECT", "") in ("", "0")


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


def chunks_of(src: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
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


#: libc's ``sync_file_range`` once looked up (False: it has none); ctypes is imported on first use
_sync_file_range: Callable[..., int] | Literal[False] | None = None


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """``sync_file_range(SYNC_FILE_RANGE_WRITE)``: queue dirty pages for writing without
    waiting (durability still comes from the final ``fsync``). No-op where unavailable."""
    global _sync_file_range
    if _sync_file_range is None:
        try:
            import ctypes

            found = ctypes.CDLL(None, use_errno=True).sync_file_range
            found.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            _sync_file_range = found
        except (OSError, AttributeError):
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE


#: libc's ``syncfs`` once looked up (False: it has none)
_syncfs: Callable[[int], int] | Literal[False] | None = None


def sync_filesystem(d: Path) -> None:
    """Make everything written to the file system holding ``d`` durable: ``syncfs(2)``,
    one journal commit for a whole batch of files, renames and directories (group
    commit). Falls back to ``os.sync`` where ``syncfs`` is unavailable."""
    global _syncfs
    if _syncfs is None:
        try:
            import ctypes

            found = ctypes.CDLL(None, use_errno=True).syncfs
            found.argtypes = [ctypes.c_int]
            _syncfs = found
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
