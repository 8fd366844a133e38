"""Reading ``.deb`` files: the ``ar`` container, the decompressed ``data.tar`` stream and a
bounded ``tarfile`` member class. Used by ``debunpack`` (which writes the tree).

Theory of operation
-------------------
A ``.deb`` is an ``ar`` archive holding ``debian-binary``, ``control.tar.*`` and
``data.tar.*``. ``read_ar`` is a small strict reader of the common ``ar`` format (global
header ``!<arch>\\n``, 60-byte member headers, data padded to even offsets; GNU ``/``
name terminators accepted). Sizes are plain digits and every member must end inside the
file, so a hostile header can neither loop the reader nor point past the end.

``open_data`` (``debstreams``) picks the decoder by the member's name and refuses data
cut inside a compressed stream or followed by anything but allowed padding; ``ReadAhead``
runs it on a bounded helper thread so decompressing and writing overlap.

``BoundedMember`` is the ``TarInfo`` class the stream is read with. It refuses what
``tarfile`` handles unboundedly: member sizes over ``MAX_MEMBER_SIZE`` (skipped by
reading), long-name and pax headers over ``MAX_TAR_HEADER`` (read into memory whole),
more than ``MAX_HEADER_CHAIN`` of them in a row (``tarfile`` recurses once per header),
global pax headers over ``MAX_TAR_HEADER`` in total (they accumulate), and GNU sparse
members (dpkg does not support them either; their maps are read whole). It records whether tar's end-of-archive block was seen (``kiln_ended`` on the ``TarFile``),
so a stream cut at a member boundary is told from a complete one. ``open_tar`` and
``next_member`` turn the other exceptions ``tarfile``'s header parser raises on malformed
input (``ValueError`` from pax numbers, ``IndexError`` from short sparse blocks, ...) into
``tarfile.ReadError``, and refuse a member that carries no data (a link, directory,
device or fifo) but declares a size: ``tarfile`` would read what that size covers as
the next headers, where other readers skip it; ``check_tail`` reads what follows the end-of-archive block, which
must be NUL record padding, to the end of the stream (so the decoder sees the end too).
"""

from __future__ import annotations

import os
import queue
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Protocol, Self

from .debstreams import open_data as open_data  # re-exported: debunpack reads the member through it
from .errors import FormatError
from .sigshield import shielded

#: a .deb has three ar members; a few more are tolerated, an endless list is not
_MAX_AR_MEMBERS = 64
#: largest GNU long-name / pax header accepted: tarfile reads one whole into memory
MAX_TAR_HEADER = 1 << 20
#: largest data a member header may declare (the whole unpack is bounded separately, in
#: ``debunpack``): tarfile skips the data of a member by reading it, and past the end of
#: the stream it keeps "reading" once per 10 KiB, so a size of 2**88 would spin forever
MAX_MEMBER_SIZE = 16 << 30
#: extended headers (long name, long link, pax) allowed in a row before one member: tarfile
#: recurses once per header, so an endless chain would end in RecursionError. A real
#: member needs at most a long link and a long name, or one pax header (plus a global one).
MAX_HEADER_CHAIN = 8
#: NUL bytes allowed after tar's end-of-archive block: the rest of the end marker and the
#: record padding (real .debs have at most ~10 KiB: tar's default record is 10240 bytes)
MAX_TAR_PADDING = 1 << 20


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
    flight); ``close`` stops the helper even if the caller gave up half-way. An error of
    the source is raised by the ``read`` that reaches it and by every ``read`` after it
    (the helper has stopped: waiting for more would hang)."""

    def __init__(self, src: Readable, chunk: int = 1 << 20, depth: int = 8) -> None:
        # chunks read (b"" at the end) or the exception that stopped the helper
        self._q: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(src, chunk), daemon=True)
        self._thread.start()

    def _run(self, src: Readable, chunk: int) -> None:
        try:
            while not self._stop.is_set():
                data = src.read(chunk)
                self._put(data)
                if not data:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the reading thread
            self._put(e)

    def _put(self, item: bytes | BaseException) -> None:
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
                if self._error is not None:
                    raise self._error
                with shielded:  # (a signal's exception cut into Queue.get could leave its lock held)
                    item = self._q.get()
                if isinstance(item, BaseException):
                    self._error = item
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


# --- tar --------------------------------------------------------------------------------

_BIG_HEADERS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class BoundedMember(tarfile.TarInfo):
    """``TarInfo`` that refuses what ``tarfile`` would handle unboundedly (see the module
    docstring: oversized or endlessly chained extended headers, growing global headers,
    sparse members) with ``tarfile.HeaderError``, and records on the ``TarFile`` whether
    the end-of-archive block was seen, so an archive cut at a member boundary is not taken
    for a complete one."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:  # type: ignore[attr-defined]  # (tarfile's, not in typeshed)
            tf.kiln_ended = True  # type: ignore[attr-defined]
            raise

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            self._refuse_sparse()
        if self.type not in _BIG_HEADERS:
            if not 0 <= self.size <= MAX_MEMBER_SIZE:
                raise tarfile.HeaderError(
                    f"member {self.name!r} declares {self.size} bytes (limit {MAX_MEMBER_SIZE})"
                )
            return super()._proc_member(tf)  # type: ignore[misc]
        if not 0 <= self.size <= MAX_TAR_HEADER:
            raise tarfile.HeaderError(
                f"extended header of {self.size} bytes before {self.name!r} (limit {MAX_TAR_HEADER})"
            )
        if self.type == tarfile.XGLTYPE:
            total = getattr(tf, "kiln_global_bytes", 0) + self.size
            if total > MAX_TAR_HEADER:
                raise tarfile.HeaderError(
                    f"global pax headers of {total} bytes in all (limit {MAX_TAR_HEADER})"
                )
            tf.kiln_global_bytes = total  # type: ignore[attr-defined]
        # tarfile reads the member an extended header belongs to by recursing: count them
        depth = getattr(tf, "kiln_chain", 0)
        if depth >= MAX_HEADER_CHAIN:
            raise tarfile.HeaderError(f"more than {MAX_HEADER_CHAIN} extended headers in a row")
        tf.kiln_chain = depth + 1  # type: ignore[attr-defined]
        try:
            return super()._proc_member(tf)  # type: ignore[misc]
        finally:
            tf.kiln_chain = depth  # type: ignore[attr-defined]

    def _refuse_sparse(self, member: tarfile.TarInfo | None = None, *_: object) -> None:
        name = (member or self).name
        raise tarfile.HeaderError(f"GNU sparse member {name!r} (dpkg does not support them either)")

    # pax (GNU.sparse.*) sparse maps: tarfile would read them whole, number by number
    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


@contextmanager
def _header_errors() -> Iterator[None]:
    """tarfile's header parser is not hardened: besides ``TarError`` it raises
    ``ValueError`` (``int()`` of pax numbers, ``UnicodeDecodeError`` of ``hdrcharset``),
    ``IndexError`` (short sparse blocks) on malformed input; ``RecursionError`` is kept as a
    backstop to ``MAX_HEADER_CHAIN``. All of them mean a corrupt archive."""
    try:
        yield
    except (ValueError, IndexError, RecursionError) as e:
        raise tarfile.ReadError(f"malformed tar header: {type(e).__name__}: {e}") from None


class Readable(Protocol):
    """What ``open_tar`` reads: ``read(n)`` (``ReadAhead``, ``Window``, a decoder)."""

    def read(self, n: int = -1, /) -> bytes: ...


def open_tar(stream: Readable) -> tarfile.TarFile:
    """``stream`` as a ``tarfile`` stream (``r|``: nothing seeks) of ``BoundedMember``s;
    malformed headers raise ``tarfile.TarError``. ``kiln_ended`` is set."""
    with _header_errors():
        # (a stream only reads; typeshed's fileobj type also asks for write, tell and seek)
        tar: tarfile.TarFile = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115 - the caller closes it
            fileobj=stream, mode="r|", tarinfo=BoundedMember
        )
    # (already True if the archive is empty: open() read the end marker)
    tar.kiln_ended = getattr(tar, "kiln_ended", False)  # type: ignore[attr-defined]
    return tar


#: member types that carry no data: their header's size must be 0
_DATALESS = (
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.DIRTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.FIFOTYPE,
)


def next_member(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    """The next member of ``tar`` (None at the end); malformed headers raise
    ``tarfile.TarError``, and so does a symlink, hard link, directory, device or fifo
    whose size (in its header or a pax ``size`` record) is not 0. Members are not kept (``tarfile`` would keep every one in
    ``tar.members``: unbounded memory for millions of tiny members)."""
    with _header_errors():
        member = tar.next()
    tar.members.clear()  # type: ignore[attr-defined]  # (TarFile's list, not in typeshed)
    if member is not None and member.type in _DATALESS and member.size != 0:
        # tarfile reads no data after such a header, so whatever the size covers would
        # be read as the next headers, where other tar readers skip it
        raise tarfile.HeaderError(
            f"member {member.name!r} of type {member.type!r} (no data) declares {member.size} bytes"
        )
    return member


def check_tail(tar: tarfile.TarFile, what: str) -> None:
    """Read the rest of ``tar``'s stream after its end-of-archive block: it must be NUL
    bytes (the rest of the end marker and the record padding), at most ``MAX_TAR_PADDING``.
    Reading it to the end also makes the decoder check what follows the compressed stream.
    Raises ``FormatError`` starting with ``what``."""
    seen = 0
    while chunk := tar.fileobj.read(1 << 16):
        seen += len(chunk)
        if chunk.count(0) != len(chunk):
            raise FormatError(f"{what}: data after the tar end-of-archive marker (expected only NUL padding)")
        if seen > MAX_TAR_PADDING:
            raise FormatError(
                f"{what}: more than {MAX_TAR_PADDING} bytes of padding after the tar end-of-archive marker"
            )
