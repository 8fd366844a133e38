"""Reading compressed NAR objects back, verified.

Theory of operation
-------------------
``read_object`` streams the NAR of a stored object while re-hashing both the compressed
bytes and the NAR; the iterator raises ``HashMismatch`` at the end if either differs
from what the database recorded (a consumer must treat the stream as failed then).
``decompress_verified`` does the same for an object from outside (a registry): nothing
in it is trusted for its size, so reading stops as soon as the NAR passes the expected
NarSize or the file passes FileSize (a zstd bomb behind a small NarSize writes no more
than NarSize), and multi-frame zstd is read as one stream. The stream must end at a
frame boundary (``zstdframes``): the decompressor alone accepts a stream cut after a
block. ``TeeReader`` keeps a copy of what is read (the object being imported).

Every ``HashMismatch`` names ``what``; ``read_object`` makes that the store path *and*
the object file (``object_named``), so an operator told of a corrupt object can find
it; an import names the object by its digest (``importbatch``).
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import zstandard

from .errors import FormatError, HashMismatch, StoreError
from .fileopen import open_regular
from .hashes import Hash
from .objects import CHUNK
from .zstdframes import FrameTracker

if TYPE_CHECKING:
    from .pathinfo import PathInfo


class _HashingReader:
    """Reads ``f``, hashing what it reads and following its zstd frames (``frames``; the
    first framing error is kept in ``bad``, for after the decompressor); raises
    ``HashMismatch`` once more than ``expect[1]`` bytes came (a compressed file longer
    than its recorded size)."""

    __slots__ = ("f", "sha", "size", "what", "expect", "frames", "bad")

    def __init__(self, f: BinaryIO | TeeReader, what: str, expect: tuple[Hash, int | None] | None) -> None:
        self.f, self.sha, self.size, self.what, self.expect = f, hashlib.sha256(), 0, what, expect
        self.frames = FrameTracker()
        self.bad: FormatError | None = None

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        if self.expect is not None and self.expect[1] is not None and self.size > self.expect[1]:
            raise _too_long(self.what, "compressed file", (self.expect[0], self.expect[1]))
        if self.bad is None:
            try:
                self.frames.update(data)
            except FormatError as e:
                self.bad = e
        return data

    def drain(self) -> None:
        """Read what the decompressor did not need (trailing bytes count too)."""
        while self.read(CHUNK):
            pass

    def check_file(self) -> None:
        """After the last byte: the recorded digest (and size, if known), if any."""
        if self.expect is not None:
            check_digest(
                self.what, "compressed file", self.expect, Hash("sha256", self.sha.digest()), self.size
            )

    def check_frames(self) -> None:
        """After the last byte: whether the bytes were whole zstd frames (a stream cut at
        the end of a block decompresses without error, and a FileHash taken over the cut
        file proves nothing)."""
        if self.bad is None:
            try:
                self.frames.check_complete()
            except FormatError as e:
                self.bad = e
        if self.bad is not None:
            raise _incomplete(self.what, self.bad)


def _incomplete(what: str, e: FormatError) -> HashMismatch:
    return HashMismatch(f"compressed NAR of {what}", "a complete zstd stream", str(e))


def _too_long(what: str, kind: str, expect: tuple[Hash, int]) -> HashMismatch:
    h, n = expect
    return HashMismatch(f"{kind} of {what}", f"{h.to_nix32()} ({n} bytes)", f"more than {n} bytes")


def decompress_verified(
    zst: BinaryIO | TeeReader,
    what: str,
    expect_file: tuple[Hash, int | None] | None = None,
    expect_nar: tuple[Hash, int] | None = None,
) -> Iterator[bytes]:
    """Yield the NAR inside the zstd stream ``zst`` (a binary file object; several
    concatenated frames are one stream, as for the ``zstd`` tool). After the last chunk,
    check the compressed and/or NAR digests and sizes; raise ``HashMismatch`` (naming
    ``what``) if any differs. Reading stops as soon as either side exceeds its expected
    size: a small signed NarSize bounds what a hostile object can inflate to. The file's
    size may be ``None`` (a narinfo's FileSize is optional): its hash is then checked
    over every byte, with no bound from it."""
    reader = _HashingReader(zst, what, expect_file)
    nar_sha = hashlib.sha256()
    nar_size = 0
    try:
        # (zstandard reads any object with ``read``; its stubs ask for an IO[bytes])
        with zstandard.ZstdDecompressor().stream_reader(
            reader,  # type: ignore[arg-type]
            read_size=CHUNK,
            read_across_frames=True,
            closefd=False,
        ) as stream:
            while chunk := stream.read(CHUNK):
                nar_size += len(chunk)
                if expect_nar is not None and nar_size > expect_nar[1]:
                    raise _too_long(what, "NAR", expect_nar)
                nar_sha.update(chunk)
                yield chunk
    except zstandard.ZstdError as e:
        # a corrupt object is best described by its digest against the record, if any
        reader.drain()
        reader.check_file()
        raise HashMismatch(
            f"compressed NAR of {what}", "a valid zstd stream", f"corrupt data ({e})"
        ) from None
    reader.drain()  # (trailing bytes count too)
    reader.check_file()
    reader.check_frames()
    if expect_nar is not None:
        check_digest(what, "NAR", expect_nar, Hash("sha256", nar_sha.digest()), nar_size)


def check_frames(data: bytes, what: str) -> None:
    """Raise ``HashMismatch`` unless ``data`` (a compressed object held in memory) is whole
    zstd frames (see ``zstdframes``)."""
    try:
        t = FrameTracker()
        t.update(data)
        t.check_complete()
    except FormatError as e:
        raise _incomplete(what, e) from None


def check_digest(what: str, kind: str, expect: tuple[Hash, int | None], got: Hash, size: int) -> None:
    """Raise ``HashMismatch`` unless ``got``/``size`` equal ``expect`` (``kind`` of ``what``;
    an expected size of ``None`` is not known, so only the digest is compared)."""
    h, n = expect
    if got.digest != h.digest or (n is not None and size != n):
        shown = "size not given" if n is None else f"{n} bytes"
        raise HashMismatch(
            f"{kind} of {what}", f"{h.to_nix32()} ({shown})", f"{got.to_nix32()} ({size} bytes)"
        )


def object_named(what: str, obj: Path | str) -> str:
    """``what`` (a store path) and its object file ``obj``, as errors name them."""
    return what if what == str(obj) else f"{what} (object {obj})"


def read_object(
    obj: Path, what: str, file: tuple[Hash, int] | None, nar: tuple[Hash, int] | None
) -> Iterator[bytes]:
    """The NAR in object file ``obj``, verified against the recorded digests; an error
    names ``what`` and ``obj`` (``object_named``)."""
    try:
        f = open_regular(obj, buffering=0)  # (a FIFO would block verify for ever)
    except FileNotFoundError:
        raise StoreError(f"object of {what} is missing: {obj}") from None
    if f is None:  # (as reading a directory there would be: unreadable, not corrupt)
        raise OSError(errno.EINVAL, "not a regular file", str(obj))
    with f:
        yield from decompress_verified(f, object_named(what, obj), file, nar)


def expect_nar(info: PathInfo, got: Hash, size: int) -> None:
    """Raise ``HashMismatch`` unless ``got``/``size`` are ``info``'s NAR hash and size."""
    if got.digest != info.nar_hash.digest or size != info.nar_size:
        raise HashMismatch(
            f"NAR of {info.path}",
            f"{info.nar_hash.to_nix32()} ({info.nar_size} bytes)",
            f"{got.to_nix32()} ({size} bytes)",
        )


class TeeReader:
    """A reader that copies and hashes what it reads (for ``import_object``)."""

    def __init__(self, f: BinaryIO, fd: int) -> None:
        self.f, self.fd, self.sha, self.size = f, fd, hashlib.sha256(), 0

    def read(self, n: int = CHUNK) -> bytes:
        data = self.f.read(n)
        if data:
            self.sha.update(data)
            self.size += len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        return data


def file_expectation(info: PathInfo) -> tuple[Hash, int | None] | None:
    """What ``decompress_verified``/``check_digest`` check the compressed file against:
    its FileHash and FileSize (None when not given: not a size of 0), or nothing."""
    return None if info.file_hash is None else (info.file_hash, info.file_size)
