"""Reading one apt index file, decompressed: the errors of the apt modules (``AptError``)
and ``read_index_bytes``.

Invariants: a file is read to its end or refused, never returned shorter (a cut
compressed stream, garbage after its last stream or an undecodable one is an
``AptError`` naming the file); no more than ``MAX_INDEX_BYTES`` (or the caller's limit)
of decompressed data is ever held; a FIFO where an index belongs is refused, not
waited on.
"""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import zlib
from pathlib import Path
from typing import Protocol

from .errors import FormatError, KilnError


class AptError(KilnError):
    """The apt metadata is missing or cannot satisfy a request."""


# No Debian index comes near this decompressed (bookworm's main amd64 Packages: ~45 MB);
# a file in a --lists dir that does is refused before it fills the memory (a compression
# bomb), whether or not its hash would be checked after.
MAX_INDEX_BYTES = 512 << 20


def read_index_bytes(path: Path, limit: int | None = None) -> bytes:
    """The (decompressed) bytes of one (possibly compressed) index file. ``AptError`` naming the file if it
    cannot be read or decompressed: corrupt data, data cut inside a compressed stream (a
    torn download; zstandard's ``stream_reader`` would end quietly inside a cut frame,
    losing the packages after it), data after the last stream that is not padding
    (xz, bzip2 and zstd are decoded as ``.deb`` members are, by ``debstreams.Streams``),
    or more than ``limit`` (default ``MAX_INDEX_BYTES``) bytes once decompressed (nothing
    beyond it is read)."""
    limit = MAX_INDEX_BYTES if limit is None else limit
    if not path.is_file():  # (a FIFO would be waited on for ever)
        raise AptError(f"cannot read apt index {path}: not a regular file")
    if path.name.endswith(".lz4"):
        # apt's own helper knows every compressor apt uses; no lz4 binding needed
        helper = ["/usr/lib/apt/apt-helper", "cat-file", str(path)]
        with subprocess.Popen(helper, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            try:
                data = _capped(proc.stdout, limit, path)
            except AptError:
                proc.kill()  # (it would wait on a full pipe for ever: the with block waits for it)
                raise
            err = proc.stderr.read()
        if proc.returncode != 0:
            raise AptError(f"cannot decompress {path}: {err.decode(errors='replace').strip()}")
        return data
    import zstandard

    from .debarchive import Window
    from .debstreams import BZIP2, XZ, ZSTD, Streams

    codec = {".xz": XZ, ".bz2": BZIP2, ".zst": ZSTD}.get(path.suffix)
    try:
        with open(path, "rb") as f:
            if path.name.endswith(".gz"):  # (GzipFile refuses a cut stream and trailing bytes itself)
                data = _capped(gzip.GzipFile(fileobj=f), limit, path)
            elif codec is not None:
                raw = Window(f, 0, os.fstat(f.fileno()).st_size)
                data = _capped(Streams(raw, codec, f"{codec.name} data"), limit, path)
            else:
                data = _capped(f, limit, path)
    # FormatError: Streams' (cut, garbage after); OSError: BadGzipFile, bz2's "Invalid data
    # stream", reading the file; ValueError: bz2.decompress's "ended before the end-of-stream"
    except (FormatError, EOFError, ValueError, lzma.LZMAError, zlib.error, zstandard.ZstdError, OSError) as e:
        # a torn download or a stray file in the lists dir: name it
        raise AptError(f"cannot read apt index {path}: {e}") from None
    return data


class _Reader(Protocol):
    def read(self, n: int, /) -> bytes: ...


def _capped(stream: _Reader, limit: int, path: Path) -> bytes:
    """What ``stream`` reads to its end; ``AptError`` once it gives more than ``limit``
    bytes (reading stops at ``limit + 1``)."""
    chunks: list[bytes] = []
    got = 0
    while chunk := stream.read(min(1 << 20, limit + 1 - got)):
        got += len(chunk)
        if got > limit:
            raise AptError(
                f"apt index {path} decompresses to more than {limit} bytes (a Debian index is tens of "
                "MB): not read (a stray or hostile file in the lists directory?)"
            )
        chunks.append(chunk)
    return b"".join(chunks)
