"""A tar stream, member by member, into an ``archivetree.Tree`` (for ``archivehash``).

kiln reads tar headers itself rather than with ``tarfile``: nothing here extracts, and
the parser holds what a hostile archive can make it do to a few fixed bounds, which
``tarfile`` does not (it reads a pax or GNU long-name header of any size into memory,
keeps every member's ``TarInfo`` and, in some Python versions, loops on crafted
offsets).

Theory of operation
-------------------
The stream is read once, front to back, in 512-byte blocks. Every byte read counts
against ``Limits.bytes`` (headers and skipped bodies too, so a decompression bomb stops
there whatever it hides in). A header's checksum must hold (signed or unsigned sum, as
old writers differ); numbers are octal or GNU base-256 (negative refused). Names are the
ustar ``prefix/name`` (POSIX magic only), overridden by a GNU ``L``/``K`` long name, overridden
by a pax ``path``/``linkpath`` (an empty pax value falls back, as in libarchive). A pax
or long-name body is at most ``MAX_EXTENDED`` bytes and parsed without regular
expressions. The archive ends at a zero block, or at end of input on a block boundary.

Member types, as libarchive (which ``nix-prefetch-url --unpack`` uses) reads them:
``0``, NUL and ``7`` are files (a name ending in ``/`` makes one a directory), ``1``
hard links, ``2`` symlinks, ``5`` and GNU ``D`` directories; the bodies of ``g`` (pax
global headers, ignored as libarchive does) and ``V`` (volume labels) are skipped.
Devices, FIFOs, sparse files (``S``, pax ``GNU.sparse.*``), multi-volume parts and
unknown types are refused, naming the member: a NAR cannot hold the first, and kiln does
not reassemble the others. A hard link carrying data (allowed by pax, ambiguous in
older formats) is refused too.
"""

from __future__ import annotations

from .archivetree import ArchiveError, Limits, Reader, Tree, shown

BLOCK = 512
#: the largest pax extended header or GNU long name/link body accepted
MAX_EXTENDED = 1 << 20
_FILE_TYPES = (b"0", b"\0", b"7")
_NO_BODY = (b"1", b"2", b"5")  # their size field is not a body length (libarchive, tarfile)


class _Input:
    """The uncompressed stream, every byte counted against the limit."""

    def __init__(self, stream: Reader, limits: Limits) -> None:
        self.stream = stream
        self.limits = limits
        self.total = 0

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""
        parts: list[bytes] = []
        left = n
        while left:
            chunk = self.stream.read(min(left, 1 << 20))
            if not chunk:
                break
            self.total += len(chunk)
            if self.total > self.limits.bytes:
                raise self.limits.too_many_bytes()
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def exactly(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise ArchiveError(f"truncated tar archive: {what} ends after {len(data)} of {n} bytes")
        return data

    def skip(self, n: int, what: str) -> None:
        while n:
            step = min(n, 1 << 20)
            self.exactly(step, what)
            n -= step


class _Body:
    """A member's body as a file object for ``Tree.add_file``."""

    def __init__(self, src: _Input, size: int) -> None:
        self.src = src
        self.left = size

    def read(self, n: int) -> bytes:
        data = self.src.read(min(n, self.left))
        self.left -= len(data)
        return data


def read_tar(stream: Reader, tree: Tree) -> None:
    """Add every member of the tar ``stream`` to ``tree``; raises ``ArchiveError`` for
    a malformed archive, a refused member or a broken limit."""
    src = _Input(stream, tree.limits)
    pax: dict[bytes, bytes] = {}
    long_name: bytes | None = None
    long_link: bytes | None = None
    first = True
    while True:
        block = src.read(BLOCK)
        if first and len(block) != BLOCK:
            raise ArchiveError(f"not a tar or zip archive ({len(block)} bytes, less than one tar header)")
        if not block or block == bytes(BLOCK):
            if pax or long_name is not None or long_link is not None:
                raise ArchiveError("truncated tar archive: an extended header is not followed by a member")
            return
        if len(block) != BLOCK:
            raise ArchiveError(f"truncated tar archive: a header of {len(block)} bytes, expected {BLOCK}")
        _check_sum(block, first)
        first = False
        kind = block[156:157]
        size = _number(block[124:136], "size")
        if kind in (b"x", b"X", b"g", b"L", b"K"):
            if size > MAX_EXTENDED:
                raise ArchiveError(
                    f"refusing tar archive: an extended header of {size} bytes (at most {MAX_EXTENDED})"
                )
            body = src.exactly(size, "an extended header")
            src.skip(-size % BLOCK, "padding")
            if kind in (b"x", b"X"):
                pax.update(_pax_records(body))
            elif kind == b"L":
                long_name = body.split(b"\0", 1)[0]
            elif kind == b"K":
                long_link = body.split(b"\0", 1)[0]
            continue  # "g": global attributes, which libarchive ignores too
        name, link = _names(block)
        name = long_name if long_name is not None else name
        link = long_link if long_link is not None else link
        name = pax.get(b"path") or name
        link = pax.get(b"linkpath") or link
        if b"size" in pax:
            size = _decimal(pax[b"size"], "pax size")
        sparse = any(k.startswith(b"GNU.sparse.") for k in pax)
        pax, long_name, long_link = {}, None, None
        if sparse or kind == b"S":
            raise ArchiveError(f"refusing tar member {shown(name)}: sparse files are not supported")
        _member(src, tree, kind, name, link, size, _number(block[100:108], "mode"))


def _member(src: _Input, tree: Tree, kind: bytes, name: bytes, link: bytes, size: int, mode: int) -> None:
    if kind in _FILE_TYPES and name.endswith(b"/"):
        kind = b"5"  # an old-style directory: a file entry whose name ends in "/"
    if kind in _FILE_TYPES:
        tree.add_file(name, _Body(src, size), size, bool(mode & 0o100))
        src.skip(-size % BLOCK, "padding")
        return
    if kind == b"1":
        if size:
            raise ArchiveError(f"refusing tar member {shown(name)}: a hard link with {size} bytes of data")
        tree.add_hardlink(name, link)
    elif kind == b"2":
        tree.add_symlink(name, link)
    elif kind == b"5" or kind == b"D":
        tree.add_dir(name)
    elif kind != b"V":  # "V": a GNU volume label, not a member
        what = {b"3": "a character device", b"4": "a block device", b"6": "a FIFO"}.get(kind)
        if what:
            raise ArchiveError(
                f"refusing tar member {shown(name)}: it is {what} (a NAR holds only files, "
                "symlinks and directories)"
            )
        raise ArchiveError(f"refusing tar member {shown(name)}: unsupported member type {kind!r}")
    if kind not in _NO_BODY:
        src.skip(size + (-size % BLOCK), "a member's body")


def _check_sum(block: bytes, first: bool) -> None:
    want = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b >= 128)
    if want not in (unsigned, signed):
        if first:
            raise ArchiveError("not a tar or zip archive (the first block is no tar header)")
        raise ArchiveError(
            f"damaged tar archive: a header's checksum is {want}, expected {unsigned} (its bytes' sum)"
        )


def _names(block: bytes) -> tuple[bytes, bytes]:
    name = _cstr(block[0:100])
    if block[257:263] == b"ustar\0":  # POSIX ustar: a prefix; GNU keeps other fields there
        prefix = _cstr(block[345:500])
        if prefix:
            name = prefix + b"/" + name
    return name, _cstr(block[157:257])


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _number(field: bytes, what: str) -> int:
    if field[0] & 0x80:  # GNU base-256: big-endian, the top bit of the first byte a marker
        if field[0] & 0x40:
            raise ArchiveError(f"damaged tar archive: a negative {what} field")
        return int.from_bytes(bytes([field[0] & 0x3F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not all(48 <= c <= 55 for c in text):
        raise ArchiveError(f"damaged tar archive: the {what} field is {text!r}, expected octal digits")
    return int(text, 8)


def _decimal(text: bytes, what: str) -> int:
    if not text.isdigit() or len(text) > 20:
        raise ArchiveError(f"damaged tar archive: the {what} is {text!r}, expected decimal digits")
    return int(text)


def _pax_records(body: bytes) -> dict[bytes, bytes]:
    """The ``"<length> <key>=<value>\\n"`` records of a pax header."""
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:  # NUL padding may follow the last record
        space = body.find(b" ", pos, pos + 21)
        if space <= pos:
            raise ArchiveError(f"damaged tar archive: a pax record without its length at offset {pos}")
        length = _decimal(body[pos:space], "pax record length")
        end = pos + length
        if length <= space - pos + 1 or end > len(body) or body[end - 1] != 0x0A:
            raise ArchiveError(f"damaged tar archive: a malformed pax record at offset {pos}")
        key, eq, value = body[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise ArchiveError(f"damaged tar archive: a pax record without '=' at offset {pos}")
        if value:
            out[key] = value
        else:
            out.pop(key, None)  # an empty value unsets the attribute
        pos = end
    return out
