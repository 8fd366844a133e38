"""The temporary file a download fills (``Sink``: the bytes and a running hash of
exactly them, reset when a retry restarts from zero), its progress line on a terminal,
and the NAR hash of what it holds (for a recursive fetchurl). Used by ``fetch`` and,
through ``write(chunk, total)``, ``size`` and ``reset()``, by ``fetchhttp``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import IO

from .hashes import Hash
from .nar_read import HDR_CONTENTS, HDR_REGULAR, HDR_ROOT, TOK_CLOSE
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


class Sink:
    """The temporary file plus a running hash of exactly the bytes it holds."""

    def __init__(self, f: IO[bytes], algo: str, progress: Progress) -> None:
        self.f = f
        self.algo = algo
        self.progress = progress
        self.reset()

    def reset(self) -> None:
        self.f.seek(0)
        self.f.truncate()
        self.h = hashlib.new(self.algo)
        self.size = 0

    def write(self, chunk: bytes, total: int | None = None) -> None:
        self.f.write(chunk)
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
