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
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import zstandard

from .errors import FormatError, HashMismatch, StoreError
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

    def __init__(self, f, what: str, expect: tuple[Hash, int] | None) -> None:
        self.f, self.sha, self.size, self.what, self.expect = f, hashlib.sha256(), 0, what, expect
        self.frames = FrameTracker()
        self.bad: FormatError | None = None

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        if self.expect is not None and self.size > self.expect[1]:
            raise _too_long(self.what, "compressed file", self.expect)
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

    def check(self, expect_file: tuple[Hash, int] | None) -> None:
        """After the last byte: the recorded digest first (the most telling mismatch),
        then whether the bytes were whole zstd frames: a stream cut at the end of a block
        decompresses without error, and a FileHash taken over the cut file proves nothing."""
        if expect_file is not None:
            check_digest(
                self.what, "compressed file", expect_file, Hash("sha256", self.sha.digest()), self.size
            )
        if self.bad is None:
            try:
                self.frames.check_complete()
            except FormatError as e:
                self.bad = e
        if self.bad is not None:
            raise HashMismatch(f"compressed NAR of {self.what}", "a complete zstd stream", str(self.bad))


def _too_long(what: str, kind: str, expect: tuple[Hash, int]) -> HashMismatch:
    h, n = expect
    return HashMismatch(f"{kind} of {what}", f"{h.to_nix32()} ({n} bytes)", f"more than {n} bytes")


def decompress_verified(
    zst, what: str, expect_file: tuple[Hash, int] | None = None, expect_nar: tuple[Hash, int] | None = None
) -> Iterator[bytes]:
    """Yield the NAR inside the zstd stream ``zst`` (a binary file object; several
    concatenated frames are one stream, as for the ``zstd`` tool). After the last chunk,
    check the compressed and/or NAR digests and sizes; raise ``HashMismatch`` (naming
    ``what``) if any differs. Reading stops as soon as either side exceeds its expected
    size: a small signed NarSize bounds what a hostile object can inflate to."""
    reader = _HashingReader(zst, what, expect_file)
    nar_sha = hashlib.sha256()
    nar_size = 0
    limit = expect_nar[1] if expect_nar is not None else None
    try:
        with zstandard.ZstdDecompressor().stream_reader(
            reader, read_size=CHUNK, read_across_frames=True, closefd=False
        ) as stream:
            while chunk := stream.read(CHUNK):
                nar_size += len(chunk)
                if limit is not None and nar_size > limit:
                    raise _too_long(what, "NAR", expect_nar)  # type: ignore[arg-type]
                nar_sha.update(chunk)
                yield chunk
    except zstandard.ZstdError as e:
        # a corrupt object is best described by its digest against the record, if any
        reader.drain()
        if expect_file is not None:
            check_digest(
                what, "compressed file", expect_file, Hash("sha256", reader.sha.digest()), reader.size
            )
        raise HashMismatch(
            f"compressed NAR of {what}", "a valid zstd stream", f"corrupt data ({e})"
        ) from None
    reader.drain()
    reader.check(expect_file)
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
        raise HashMismatch(f"compressed NAR of {what}", "a complete zstd stream", str(e)) from None


def check_digest(what: str, kind: str, expect: tuple[Hash, int], got: Hash, size: int) -> None:
    """Raise ``HashMismatch`` unless ``got``/``size`` equal ``expect`` (``kind`` of ``what``)."""
    h, n = expect
    if got.digest != h.digest or size != n:
        raise HashMismatch(
            f"{kind} of {what}", f"{h.to_nix32()} ({n} bytes)", f"{got.to_nix32()} ({size} bytes)"
        )


def read_object(
    obj: Path, what: str, file: tuple[Hash, int] | None, nar: tuple[Hash, int] | None
) -> Iterator[bytes]:
    """The NAR in object file ``obj``, verified against the recorded digests."""
    try:
        f = open(obj, "rb", buffering=0)  # noqa: SIM115 - closed by the generator below
    except FileNotFoundError:
        raise StoreError(f"object of {what} is missing: {obj}") from None
    with f:
        yield from decompress_verified(f, what, file, nar)


def expect_nar(info, got: Hash, size: int) -> None:
    """Raise ``HashMismatch`` unless ``got``/``size`` are ``info``'s NAR hash and size."""
    if got.digest != info.nar_hash.digest or size != info.nar_size:
        raise HashMismatch(
            f"NAR of {info.path}",
            f"{info.nar_hash.to_nix32()} ({info.nar_size} bytes)",
            f"{got.to_nix32()} ({size} bytes)",
        )


class TeeReader:
    """A reader that copies and hashes what it reads (for ``import_object``)."""

    def __init__(self, f, fd: int) -> None:
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


def sized_file(info: PathInfo) -> tuple[Hash, int] | None:
    """The compressed file's ``(FileHash, FileSize)`` to check while it streams: only when
    both are known. A FileHash without a FileSize (both are optional in a narinfo) is
    checked afterwards by ``check_unsized_file``, with no size bound from it (the NarSize
    still bounds decompression): a missing size is not a size of 0."""
    if info.file_hash is None or info.file_size is None:
        return None
    return (info.file_hash, info.file_size)


def check_unsized_file(info: PathInfo, tee: TeeReader) -> None:
    """After a stream verified with ``sized_file(info)``: if ``info`` has a FileHash but no
    FileSize, read what is left of the object (trailing bytes count) and check its hash."""
    if info.file_hash is None or info.file_size is not None:
        return
    while tee.read(CHUNK):
        pass
    unsized_mismatch(info.path, info.file_hash, Hash("sha256", tee.sha.digest()), tee.size)


def unsized_mismatch(what: str, want: Hash, got: Hash, size: int) -> None:
    if got.digest != want.digest:
        raise HashMismatch(
            f"compressed file of {what}",
            f"{want.to_nix32()} (size not given)",
            f"{got.to_nix32()} ({size} bytes)",
        )
