"""NAR reading: one validating streaming parser behind ``entries``, ``restore``, ``cat``, ``ls``, ``listing``.

Theory of operation
-------------------
This module holds the parser and does no I/O of its own (it reads only the stream it is
given); ``restore``, which writes the tree, is in ``nar_restore.py`` and the read-only
queries built on the same parser (``cat``, ``ls``, ``listing``) are in ``nar.py``.

``_Input`` turns a binary file or an iterable of byte chunks into exact reads with a
running byte ``offset``. ``_parse`` is a state machine over NAR strings (grammar in
``nar.py`` and docs/formats.md) with two states, "at a node" and "inside the directory on
top of the stack". It keeps an explicit stack of open directories (no recursion, so hostile depth cannot overflow Python's stack) and yields a
``NarEntry`` per node in archive order. For a regular file the parser yields the entry
*before* reading its contents: the consumer may read them from the same ``_Input``
(``restore`` copies them to disk, ``cat`` collects them); whatever it leaves unread is
skipped. The parser then checks the padding and carries on.

Everything ``nix-store --restore`` rejects is rejected here too, with the byte offset
and what was expected: bad magic, unknown or misplaced tags, entries out of order or
duplicated, names that are empty, ``.``, ``..`` or contain ``/`` or NUL, empty
symlink targets or targets containing NUL, non-zero padding, absurd lengths,
truncated input and trailing data after the root node. ``restore`` also refuses, with
the entry and its offset rather than the error of the file it could not make, names
longer than 255 bytes and symlink targets longer than 4095 (no Linux file system takes
them; a NAR made elsewhere may hold them, and is listed and hashed all the same).

``restore`` (``nar_restore``) materialises into a fresh temporary sibling of ``dest`` and
renames it into place only after the whole archive validated, so bad input leaves nothing
at ``dest``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .errors import FormatError

MAGIC = b"nix-archive-1"
#: Longest tag, name or symlink target accepted (Linux PATH_MAX). A NAR from another
#: system may hold longer names than Linux takes (APFS: 765 bytes), so the parser takes
#: them; ``nar_restore`` refuses what it cannot make (``MAX_NAME``, ``MAX_TARGET``).
MAX_TOKEN = 4096
#: Longest entry name and symlink target a restore makes (Linux NAME_MAX; PATH_MAX
#: counting the NUL a target gets when it is made)
MAX_NAME = 255
MAX_TARGET = MAX_TOKEN - 1
#: Longest file accepted; anything bigger is a corrupt length field, not a file.
MAX_CONTENTS = 1 << 48
_unpack_u64 = struct.Struct("<Q").unpack


def nar_str(data: bytes) -> bytes:
    """One NAR string: length (u64 little endian), bytes, zero padding to 8."""
    return len(data).to_bytes(8, "little") + data + b"\0" * (-len(data) % 8)


# The fixed token sequences of the format, shared with the writers (``nar``, ``ingest``).
TOK_OPEN = nar_str(b"(")
TOK_CLOSE = nar_str(b")")
HDR_ROOT = nar_str(MAGIC)
HDR_REGULAR = TOK_OPEN + nar_str(b"type") + nar_str(b"regular")
HDR_EXEC = nar_str(b"executable") + nar_str(b"")
HDR_CONTENTS = nar_str(b"contents")
HDR_SYMLINK = TOK_OPEN + nar_str(b"type") + nar_str(b"symlink") + nar_str(b"target")
HDR_DIR = TOK_OPEN + nar_str(b"type") + nar_str(b"directory")
ENTRY = nar_str(b"entry") + TOK_OPEN + nar_str(b"name")
NODE = nar_str(b"node")
_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class NarEntry:
    """One node of a NAR.

    ``path`` is relative to the root, ``/``-separated, ``''`` for the root itself; names
    are decoded with ``os.fsdecode`` so arbitrary bytes round-trip. ``size`` is the
    contents length of a regular/executable file (0 otherwise) and ``contents_offset``
    the byte offset of those contents in the NAR stream (seek there and read ``size``
    bytes); ``target`` is set only for symlinks."""

    path: str
    type: str  # 'regular' | 'executable' | 'symlink' | 'directory'
    size: int = 0
    target: str | None = None
    contents_offset: int | None = None

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


class _Input:
    """Exact reads with offsets over a file object or an iterable of chunks."""

    __slots__ = ("_pull", "_buf", "_pos", "offset")

    def __init__(self, src: BinaryIO | Iterable[bytes]) -> None:
        read = getattr(src, "read", None)
        if read is not None:
            self._pull: Callable[[], bytes] = lambda: read(_READ)
        else:
            it = iter(src)

            def pull() -> bytes:
                for chunk in it:
                    if chunk:
                        return bytes(chunk)
                return b""

            self._pull = pull
        self._buf = b""
        self._pos = 0
        self.offset = 0

    def _more(self) -> bool:
        """Replace the (exhausted) buffer with the next chunk; False at end of input."""
        data = self._pull()
        if not data:
            return False
        self._buf, self._pos = data, 0
        return True

    def read(self, n: int, what: str) -> bytes:
        buf, pos = self._buf, self._pos
        if len(buf) - pos >= n:
            self._pos = pos + n
            self.offset += n
            return buf[pos : pos + n]
        # Straddles chunks: gather only the bytes needed, never re-copy a whole chunk.
        parts = [buf[pos:]]
        got = len(buf) - pos
        while got < n:
            if not self._more():
                raise FormatError(
                    f"NAR truncated at offset {self.offset + got}: "
                    f"expected {n} bytes of {what} starting at offset {self.offset}"
                )
            take = min(n - got, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            got += take
        self.offset += n
        return b"".join(parts)

    def chunks(self, n: int, what: str) -> Iterator[bytes | memoryview]:
        """Yield exactly ``n`` bytes in pieces without joining them."""
        while n:
            if self._pos >= len(self._buf) and not self._more():
                raise FormatError(f"NAR truncated at offset {self.offset}: {n} more bytes of {what} expected")
            take = min(n, len(self._buf) - self._pos)
            piece = memoryview(self._buf)[self._pos : self._pos + take]
            self._pos += take
            self.offset += take
            n -= take
            yield piece

    def at_eof(self) -> bool:
        return self._pos >= len(self._buf) and not self._more()


def _u64(inp: _Input, what: str) -> int:
    return _unpack_u64(inp.read(8, f"length of {what}"))[0]


def _padding(inp: _Input, n: int, what: str) -> None:
    pad = -n % 8
    if pad:
        start = inp.offset
        if inp.read(pad, f"padding of {what}").strip(b"\0"):
            raise FormatError(f"NAR: non-zero padding after {what} at offset {start}")


def _token(inp: _Input, what: str, limit: int = MAX_TOKEN) -> bytes:
    start = inp.offset
    n = _u64(inp, what)
    if n > limit:
        raise FormatError(f"NAR: {what} at offset {start} is {n} bytes long (at most {limit} accepted)")
    data = inp.read(n, what)
    _padding(inp, n, what)
    return data


def _expect(inp: _Input, want: bytes, where: str) -> None:
    start = inp.offset
    got = _token(inp, f"{want.decode()!r} {where}", 64)
    if got != want:
        raise FormatError(f"NAR: expected {want.decode()!r} {where} at offset {start}, found {got[:40]!r}")


def _bad_name(name: bytes) -> str | None:
    if not name:
        return "is empty"
    if name in (b".", b".."):
        return f"is {name.decode()!r}"
    if b"/" in name:
        return "contains '/'"
    if b"\0" in name:
        return "contains NUL"
    return None


def _join(parent: str, name: bytes) -> str:
    n = os.fsdecode(name)
    return f"{parent}/{n}" if parent else n


# Node types: tag after "type" -> entry type.
_TYPES = {b"regular": "regular", b"symlink": "symlink", b"directory": "directory"}


def _parse(inp: _Input) -> Iterator[NarEntry]:
    """Validate the NAR on ``inp``, yielding each node in order (see module docstring)."""
    start = inp.offset
    magic = _token(inp, "magic", 64)
    if magic != MAGIC:
        raise FormatError(
            f"not a NAR: expected magic {MAGIC.decode()!r} at offset {start}, found {magic[:40]!r}"
        )
    # Each open directory: [path, previous entry name]. ``path`` is the node to parse
    # next, or None when the next thing is the continuation of the top directory.
    stack: list[list] = []
    path: str | None = ""
    while True:
        if path is not None:
            # ---- a node: "(" "type" TYPE ...
            _expect(inp, b"(", f"opening node {path or '/'!r}")
            _expect(inp, b"type", f"in node {path or '/'!r}")
            at = inp.offset
            tag = _token(inp, "node type", 64)
            kind = _TYPES.get(tag)
            if kind is None:
                raise FormatError(
                    f"NAR: unknown node type {tag[:40]!r} at offset {at} "
                    f"(expected 'regular', 'symlink' or 'directory')"
                )
            if kind == "regular":
                at = inp.offset
                tag = _token(inp, "'executable' or 'contents'", 64)
                if tag == b"executable":
                    kind = "executable"
                    at = inp.offset
                    if _token(inp, "executable marker", 64) != b"":
                        raise FormatError(f"NAR: expected '' after 'executable' at offset {at}")
                    at = inp.offset
                    tag = _token(inp, "'contents'", 64)
                if tag != b"contents":
                    raise FormatError(f"NAR: expected 'contents' at offset {at}, found {tag[:40]!r}")
                at = inp.offset
                size = _u64(inp, "contents")
                if size > MAX_CONTENTS:
                    raise FormatError(f"NAR: file {path!r} at offset {at} has absurd length {size}")
                begin = inp.offset
                yield NarEntry(path, kind, size, None, begin)
                consumed = inp.offset - begin
                if consumed < size:
                    for _ in inp.chunks(size - consumed, f"contents of {path!r}"):
                        pass
                _padding(inp, size, f"contents of {path!r}")
                _expect(inp, b")", f"closing {path!r}")
            elif kind == "symlink":
                _expect(inp, b"target", f"in symlink {path!r}")
                at = inp.offset
                target = _token(inp, "symlink target")
                if not target or b"\0" in target:
                    raise FormatError(
                        f"NAR: symlink {path!r} at offset {at} has an empty target or one with NUL"
                    )
                yield NarEntry(path, kind, 0, os.fsdecode(target))
                _expect(inp, b")", f"closing {path!r}")
            else:
                yield NarEntry(path, kind)
                stack.append([path, None])
                path = None
                continue
            if not stack:
                break
            _expect(inp, b")", "closing directory entry")
            path = None
        # ---- continuation of the directory on top of the stack
        dir_path, prev = stack[-1]
        at = inp.offset
        tag = _token(inp, "'entry' or ')'", 64)
        if tag == b"entry":
            _expect(inp, b"(", "after 'entry'")
            _expect(inp, b"name", "in directory entry")
            at = inp.offset
            name = _token(inp, "entry name")
            why = _bad_name(name)
            if why:
                raise FormatError(
                    f"NAR: entry name {name[:40]!r} in {dir_path or '/'!r} at offset {at} {why}"
                )
            if prev is not None and name <= prev:
                rel = "duplicated" if name == prev else f"out of order (after {prev[:40]!r})"
                raise FormatError(f"NAR: entry {name[:40]!r} in {dir_path or '/'!r} at offset {at} is {rel}")
            stack[-1][1] = name
            _expect(inp, b"node", "in directory entry")
            path = _join(dir_path, name)
        elif tag == b")":
            stack.pop()
            if not stack:
                break
            _expect(inp, b")", "closing directory entry")
        else:
            raise FormatError(f"NAR: expected 'entry' or ')' at offset {at}, found {tag[:40]!r}")
    if not inp.at_eof():
        raise FormatError(f"NAR: trailing data after the root node at offset {inp.offset}")


_FILE_HEAD = HDR_ROOT + HDR_REGULAR


def single_file(nar: bytes) -> tuple[bool, memoryview] | None:
    """``(executable, contents)`` if ``nar`` is exactly the archive of one regular file
    (the commonest small store path), else None — and then the general parser decides
    whether it is valid. Never raises: a near miss (bad padding, trailing bytes, any
    other shape) is simply not this case."""
    view = memoryview(nar)
    pos = len(_FILE_HEAD)
    if view[:pos] != _FILE_HEAD:
        return None
    executable = view[pos : pos + len(HDR_EXEC)] == HDR_EXEC
    if executable:
        pos += len(HDR_EXEC)
    if view[pos : pos + len(HDR_CONTENTS)] != HDR_CONTENTS:
        return None
    pos += len(HDR_CONTENTS)
    if len(view) < pos + 8:
        return None
    size = int.from_bytes(view[pos : pos + 8], "little")
    pos += 8
    pad = -size % 8
    end = pos + size + pad
    if end + len(TOK_CLOSE) != len(view) or view[end:] != TOK_CLOSE or any(view[pos + size : end]):
        return None
    return executable, view[pos : pos + size]


def entries(src: BinaryIO | Iterable[bytes]) -> Iterator[NarEntry]:
    """Validate ``src`` and yield every node in archive order (parents before children,
    siblings sorted). The iterator raises ``FormatError`` where the input goes bad, so
    a consumer has seen only a valid prefix."""
    return _parse(_Input(src))
