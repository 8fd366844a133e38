r"""The NAR hash of what an archive unpacks to, computed without unpacking it: ``kiln
prefetch --unpack``'s hash, equal to ``nix-prefetch-url --unpack``'s.

Theory of operation
-------------------
``unpacked_nar_hash`` reads the archive member by member into an in-memory
``archivetree.Tree`` (metadata only; file contents go to one unnamed spool file in the
caller's private scratch directory) and hashes the NAR of its top, which is the only
top-level entry when there is exactly one (of any type, as Nix does), else the whole
tree. No member is ever written under its own name, created as a symlink or resolved
through one: whatever an archive holds (``..``, absolute names, symlink chains, links to
links), nothing outside the spool file is written, and the spool holds at most
``Limits.bytes``. ``archivetree`` states the path rules and ``archivetar`` the tar parser.

Formats: a zip (by its signature, or its end record for a zip with a prefix), else a tar,
plain or compressed with gzip, bzip2, xz or zstd (by magic number). Nix, through
libarchive, reads more (7z, cpio, lzip, ...): those are refused with an error here.

Zip members are read in the order of their data in the file (libarchive's order, which
decides between duplicate names). Their type and mode come from the central directory
as libarchive maps them: a name ending in ``/`` is a directory; from a Unix host
(``create_system`` 3) the mode is ``external_attr >> 16``, so a file is executable iff
its owner-execute bit is set and ``S_IFLNK`` makes a symlink whose target is the data
(``S_IFIFO`` is a file: Info-ZIP records a file it read from a pipe so); from MS-DOS (0)
attribute ``0x10`` is a directory and nothing is executable; from any other host nothing
is executable either. Names are the raw bytes (UTF-8 when flagged, else as stored), with
a Windows archiver's ``\`` separators made ``/`` where libarchive does so: the member's
local header says MS-DOS and the name holds no ``/``. Sizes come from the central directory and are checked against the limit
before any data is read; the read itself stops at the declared size and checks the CRC.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import stat
import tempfile
import zipfile
import zlib
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import zstandard

from .archivetar import read_tar
from .archivetree import ArchiveError, Limits, Reader, Tree, shown
from .hashes import Hash

#: errors the decompressors and ``zipfile`` raise for malformed input
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    lzma.LZMAError,
    zstandard.ZstdError,
    zipfile.BadZipFile,
    NotImplementedError,  # (zipfile: a compression method it does not implement)
)
#: the most central-directory bytes per allowed entry: zipfile parses all of it into memory
_ZIP_DIR_BYTES_PER_ENTRY = 128


def unpacked_nar_hash(archive: Path, scratch: Path, limits: Limits | None = None) -> Hash:
    """The sha256 NAR hash of ``archive`` unpacked (a single top-level entry stripped).
    ``scratch`` is a private directory the caller owns, where an unnamed spool file holds
    the contents meanwhile. Raises ``ArchiveError`` for an archive that is malformed,
    of an unsupported kind, breaks ``limits`` (default ``Limits.from_env()``) or holds a
    member the rules refuse."""
    limits = limits if limits is not None else Limits.from_env()
    with tempfile.TemporaryFile(dir=scratch, prefix="unpack-spool-") as spool:
        tree = Tree(spool, limits)
        try:
            with open(archive, "rb") as f:
                head = f.read(8)
                f.seek(0)
                if head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or (
                    _compression(head) is None and not _tar_header(f) and zipfile.is_zipfile(f)
                ):
                    f.seek(0)
                    _read_zip(f, tree)
                else:
                    f.seek(0)
                    with _decompressed(f, head) as stream:
                        read_tar(stream, tree)
        except _READ_ERRORS as e:
            raise ArchiveError(f"cannot read archive {archive.name}: {_why(e)}") from None
        return tree.nar_hash(tree.top())


def _why(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _compression(head: bytes) -> str | None:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


def _tar_header(f: BinaryIO) -> bool:
    """Whether ``f`` starts with a tar header (a zip appended to a tar is still a tar)."""
    block = f.read(512)
    f.seek(0)
    if len(block) != 512:
        return False
    try:
        want = int(block[148:156].split(b"\0", 1)[0].strip(b" ") or b"-1", 8)
    except ValueError:
        return False
    return want == sum(block[:148]) + 8 * 32 + sum(block[156:])


def _decompressed(f: BinaryIO, head: bytes) -> AbstractContextManager[Reader]:
    kind = _compression(head)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(f)
    if kind == "xz":
        return lzma.LZMAFile(f)
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True, closefd=False)
    return f


def _read_zip(f: BinaryIO, tree: Tree) -> None:
    limits = tree.limits
    # the end record, read before zipfile parses the directory (zipfile's private reader and
    # field indexes: not in typeshed)
    end = zipfile._EndRecData(f)  # type: ignore[attr-defined]  # noqa: SLF001
    if end is None:
        raise ArchiveError("damaged zip archive: no end of central directory record")
    size_at, entries_at = zipfile._ECD_SIZE, zipfile._ECD_ENTRIES_TOTAL  # type: ignore[attr-defined]  # noqa: SLF001
    dir_size, entries, most = end[size_at], end[entries_at], limits.entries * _ZIP_DIR_BYTES_PER_ENTRY
    if dir_size > most or entries > limits.entries:
        raise ArchiveError(
            f"refusing archive: its central directory lists {entries} entries in "
            f"{dir_size} bytes, more than {limits.entries} entries or {most} bytes "
            "(KILN_UNPACK_MAX_ENTRIES raises the limit)"
        )
    f.seek(0)
    with zipfile.ZipFile(f) as z:
        infos = sorted(z.infolist(), key=lambda i: i.header_offset)
        if sum(i.file_size for i in infos) > limits.bytes:
            raise limits.too_many_bytes()
        for info in infos:
            _zip_member(z, f, info, tree)


def _zip_member(z: zipfile.ZipFile, f: BinaryIO, info: zipfile.ZipInfo, tree: Tree) -> None:
    name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    if b"/" not in name and b"\\" in name and _local_system(f, info) == 0:
        name = name.replace(b"\\", b"/")
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    kind = stat.S_IFMT(mode)
    if name.endswith(b"/") or kind == stat.S_IFDIR or (info.create_system == 0 and info.external_attr & 0x10):
        tree.add_dir(name)
        return
    if info.flag_bits & 0x1:
        raise ArchiveError(f"refusing zip member {shown(name)}: it is encrypted")
    if kind == stat.S_IFLNK:
        if info.file_size >= 4096:
            raise ArchiveError(f"refusing zip symlink {shown(name)}: a target of {info.file_size} bytes")
        tree.add_symlink(name, z.read(info))
    elif kind in (0, stat.S_IFREG, stat.S_IFIFO):
        with z.open(info) as data:
            tree.add_file(name, data, info.file_size, bool(mode & 0o100))
    else:
        raise ArchiveError(
            f"refusing zip member {shown(name)}: file type {kind:o} (a NAR holds only files, "
            "symlinks and directories)"
        )


def _local_system(f: BinaryIO, info: zipfile.ZipInfo) -> int | None:
    """The host byte of the member's local header ("version needed to extract", high
    byte), which libarchive judges a Windows archiver by; None if the header is not there
    (zipfile then refuses the member anyway)."""
    f.seek(info.header_offset)
    head = f.read(6)
    return head[5] if len(head) == 6 and head.startswith(b"PK\x03\x04") else None
