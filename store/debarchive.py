"""Reading ``.deb`` files: the ``ar`` container, the decompressed ``data.tar`` stream and a
bounded ``tarfile`` member class. Used by ``debunpack`` (which writes the tree).

Theory of operation
-------------------
A ``.deb`` is an ``ar`` archive holding ``debian-binary``, ``control.tar.*`` and
``data.tar.*``. ``read_ar`` is a small strict reader of the common ``ar`` format (global
header ``!<arch>\\n``, 60-byte member headers, data padded to even offsets; GNU ``/``
name terminators accepted). Sizes are plain digits and every member must end inside the
file, so a hostile header can neither loop the reader nor point past the end.

``open_data`` picks ``zstandard``, ``lzma``, ``gzip`` or ``bz2`` by the member's name;
``ReadAhead`` runs it on a bounded helper thread so decompressing and writing overlap.
``BoundedMember`` is the ``TarInfo`` class the stream is read with: it refuses long-name and pax
headers over ``MAX_TAR_HEADER`` (``tarfile`` reads one into memory whole) and records
whether tar's end-of-archive block was seen (``kiln_ended`` on the ``TarFile``), so a
stream cut at a member boundary is told from a complete one.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import queue
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import FormatError

#: a .deb has three ar members; a few more are tolerated, an endless list is not
_MAX_AR_MEMBERS = 64
#: largest GNU long-name / pax header accepted: tarfile reads one whole into memory
MAX_TAR_HEADER = 1 << 20


@dataclass(frozen=True, slots=True)
class ArMember:
    name: str
    offset: int
    size: int


def read_ar(f: BinaryIO) -> Iterator[ArMember]:
    """The members of an ``ar`` archive (positions only; the caller seeks and reads)."""
    if f.read(8) != b"!<arch>\n":
        raise FormatError("not an ar archive (missing '!<arch>' header)")
    end = f.seek(0, os.SEEK_END)
    pos = 8
    for _ in range(_MAX_AR_MEMBERS):
        f.seek(pos)
        header = f.read(60)
        if not header:
            return
        if len(header) != 60 or header[58:60] != b"`\n":
            raise FormatError(f"corrupt ar member header at offset {pos}")
        name = header[0:16].decode("ascii", "replace").rstrip()
        if name.endswith("/") and name != "/":
            name = name[:-1]
        field = header[48:58].rstrip(b" ")
        # Digits only: int() would also take "-60" (a member that never advances) or "1_0".
        if not field.isdigit():
            raise FormatError(f"bad ar member size {field!r} at offset {pos}")
        size = int(field)
        if pos + 60 + size > end:
            raise FormatError(
                f"truncated ar archive: member {name!r} at offset {pos} declares {size} bytes, "
                f"only {end - pos - 60} follow"
            )
        yield ArMember(name, pos + 60, size)
        pos += 60 + size + (size & 1)
    raise FormatError(f"more than {_MAX_AR_MEMBERS} ar members (a .deb has three)")


class Window:
    """A read-only view of ``size`` bytes of ``f`` starting at ``offset``."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        self.f, self.pos, self.end = f, offset, offset + size

    def read(self, n: int = -1) -> bytes:
        left = self.end - self.pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        self.f.seek(self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def readable(self) -> bool:
        return True


class ReadAhead:
    """Decompress on a helper thread while the caller parses tar and writes files: the
    codecs release the GIL, so on two cores the two overlap. Bounded (``depth`` chunks in
    flight); ``close`` stops the helper even if the caller gave up half-way."""

    def __init__(self, src, chunk: int = 1 << 20, depth: int = 8) -> None:
        self._q: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._thread = threading.Thread(target=self._run, args=(src, chunk), daemon=True)
        self._thread.start()

    def _run(self, src, chunk: int) -> None:
        try:
            while not self._stop.is_set():
                data = src.read(chunk)
                self._put(data)
                if not data:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the reading thread
            self._put(e)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        want = n if n is not None and n >= 0 else -1
        while want != 0:
            if self._pos >= len(self._buf):
                if self._eof:
                    break
                item = self._q.get()
                if isinstance(item, BaseException):
                    raise item
                if not item:
                    self._eof = True
                    break
                self._buf, self._pos = item, 0
            take = len(self._buf) - self._pos if want < 0 else min(want, len(self._buf) - self._pos)
            parts.append(self._buf[self._pos : self._pos + take])
            self._pos += take
            if want > 0:
                want -= take
        return b"".join(parts)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def open_data(name: str, raw: Window, deb: Path):
    if name == "data.tar":
        return raw
    if name == "data.tar.xz":
        return lzma.LZMAFile(raw)
    if name == "data.tar.gz":
        return gzip.GzipFile(fileobj=raw)
    if name == "data.tar.bz2":
        return bz2.BZ2File(raw)
    if name == "data.tar.zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # zstd -T, pzstd
    raise FormatError(f"{deb.name}: unsupported data member {name!r} (expected data.tar[.xz|.gz|.bz2|.zst])")


_BIG_HEADERS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class BoundedMember(tarfile.TarInfo):
    """``TarInfo`` that refuses oversized long-name/pax headers (``tarfile`` would read
    one into memory whole: a few KB of compressed zeros could ask for gigabytes) and
    records on the ``TarFile`` whether the end-of-archive block was seen, so an archive
    cut at a member boundary is not taken for a complete one."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            tf.kiln_ended = True  # type: ignore[attr-defined]
            raise

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _BIG_HEADERS and self.size > MAX_TAR_HEADER:
            raise tarfile.HeaderError(
                f"extended header of {self.size} bytes before {self.name!r} (limit {MAX_TAR_HEADER})"
            )
        return super()._proc_member(tf)  # type: ignore[misc]
