"""NAR (Nix ARchive) serialisation: writing a filesystem tree as a NAR stream.

Theory of operation
-------------------
A NAR is a sequence of *strings*: a little-endian u64 length, the bytes, then zero
padding to a multiple of 8. The grammar (see docs/formats.md) is::

    nar       = "nix-archive-1" node
    node      = "(" "type" ( "regular" ["executable" ""] "contents" BYTES
                           | "symlink" "target" STR
                           | "directory" { "entry" "(" "name" STR "node" node ")" } ) ")"

Invariants of the writer (identical to ``nix-store --dump``):

- directory entries are sorted by the *bytes* of their names (``os.listdir`` on a bytes
  path, so non-UTF-8 names round-trip and ``"B" < "a"``);
- a regular file is ``executable`` iff its owner-execute bit is set; no other metadata
  (times, owners, other mode bits, xattrs) is recorded;
- devices, sockets and FIFOs cannot be represented: ``FormatError`` naming the file;
- a file that shrinks while it is read raises ``FormatError`` rather than producing a
  NAR whose declared length disagrees with its contents.

``dump`` runs in constant memory: the walk produces batches of pieces (headers, file
contents read ``chunk_size`` at a time) totalling about ``chunk_size`` bytes; ``dump``
joins a batch into one chunk, ``hash_path`` feeds the pieces to the hash as they are, so
file contents are never copied after the read.

``hash_path`` hashes inline when the walk ends within one batch (a small path never
starts a thread; a short batch need not be the last, see ``hash_path``); for bigger paths it continues the walk in a reader thread and hashes in
the calling thread; file reads and ``hashlib`` both release the GIL, so on two cores
reading and hashing overlap.

The parser (``nar_read``) and ``restore`` (``nar_restore``) are re-exported here; the read-only
queries over a NAR stream (``cat``, ``ls``, ``listing``) are at the end of this module.
``kiln.store.nar`` is the one module callers import.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import stat
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from .errors import FormatError, KilnError
from .hashes import Hash
from .nar_read import ENTRY as _ENTRY
from .nar_read import HDR_CONTENTS as _HDR_CONTENTS
from .nar_read import HDR_DIR as _HDR_DIR
from .nar_read import HDR_EXEC as _HDR_EXEC
from .nar_read import HDR_REGULAR as _HDR_REGULAR
from .nar_read import HDR_ROOT as _HDR_ROOT
from .nar_read import HDR_SYMLINK as _HDR_SYMLINK
from .nar_read import MAGIC, NarEntry, _Input, _parse, entries
from .nar_read import NODE as _NODE
from .nar_read import TOK_CLOSE as _CLOSE
from .nar_read import nar_str as _str
from .nar_restore import restore
from .shownname import shown_name
from .sigshield import shielded

__all__ = [
    "MAGIC",
    "NarEntry",
    "NarPathError",
    "cat",
    "dump",
    "dump_bytes",
    "entries",
    "hash_path",
    "listing",
    "listing_json",
    "ls",
    "restore",
]

_PAD = b"\0" * 8
_pack_u64 = struct.Struct("<Q").pack
_MIN_READ = 1 << 16
# O_NONBLOCK: if a path turns into a FIFO between lstat and open, fail instead of hanging.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _batches(root: bytes, chunk_size: int) -> Iterator[list[bytes]]:
    """Yield the NAR of ``root`` as lists of pieces, each list totalling at least
    ``chunk_size`` bytes (except the last). File contents are read straight into their
    own pieces (no copying); headers are tiny pieces. Iterative (explicit stack) so
    trees deeper than Python's recursion limit work."""
    batch: list[bytes] = [_HDR_ROOT]
    pending = len(_HDR_ROOT)
    # Stack of pending work, processed LIFO: (True, path) = archive this node,
    # (False, literal) = emit these bytes.
    todo: list[tuple[bool, bytes]] = [(True, root)]
    while todo:
        is_node, item = todo.pop()
        if not is_node:
            batch.append(item)
            pending += len(item)
            continue
        path = item
        st = os.lstat(path)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            # Open without following symlinks and take size and mode from the open file,
            # so a path swapped after lstat cannot make us archive something else.
            fd = os.open(path, _OPEN_FLAGS)
            with open(fd, "rb", buffering=0) as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise FormatError(f"{shown_name(path)}: changed type while being archived")
                size = st.st_size
                head = _HDR_REGULAR + (_HDR_EXEC if st.st_mode & stat.S_IXUSR else b"") + _HDR_CONTENTS
                batch.append(head + _pack_u64(size))
                pending += len(head) + 8
                left = size
                while left:
                    room = chunk_size - pending
                    if room < _MIN_READ and batch:
                        # Flush rather than make a small read: keeps chunks near
                        # chunk_size and reads large.
                        yield batch
                        batch, pending, room = [], 0, chunk_size
                    data = f.read(min(left, room))
                    if not data:
                        raise FormatError(
                            f"{shown_name(path)}: file shrank while being archived "
                            f"(expected {size} bytes, got {size - left})"
                        )
                    batch.append(data)
                    pending += len(data)
                    left -= len(data)
                    if pending >= chunk_size:
                        yield batch
                        batch, pending = [], 0
            tail = _PAD[: -size % 8] + _CLOSE
            batch.append(tail)
            pending += len(tail)
        elif stat.S_ISLNK(mode):
            piece = _HDR_SYMLINK + _str(os.readlink(path)) + _CLOSE
            batch.append(piece)
            pending += len(piece)
        elif stat.S_ISDIR(mode):
            batch.append(_HDR_DIR)
            pending += len(_HDR_DIR)
            todo.append((False, _CLOSE))
            # Push in reverse so the smallest name (as bytes, like Nix) comes first.
            for name in sorted(os.listdir(path), reverse=True):
                todo.append((False, _CLOSE))
                todo.append((True, os.path.join(path, name)))
                todo.append((False, _ENTRY + _str(name) + _NODE))
        else:
            raise FormatError(
                f"{shown_name(path)}: is a {kind_name(mode)}; a store path may contain only regular files, "
                "directories and symlinks"
            )
        if pending >= chunk_size:
            yield batch
            batch, pending = [], 0
    if batch:
        yield batch


def kind_name(mode: int) -> str:
    """What a file of ``mode`` is, in words (the store's messages use it: ``treeplan``)."""
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "fifo"),
    ):
        if test(mode):
            return name
    return f"file of unknown type (mode {mode:o})"


def _walk(root: bytes, chunk_size: int) -> Iterator[bytes]:
    """Chunks for ``dump``: large pieces (file reads) pass through uncopied; runs of
    small pieces (headers, small files) are joined into one chunk."""
    for batch in _batches(root, chunk_size):
        if len(batch) == 1:
            yield batch[0]
            continue
        small: list[bytes] = []
        for piece in batch:
            if len(piece) < _MIN_READ:
                small.append(piece)
                continue
            if small:
                yield b"".join(small)
                small = []
            yield piece
        if small:
            yield b"".join(small)


def dump(path: str | os.PathLike, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Stream the NAR serialisation of ``path`` (not followed if it is a symlink).

    Chunks are at most ``chunk_size`` bytes plus a few headers (headers are never
    split, so tiny ``chunk_size`` values are exceeded by them); memory use does not
    depend on file sizes."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    return _walk(os.fsencode(path), chunk_size)


def dump_bytes(path: str | os.PathLike) -> bytes:
    """The whole NAR of ``path`` as one ``bytes`` (for small trees and tests)."""
    return b"".join(dump(path))


def file_nar(contents: bytes, executable: bool = False) -> bytes:
    """The NAR of a single regular file holding ``contents`` (no file needed: text
    paths such as ``.drv`` files are archived straight from memory)."""
    head = _HDR_ROOT + _HDR_REGULAR + (_HDR_EXEC if executable else b"") + _HDR_CONTENTS
    return head + _str(contents) + _CLOSE


# ---------------------------------------------------------------------------- queries


class NarPathError(KilnError):
    """A path asked for inside a NAR (``cat``/``ls``) does not exist or has the wrong type."""


def _split(subpath: str) -> str:
    parts = [p for p in subpath.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise NarPathError(f"path {subpath!r} inside a NAR must not contain '.' or '..'")
    return "/".join(parts)


def cat(src: BinaryIO | Iterable[bytes], subpath: str) -> bytes:
    """Contents of the regular file at ``subpath`` (the whole archive is validated)."""
    pieces: list[bytes] = []
    cat_into(src, subpath, lambda c: pieces.append(bytes(c)))
    return b"".join(pieces)


def cat_into(
    src: BinaryIO | Iterable[bytes], subpath: str, write: Callable[[memoryview | bytes], object]
) -> None:
    """Hand the contents of the regular file at ``subpath`` to ``write`` piece by piece,
    then validate the rest of the archive (so a caller that must not use unverified
    bytes spools them until this returns)."""
    want = _split(subpath)
    inp = _Input(src)
    found: NarEntry | None = None
    for e in _parse(inp):
        if e.path == want:
            found = e
            if e.contents_offset is not None:
                for c in inp.chunks(e.size, f"contents of {e.path!r}"):
                    write(c)
    what = repr(subpath) if subpath else "the path itself"
    if found is None:
        raise NarPathError(f"{what} does not exist in the NAR")
    if found.type == "symlink":
        raise NarPathError(f"{what} is a symlink to {found.target!r}, not a file")
    if found.type == "directory":
        hint = "" if subpath else " (name a file in it; 'kiln store ls PATH' lists them)"
        raise NarPathError(f"{what} is a directory, not a file{hint}")


def ls(src: BinaryIO | Iterable[bytes], subpath: str = "", recursive: bool = False) -> list[NarEntry]:
    """The entries under directory ``subpath`` (children only unless ``recursive``), or
    ``[entry]`` when ``subpath`` is not a directory. The whole archive is validated."""
    want = _split(subpath)
    prefix = want + "/" if want else ""
    found: NarEntry | None = None
    out: list[NarEntry] = []
    for e in entries(src):
        if e.path == want:
            found = e
        elif e.path.startswith(prefix) and (recursive or "/" not in e.path[len(prefix) :]):
            out.append(e)
    if found is None:
        raise NarPathError(f"{subpath!r} does not exist in the NAR")
    return out if found.type == "directory" else [found]


def listing(src: BinaryIO | Iterable[bytes]) -> dict:
    """The NAR's tree as Nix's JSON listing (``nix nar ls --json -R``; the ``root`` of a
    binary cache's ``<hash>.ls`` file): regular files carry ``size``, ``executable``
    (only when true) and ``narOffset``, symlinks ``target``, directories ``entries``.
    The whole archive is validated."""
    root: dict | None = None
    dirs: dict[str, dict] = {}
    for e in entries(src):
        if e.type == "directory":
            node: dict = {"type": "directory", "entries": {}}
            dirs[e.path] = node["entries"]
        elif e.type == "symlink":
            node = {"type": "symlink", "target": e.target}
        else:
            node = {"type": "regular", "size": e.size}
            if e.type == "executable":
                node["executable"] = True
            node["narOffset"] = e.contents_offset
        if e.path:
            parent, _, name = e.path.rpartition("/")
            dirs[parent][name] = node
        else:
            root = node
    assert root is not None  # a valid NAR always has a root node
    return root


def listing_json(src: BinaryIO | Iterable[bytes]) -> bytes:
    """The contents of a binary cache ``.ls`` file, byte-identical to what
    ``nix copy --to 'file://...?write-nar-listing=true'`` writes: compact JSON, UTF-8
    names unescaped, and names that are not UTF-8 written as their raw bytes, as Nix does."""
    import json  # only listings need it

    text = json.dumps({"version": 1, "root": listing(src)}, ensure_ascii=False, separators=(",", ":"))
    # json.dumps writes \b and \f where Nix writes \u0008 and \u000c (a symlink target
    # or name holding them); in JSON text a backslash only ever starts an escape, and a
    # "\\" pair is consumed first, so these are exactly the escapes
    text = _SHORT_ESCAPE.sub(lambda m: m.group(1) or _LONG[m.group(2)], text)
    return text.encode("utf-8", "surrogateescape")


_SHORT_ESCAPE = re.compile(r"(\\\\)|\\([bf])")
_LONG = {"b": "\\u0008", "f": "\\u000c"}


# ---------------------------------------------------------------------------- hashing

_STOP = object()


def hash_path(path: str | os.PathLike, chunk_size: int = 1 << 20) -> tuple[Hash, int]:
    """SHA-256 NAR hash and NAR size of ``path``, as ``nix-hash --type sha256`` computes.

    A path whose walk ends within its first batch is hashed inline, so small paths never
    pay for a thread. (Whether a batch is the last is known only from the walk ending: a
    batch can be short without being the last, when the walk flushes before a file rather
    than make a small read; so the second batch is read before deciding.) Otherwise a
    reader thread produces the remaining batches while this thread hashes them (bounded
    queue: memory stays at a few chunks)."""
    h = hashlib.sha256()
    size = 0
    gen = _batches(os.fsencode(path), chunk_size)
    first = next(gen)
    second = next(gen, None)
    for piece in first:
        h.update(piece)
        size += len(piece)
    if second is None:
        return Hash("sha256", h.digest()), size

    q: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def put(item: object) -> bool:
        """Hand ``item`` to the hasher; False once the hasher has gone away."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if not put(second):
                return
            for batch in gen:
                if not put(batch):
                    return
            put(_STOP)
        except BaseException as e:  # noqa: BLE001 - re-raised in the hashing thread
            put(e)

    t = threading.Thread(target=produce, name="nar-reader", daemon=True)
    t.start()
    try:
        while True:
            with shielded:  # (a signal's exception cut into Queue.get could leave its lock held)
                item = q.get()
            if item is _STOP:
                break
            if isinstance(item, BaseException):
                raise item
            for piece in item:
                h.update(piece)
                size += len(piece)
    finally:
        stop.set()
        t.join()
    return Hash("sha256", h.digest()), size
