"""The tree an archive unpacks to, held in memory, and its NAR hash: for ``kiln prefetch
--unpack`` (``kiln.store.archivehash``), which never writes an archive member to disk
under a name the archive chose.

Theory of operation
-------------------
Archive readers (``archivetar``, ``archivehash``'s zip reader) call ``Tree.add_dir``,
``add_file``, ``add_symlink`` and ``add_hardlink`` member by member. Each path is split
into components here, and nowhere else:

- ``.`` and empty components are dropped, so ``./a//b`` is ``a/b``; a leading ``/`` is
  dropped too (an absolute member name lands under the top, as ``nix-prefetch-url
  --unpack`` puts it under its unpack directory);
- ``..`` anywhere, a NUL byte, a component over 255 bytes or a name over 4096 bytes is
  refused (libarchive, which Nix unpacks with, refuses ``..``; a filesystem the rest);
- every directory on the way must be a directory of the tree: a missing one is created
  (archives need not list parents), a symlink or a file there is refused. Symlinks are
  data only, never followed, so no member can reach outside the tree however its links
  are chained; a hard link names another member by its path under the same rules and
  copies that node (a file or a symlink, never a directory).

Replacing follows libarchive's extraction, which Nix's hash reflects: a later member of
the same name replaces a file or symlink, merges into a directory if it is one, and may
replace an *empty* directory only; a directory replaces whatever non-directory is there.

File contents are appended to one spool file (``spool``: an unnamed temporary file the
caller creates in a private directory) and nodes keep offsets into it, so memory holds
only metadata. ``Limits`` bounds what an archive can make kiln store: bytes appended and
nodes created (implicit directories included). ``nar_hash`` serialises a node exactly as
``nix-store --dump`` would serialise the unpacked tree (entries sorted by name bytes; a
file is executable iff its owner-execute bit was set) and hashes it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from . import fetchtext
from .envnumber import whole_number
from .errors import KilnError
from .hashes import Hash
from .nar_read import (
    ENTRY,
    HDR_CONTENTS,
    HDR_DIR,
    HDR_EXEC,
    HDR_REGULAR,
    HDR_ROOT,
    HDR_SYMLINK,
    NODE,
    TOK_CLOSE,
    nar_str,
)


class Reader(Protocol):
    """A stream of bytes read forwards, up to ``n`` at a time (fewer only at its end)."""

    def read(self, n: int, /) -> bytes: ...


CHUNK = 1 << 20
#: the longest member name or link target accepted (Linux PATH_MAX)
MAX_NAME = 4096
#: the longest path component (a filesystem's NAME_MAX)
MAX_COMPONENT = 255
#: defaults of ``Limits``: what one archive may unpack to
MAX_UNPACK_BYTES = 4 << 30
MAX_UNPACK_ENTRIES = 1_000_000


class ArchiveError(KilnError):
    """The archive is malformed, of an unsupported kind, or breaks a limit."""


@dataclass(frozen=True)
class Limits:
    """What one archive may unpack to: ``bytes`` of contents (for a tar, of the whole
    uncompressed stream) and ``entries`` tree nodes."""

    bytes: int = MAX_UNPACK_BYTES
    entries: int = MAX_UNPACK_ENTRIES

    @classmethod
    def from_env(cls) -> Limits:
        """The defaults, raised or lowered by ``KILN_UNPACK_MAX_BYTES`` and
        ``KILN_UNPACK_MAX_ENTRIES``."""
        return cls(
            whole_number("KILN_UNPACK_MAX_BYTES", MAX_UNPACK_BYTES, ArchiveError),
            whole_number("KILN_UNPACK_MAX_ENTRIES", MAX_UNPACK_ENTRIES, ArchiveError),
        )

    def too_many_bytes(self) -> ArchiveError:
        return ArchiveError(
            f"refusing archive: it unpacks to more than {self.bytes} bytes "
            "(KILN_UNPACK_MAX_BYTES raises the limit)"
        )


@dataclass(frozen=True, slots=True)
class File:
    """A regular file: ``size`` bytes at ``offset`` in the spool."""

    offset: int
    size: int
    executable: bool


@dataclass(frozen=True, slots=True)
class Symlink:
    target: bytes


@dataclass(frozen=True, slots=True)
class Dir:
    """A directory; ``entries`` is filled in as members arrive."""

    entries: dict[bytes, Node] = field(default_factory=dict)


Node = File | Symlink | Dir


def shown(name: bytes) -> str:
    """A member name for an error message: quoted and escaped (``fetchtext.shown``: an
    archive's names are anyone's text), cut to a readable length."""
    return f"'{fetchtext.shown(os.fsdecode(name[:300]))}'" + ("..." if len(name) > 300 else "")


class Tree:
    """The tree being unpacked (see the module docstring for the rules)."""

    def __init__(self, spool: BinaryIO, limits: Limits) -> None:
        self.spool = spool
        self.limits = limits
        self.root = Dir()
        self.nodes = 0
        self.spooled = 0

    # --- adding members ----------------------------------------------------------------

    def add_dir(self, name: bytes) -> None:
        parent, last = self._parent(name)
        if last is None:
            return  # "." or "/": the top itself
        if not isinstance(parent.entries.get(last), Dir):
            self._count()
            parent.entries[last] = Dir()

    def add_file(self, name: bytes, data: Reader, size: int, executable: bool) -> None:
        """A regular file of exactly ``size`` bytes read from ``data``."""
        parent, last = self._placeable(name)
        if self.spooled + size > self.limits.bytes:
            raise self.limits.too_many_bytes()
        offset = self.spool.seek(0, os.SEEK_END)
        left = size
        while left:
            chunk = data.read(min(left, CHUNK))
            if not chunk:
                raise ArchiveError(f"member {shown(name)} ends after {size - left} of its {size} bytes")
            self.spool.write(chunk)
            left -= len(chunk)
        self.spooled += size
        self._put(parent, last, name, File(offset, size, executable))

    def add_symlink(self, name: bytes, target: bytes) -> None:
        if not target or b"\0" in target or len(target) >= MAX_NAME:
            raise ArchiveError(
                f"symlink {shown(name)}: expected a target of 1 to {MAX_NAME - 1} bytes without NUL, "
                f"found {shown(target)}"
            )
        parent, last = self._placeable(name)
        self._put(parent, last, name, Symlink(target))

    def add_hardlink(self, name: bytes, target: bytes) -> None:
        """A hard link to the member already at ``target``: a copy of that file or
        symlink (a link shares the inode, so its mode too)."""
        node = self._lookup(target, name)
        if isinstance(node, Dir):
            raise ArchiveError(f"hard link {shown(name)}: its target {shown(target)} is a directory")
        parent, last = self._placeable(name)
        self._put(parent, last, name, node)

    # --- the result --------------------------------------------------------------------

    def top(self) -> Node:
        """What ``nix-prefetch-url --unpack`` hashes: the only entry when there is
        exactly one (of any type), else the whole tree."""
        if len(self.root.entries) == 1:
            return next(iter(self.root.entries.values()))
        return self.root

    def nar_hash(self, node: Node) -> Hash:
        """The sha256 of the NAR serialisation of ``node``."""
        h = hashlib.sha256(HDR_ROOT)
        fd = self.spool.fileno()
        self.spool.flush()
        # an explicit stack: a tree may be nested deeper than Python's recursion limit
        todo: list[Node | bytes] = [node]
        while todo:
            item = todo.pop()
            if isinstance(item, bytes):
                h.update(item)
            elif isinstance(item, File):
                h.update(HDR_REGULAR + (HDR_EXEC if item.executable else b"") + HDR_CONTENTS)
                h.update(item.size.to_bytes(8, "little"))
                done = 0
                while done < item.size:
                    chunk = os.pread(fd, min(CHUNK, item.size - done), item.offset + done)
                    if not chunk:  # the spool is ours alone: only a truncation by someone else
                        raise ArchiveError("the unpack spool file was truncated while being read")
                    h.update(chunk)
                    done += len(chunk)
                h.update(b"\0" * (-item.size % 8) + TOK_CLOSE)
            elif isinstance(item, Symlink):
                h.update(HDR_SYMLINK + nar_str(item.target) + TOK_CLOSE)
            else:
                h.update(HDR_DIR)
                todo.append(TOK_CLOSE)
                for name in sorted(item.entries, reverse=True):  # smallest name first, as bytes
                    todo += [TOK_CLOSE, item.entries[name], ENTRY + nar_str(name) + NODE]
        return Hash("sha256", h.digest())

    # --- paths -------------------------------------------------------------------------

    def _count(self) -> None:
        self.nodes += 1
        if self.nodes > self.limits.entries:
            raise ArchiveError(
                f"refusing archive: more than {self.limits.entries} entries "
                "(KILN_UNPACK_MAX_ENTRIES raises the limit)"
            )

    def _parts(self, name: bytes) -> list[bytes]:
        if not name or len(name) > MAX_NAME or b"\0" in name:
            raise ArchiveError(
                f"refusing member name {shown(name)}: expected 1 to {MAX_NAME} bytes without NUL"
            )
        parts = [p for p in name.split(b"/") if p not in (b"", b".")]
        for p in parts:
            if p == b"..":
                raise ArchiveError(f"refusing member name {shown(name)}: it contains '..'")
            if len(p) > MAX_COMPONENT:
                raise ArchiveError(
                    f"refusing member name {shown(name)}: a component is {len(p)} bytes, "
                    f"more than {MAX_COMPONENT}"
                )
        return parts

    def _parent(self, name: bytes) -> tuple[Dir, bytes | None]:
        """The directory ``name`` goes in (created as needed) and its last component
        (None for the top itself)."""
        parts = self._parts(name)
        here = self.root
        for i, p in enumerate(parts[:-1]):
            node = here.entries.get(p)
            if node is None:
                self._count()
                node = here.entries[p] = Dir()
            elif not isinstance(node, Dir):
                what = "a symlink" if isinstance(node, Symlink) else "a file"
                raise ArchiveError(
                    f"refusing member {shown(name)}: {shown(b'/'.join(parts[: i + 1]))} is {what}, "
                    "not a directory (a member is never written through a symlink or below a file)"
                )
            here = node
        return here, (parts[-1] if parts else None)

    def _placeable(self, name: bytes) -> tuple[Dir, bytes]:
        parent, last = self._parent(name)
        if last is None:
            raise ArchiveError(f"refusing member {shown(name)}: only a directory can be the top")
        return parent, last

    def _put(self, parent: Dir, last: bytes, name: bytes, node: Node) -> None:
        old = parent.entries.get(last)
        if isinstance(old, Dir) and old.entries:
            raise ArchiveError(f"refusing member {shown(name)}: it would replace a non-empty directory")
        if old is None:
            self._count()
        parent.entries[last] = node

    def _lookup(self, target: bytes, name: bytes) -> Node:
        parts = self._parts(target)
        here: Node = self.root
        for i, p in enumerate(parts):
            if not isinstance(here, Dir):
                what = "a symlink" if isinstance(here, Symlink) else "a file"
                raise ArchiveError(
                    f"hard link {shown(name)}: on the way to its target {shown(target)}, "
                    f"{shown(b'/'.join(parts[:i]))} is {what}, not a directory"
                )
            nxt = here.entries.get(p)
            if nxt is None:
                raise ArchiveError(
                    f"hard link {shown(name)}: its target {shown(target)} is not an earlier member"
                )
            here = nxt
        return here
