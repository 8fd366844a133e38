"""The compressed streams a ``.deb``'s ``data.tar`` comes in (``debarchive.open_data``).

Theory of operation
-------------------
xz, bzip2 and zstd are decoded by ``Streams``: one or more concatenated streams (zstd
frames, skippable frames skipped), with bounded output per call, and nothing else: data
that ends inside a stream, or bytes after the last one that are not the padding the
format allows (xz: NUL bytes in fours), are a ``FormatError`` (``lzma.LZMAFile`` and
``bz2.BZ2File`` silently drop trailing bytes, and zstandard's ``stream_reader`` ends
quietly inside a cut frame). gzip is read with ``gzip.GzipFile``, which already refuses
trailing bytes other than NUL padding.

Every decoder is read through ``Decoded``, which turns what a decoder says about its
input (``lzma.LZMAError``, ``zlib.error``, ``zstandard.ZstdError``, ``EOFError`` and the
``OSError``s without an errno that gzip and bz2 raise for bad data) into a ``FormatError``
naming the package. An ``OSError`` with an errno is the system's (reading the ``.deb``
failed) and passes through as it is: it says nothing about the package.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import zstandard

from .errors import FormatError

if TYPE_CHECKING:
    from .debarchive import Window

#: xz decoder memory limit: dpkg-deb's xz needs ~10 MiB, xz -9e ~65 MiB; a stream header
#: asking for a dictionary of up to 4 GiB is refused instead of being allocated
_XZ_MEMLIMIT = 256 << 20
#: compressed bytes read per call
_IN_CHUNK = 1 << 16
#: compressed bytes handed to zstd per call: python-zstandard's decompressobj returns all
#: that its input expands to, and 512 bytes of zstd expand to at most 16 MiB
_ZSTD_PIECE = 512


class _Decoder(Protocol):
    """The incremental interface of ``lzma.LZMADecompressor`` and ``bz2.BZ2Decompressor``
    (read-only attributes to a reader)."""

    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


class _ZstdFrame:
    """One zstd frame behind the ``_Decoder`` interface. python-zstandard's
    ``decompressobj`` returns everything its input expands to, so input is fed to it
    ``_ZSTD_PIECE`` bytes at a time until ``max_length`` is reached: one call returns at
    most ~16 MiB more than ``max_length``."""

    def __init__(self) -> None:

        self._obj = zstandard.ZstdDecompressor().decompressobj()
        self._in = b""
        self._pos = 0
        self.eof = False
        self.unused_data = b""

    @property
    def needs_input(self) -> bool:
        return not self.eof and self._pos >= len(self._in)

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        if data:
            self._in, self._pos = self._in[self._pos :] + data, 0
        out: list[bytes] = []
        got = 0
        while not self.eof and self._pos < len(self._in) and (max_length < 0 or got < max_length):
            piece = self._in[self._pos : self._pos + _ZSTD_PIECE]
            self._pos += len(piece)
            chunk = self._obj.decompress(piece)
            out.append(chunk)
            got += len(chunk)
            if self._obj.eof:
                self.eof = True
                self.unused_data = self._obj.unused_data + self._in[self._pos :]
        return b"".join(out)


@dataclass(frozen=True, slots=True)
class Codec:
    """A stream format ``Streams`` can read: what starts a stream, and a new decoder."""

    name: str
    magic: bytes
    new: Callable[[], _Decoder]


XZ = Codec("xz", b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=_XZ_MEMLIMIT))
BZIP2 = Codec("bzip2", b"BZh", bz2.BZ2Decompressor)
ZSTD = Codec("zstd", b"\x28\xb5\x2f\xfd", _ZstdFrame)
#: zstd skippable frames (pzstd writes one before each frame): 4-byte magic 0x184D2A5?
#: little-endian, 4-byte little-endian length, that many bytes
_ZSTD_SKIPPABLE = b"\x2a\x4d\x18"


class Streams:
    """The decompressed bytes of ``raw``: one or more concatenated ``codec`` streams, read
    with bounded output per call (about ``n`` bytes per ``read(n)``).

    Raises ``FormatError`` (starting with ``what``, e.g. ``"x.deb: data.tar.xz"``) when the
    data ends inside a stream, or when what follows a stream is neither another stream nor
    the padding the format allows (xz: NUL bytes, a multiple of four; zstd: skippable
    frames). Decoder errors (``lzma.LZMAError``, ``OSError``, ``zstandard.ZstdError``) pass
    through."""

    def __init__(self, raw: Window, codec: Codec, what: str) -> None:
        self._raw, self._codec, self._what = raw, codec, what
        self._dec: _Decoder = codec.new()
        self._pending = b""  # compressed bytes read from raw but not yet given to a decoder
        self._extra = b""  # decompressed bytes beyond what a read asked for (zstd)
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        if self._extra:
            out, self._extra = self._extra[:n], self._extra[n:]
            return out
        while n and not self._done:
            if self._dec.eof:
                self._next_stream()
                continue
            if self._dec.needs_input:
                data = self._pending or self._raw.read(_IN_CHUNK)
                self._pending = b""
                if not data:
                    raise FormatError(
                        f"{self._what}: truncated: the data ends inside a {self._codec.name} stream"
                    )
                out = self._dec.decompress(data, n)
            else:
                out = self._dec.decompress(b"", n)
            if out:
                out, self._extra = out[:n], out[n:]
                return out
        return b""

    def readable(self) -> bool:
        return True

    def _peek(self, k: int) -> bytes:
        """Up to ``k`` bytes of what follows (fewer only at the end of ``raw``)."""
        while len(self._pending) < k:
            more = self._raw.read(max(k - len(self._pending), _IN_CHUNK))
            if not more:
                break
            self._pending += more
        return self._pending[:k]

    def _skip(self, k: int) -> None:
        """Drop ``k`` bytes of what follows; they must be there."""
        while k:
            if not self._peek(1):
                raise FormatError(f"{self._what}: truncated: the data ends inside a skippable frame")
            drop = min(k, len(self._pending))
            self._pending, k = self._pending[drop:], k - drop

    def _next_stream(self) -> None:
        """After a stream ended: start the next one, or finish at the end of ``raw``."""
        self._pending = self._dec.unused_data + self._pending
        codec = self._codec
        if codec is XZ:
            zeros = 0
            while (head := self._peek(_IN_CHUNK)) and not head[0]:
                n = len(head) - len(head.lstrip(b"\0"))
                self._skip(n)
                zeros += n
            if zeros % 4:
                raise FormatError(
                    f"{self._what}: {zeros} NUL bytes after an xz stream (stream padding must be a multiple of 4)"
                )
        while codec is ZSTD and (head := self._peek(8))[1:4] == _ZSTD_SKIPPABLE and head[0] & 0xF0 == 0x50:
            self._skip(8 + int.from_bytes(head[4:8], "little"))
        head = self._peek(16)
        if not head:
            self._done = True
        elif head.startswith(codec.magic):
            self._dec = codec.new()
        else:
            raise FormatError(
                f"{self._what}: unexpected data after the last {codec.name} stream "
                f"(expected another stream or the end of the member, found {head!r})"
            )


class Decoded:
    """The bytes of ``reader`` (a decoder), with the decoder's complaints about its input
    raised as ``FormatError`` ``"<prefix>: <complaint>"`` (see the module docstring); a
    ``FormatError`` and an ``OSError`` with an errno pass through unchanged."""

    def __init__(self, reader: Streams | gzip.GzipFile, prefix: str) -> None:
        self._reader, self._prefix = reader, prefix

    def read(self, n: int = -1) -> bytes:
        try:
            return self._reader.read(n)
        except FormatError:
            raise
        except OSError as e:
            if e.errno is not None:  # the system's: reading the .deb failed
                raise
            raise FormatError(f"{self._prefix}: {e}") from None
        except (EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError) as e:
            raise FormatError(f"{self._prefix}: {e}") from None

    def readable(self) -> bool:
        return True


def open_data(name: str, raw: Window, deb: Path) -> Window | Decoded:
    """A reader of the decompressed tar held in ``raw``: the ``.deb``'s member ``name``,
    ``data.tar`` or ``control.tar`` with one of the suffixes below."""
    what = f"{deb.name}: {name}"
    kind, dot, suffix = name.partition(".tar")
    if kind in ("data", "control") and dot:
        corrupt = f"{deb.name}: corrupt {kind} archive"
        if suffix == "":
            return raw
        if suffix == ".xz":
            return Decoded(Streams(raw, XZ, what), corrupt)
        if suffix == ".gz":  # (GzipFile refuses trailing bytes itself, NUL padding aside)
            # (typeshed asks the file for seek too: GzipFile seeks only to rewind, never done here)
            return Decoded(gzip.GzipFile(fileobj=raw), corrupt)  # type: ignore[call-overload]
        if suffix == ".bz2":
            return Decoded(Streams(raw, BZIP2, what), corrupt)
        if suffix == ".zst":  # several frames: zstd -T, pzstd
            return Decoded(Streams(raw, ZSTD, what), corrupt)
    kind = "control" if kind == "control" else "data"
    raise FormatError(
        f"{deb.name}: unsupported {kind} member {name!r} (expected {kind}.tar[.xz|.gz|.bz2|.zst])"
    )
