"""The temporary file a download fills (``Sink``: the bytes and a running hash of
exactly them, reset when a retry restarts from zero), its progress line on a terminal,
and the NAR hash of what it holds (for a recursive fetchurl). Used by ``fetch`` and,
through ``write(chunk, total)``, ``size`` and ``reset()``, by ``fetchdownload``.

A failure to write that file (a full disk, a quota, a read-only file system, an I/O
error) is this machine's, not the source's: ``Sink`` raises it as ``LocalWriteError``,
which is neither an ``OSError`` nor a ``FetchError``, so no retry takes it for a dropped
connection and no other source is tried (each would fail the same way, after the
network retries: ``kiln prefetch`` of a big file into a full ``$TMPDIR`` tried it four
times). The message names the file and how much its file system has free.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import IO

from .errors import KilnError
from .fsstate import state_of
from .hashes import Hash
from .nar_read import HDR_CONTENTS, HDR_REGULAR, HDR_ROOT, TOK_CLOSE
from .nar_restore import write_all
from .progressmode import wants_progress

CHUNK = 1 << 16


class Progress:
    """A one-line progress meter on stderr, only when ``wants_progress``."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled and wants_progress()
        self.label = label if len(label) <= 50 else "…" + label[-49:]
        self.last = 0.0

    def update(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        mib = done / 1048576
        tail = (
            f"{mib:.1f}/{total / 1048576:.1f} MiB {100 * done // max(total, 1)}%"
            if total
            else f"{mib:.1f} MiB"
        )
        sys.stderr.write(f"\r\x1b[Kfetching {self.label} {tail}")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


class LocalWriteError(KilnError):
    """A download's own file (or the directory it goes in) could not be written: not
    retried, no other source tried (see the module docstring)."""

    @classmethod
    def of(cls, e: OSError, path: str | os.PathLike[str], what: str = "the download") -> LocalWriteError:
        """The error for ``e``, raised writing ``what`` at ``path``."""
        where = os.path.dirname(os.fspath(path)) or "."
        state = state_of(where)
        if state is not None and state.read_only:
            fs = f"; the file system holding {where} is read-only"
        elif state is not None:
            fs = f"; the file system holding {where} has {state.free:,} bytes free"
        else:
            fs = ""
        return cls(f"cannot write {what} to {os.fspath(path)}: {e.strerror or e}{fs}")


class Sink:
    """The temporary file (at ``path``) plus a running hash of exactly the bytes it
    holds. Writing it fails with ``LocalWriteError``. Its bytes go straight to the file's
    descriptor: ``f`` is to be unbuffered, or the close after a failed write would try
    to write what a buffer still holds, and fail again with a bare ``OSError``."""

    def __init__(self, f: IO[bytes], algo: str, progress: Progress, path: str | os.PathLike[str]) -> None:
        self.f = f
        self.algo = algo
        self.progress = progress
        self.path = path
        self.reset()

    def reset(self) -> None:
        try:
            self.f.seek(0)
            self.f.truncate()
        except OSError as e:
            raise LocalWriteError.of(e, self.path) from e
        self.h = hashlib.new(self.algo)
        self.size = 0

    def flush(self) -> None:
        """What is buffered to the file, and the file to the disk."""
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            raise LocalWriteError.of(e, self.path) from e

    def write(self, chunk: bytes, total: int | None = None) -> None:
        try:
            write_all(self.f.fileno(), chunk)
        except OSError as e:
            raise LocalWriteError.of(e, self.path) from e
        self.h.update(chunk)
        self.size += len(chunk)
        self.progress.update(self.size, total)

    def digest(self) -> bytes:
        return self.h.digest()


def nar_hash_of_file(f: IO[bytes], algo: str) -> Hash:
    """The NAR hash of the file ``f`` holds, as ``fetch_url`` leaves it (regular, not
    executable). (A NAR gives the length before the contents, so it is hashed after the
    download, from the file.)"""
    f.flush()
    size = f.seek(0, os.SEEK_END)
    h = hashlib.new(algo, HDR_ROOT + HDR_REGULAR + HDR_CONTENTS + size.to_bytes(8, "little"))
    f.seek(0)
    while chunk := f.read(CHUNK):
        h.update(chunk)
    h.update(b"\0" * (-size % 8) + TOK_CLOSE)
    return Hash(algo, h.digest())
