"""One-pass serialisation of a file system tree into a ``NarSink``, optionally writing
a canonical copy or canonicalising the tree in place on the way.

Theory of operation
-------------------
``TreeIngest`` reads every source byte exactly once, into a ring of 1 MiB slots (page-
aligned, reused: no allocation per chunk). When copying, a ``treeplan.Creator`` thread
lists the tree (``treeplan.Plan``) and creates the copy's directories, files and
symlinks ahead of the walk (file creation is the costliest kernel work of an ingest);
the walk follows the same listing, so both agree on what exists. Each piece of a file is read into a
slot, written from that slot to the canonical copy and queued from the same slot to the
sink (hashing + compression threads, see ``objects``), so the materialised tree and the
NAR are the same bytes even if the source changes underneath. Files of ``DIRECT_MIN`` or
more start in a fresh slot and are written by a ``CopyWriter`` thread, with ``O_DIRECT``
(``directio``: on the reference VM the page-cache copy cost more CPU than anything but
zstd; ``copywriter`` says why on a thread of its own); headers, padding and small files
are packed into slots to keep per-chunk overhead out of the pipeline, and small files
are written by the walk. A slot is reused only once the sink and the copy writer are
done with it (``NarSink.wait_consumed``, ``CopyWriter.wait_done``).

The NAR produced is byte-identical to ``nar.dump`` / ``nix-store --dump``: entries sorted
by the bytes of their names, a file is ``executable`` iff its owner-execute bit is set,
no other metadata. Sockets, devices and fifos are rejected with the offending path.

A source that changes under the walk is refused, never archived half old and half new
(``treeplan.changed``): every directory, file and symlink opened must be the node its
directory's listing saw (device, inode and kind, ``treeplan.open_listed``: an entry replaced
meanwhile, or a directory on the way swapped for a symbolic link to elsewhere, is not
followed), and a file's size, mtime and ctime must be the same after it was read as
when it was opened.

An ingest can be bounded from outside: ``stop()``, when given, is asked once per slot
queued to the sink (at most 1 MiB of NAR, never per byte) and ends the walk with
``IngestStopped`` (a build's ``--timeout`` covers archiving its output: a sparse file of
terabytes is quick to make and slow to archive).
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable
from pathlib import Path

from .copywriter import CopyWriter
from .errors import StoreError
from .nar_read import ENTRY as _ENTRY
from .nar_read import HDR_CONTENTS as _CONTENTS
from .nar_read import HDR_DIR as _DIR
from .nar_read import HDR_EXEC as _EXEC
from .nar_read import HDR_REGULAR as _REGULAR
from .nar_read import HDR_ROOT as _MAGIC
from .nar_read import HDR_SYMLINK as _SYMLINK
from .nar_read import NODE as _NODE
from .nar_read import TOK_CLOSE as _CLOSE
from .nar_read import nar_str as _nar_str
from .nar_restore import write_all
from .narsink import NarSink
from .objects import CANON_MTIME, CHUNK, DIRECT, QUEUE_DEPTH
from .shownname import shown_name
from .treeplan import Creator, PathFilter, Plan, changed, list_dir, open_listed, read_link, unstorable

#: O_NONBLOCK: an entry that became a FIFO since it was listed fails the identity check
#: (``check_same``) instead of hanging the open
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: files at least this big are written to the copy with O_DIRECT (see ``directio``)
DIRECT_MIN = 128 << 10
#: 1 MiB read buffers: enough for the hasher's queue, the chunks being worked on and the
#: one being filled (the walk waits until the sink and the copy writer are done with a
#: slot before reusing it)
RING_SLOTS = QUEUE_DEPTH + 4


class IngestStopped(StoreError):
    """A ``TreeIngest`` was stopped from outside (its ``stop()`` returned true)."""


class TreeIngest:
    """Serialises a file system tree as NAR into a ``NarSink``, in one read pass.

    Modes (choose by arguments to ``run``):
    - ``dest`` given: write a canonical copy there (files 0444/0555, dirs 0555 except
      the top directory, which stays writable for the caller's rename; mtime 1).
    - ``canonicalise=True``: fix the source tree in place instead (build outputs);
      setuid/setgid files are rejected rather than silently stripped.
    Sockets, devices and fifos are always rejected with the offending path.
    """

    def __init__(
        self,
        sink: NarSink,
        filter: PathFilter | None = None,
        direct: bool = DIRECT,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.sink = sink
        self.stop = stop  # asked once per slot queued (see the module docstring)
        self.filter = filter
        self.direct = direct  # write big files of the copy with O_DIRECT where possible
        self.ring = memoryview(mmap.mmap(-1, RING_SLOTS * CHUNK))  # pages are touched lazily
        self.tickets = [0] * RING_SLOTS  # per slot: the sink ticket of its last chunk
        self.slot = 0
        self.cur = self.ring[:CHUNK]  # the slot being filled ...
        self.fill = 0  # ... up to here
        self.wtickets = [0] * RING_SLOTS  # per slot: the copy writer's ticket of its last piece
        self.writer: CopyWriter | None = None  # writes big files of the copy

    def _emit(self, b: bytes | memoryview) -> None:
        """Append NAR bytes (headers, padding; at most ``CHUNK``) to the current slot."""
        n = len(b)
        if self.fill + n > CHUNK:
            self._flush()
        self.cur[self.fill : self.fill + n] = b
        self.fill += n

    def _flush(self) -> None:
        """Queue the current slot's bytes to the sink and move to the next slot (waiting
        until the sink is done with that slot's previous chunk)."""
        if not self.fill:
            return
        if self.stop is not None and self.stop():
            raise IngestStopped("archiving was stopped")
        self.tickets[self.slot] = self.sink.write_pooled(self.cur[: self.fill])
        w = self.writer
        if w is not None:
            self.wtickets[self.slot] = w.queued
        self.slot = i = (self.slot + 1) % RING_SLOTS
        self.sink.wait_consumed(self.tickets[i])
        if w is not None:
            w.wait_done(self.wtickets[i])
        self.cur = self.ring[i * CHUNK : (i + 1) * CHUNK]
        self.fill = 0

    def run(self, src: Path, dest: Path | None = None, canonicalise: bool = False) -> None:
        self.canon = canonicalise
        self._emit(_MAGIC)
        s = os.fsencode(src)
        st = os.lstat(s)
        if dest is None:
            self._node(s, st, None, top=True)
            self._flush()
            return
        # copying: a creator thread lists the tree and makes the directories, files and
        # symlinks in walk order while this thread copies and archives the contents; file
        # creation is the costliest kernel work here and so overlaps the copying
        d = os.fsencode(dest)
        self.plan = Plan(self.filter, (s, st, d))
        creator = Creator(self.plan)
        # the writer first: once the creator runs, only the ``finally`` below stops it
        self.writer = writer = CopyWriter(self.direct, CANON_MTIME, creator.depth)
        writer.start()
        try:
            creator.start()
            self._node(s, st, d, top=True)
            self._flush()
        except BaseException:
            writer.stop()
            raise
        finally:
            creator.stop()  # (safe if it never started)
        writer.finish()

    def _node(self, path: bytes, st: os.stat_result, dest: bytes | None, top: bool = False) -> None:
        """Serialise the node at ``path`` (and everything below it). Iterative, with an
        explicit stack: a tree may be deeper than Python's recursion limit."""
        todo: list[tuple] = [(_VISIT, path, st, dest, top)]
        while todo:
            step = todo.pop()
            if step[0] == _EMIT:
                self._emit(step[1])
                continue
            if step[0] == _DONE:
                self._close_directory(*step[1:])
                continue
            _, path, st, dest, top = step
            mode = st.st_mode
            if stat.S_ISREG(mode):
                self._regular(path, st, dest)
            elif stat.S_ISDIR(mode):
                kids = self._open_directory(path, st, dest)
                todo.append((_DONE, path, dest, top))
                for name, cst in reversed(kids):  # popped in NAR order
                    todo.append((_EMIT, _CLOSE))
                    child_dest = None if dest is None else dest + b"/" + name
                    todo.append((_VISIT, path + b"/" + name, cst, child_dest, False))
                    todo.append((_EMIT, _ENTRY + _nar_str(name) + _NODE))
            elif stat.S_ISLNK(mode):
                if dest is not None:
                    self.plan.creator.take()  # created (with its mtime) by the creator
                    target = self.plan.targets[path]  # read by the creator before that
                else:
                    target = read_link(path, st)
                    if self.canon:
                        os.utime(path, (CANON_MTIME, CANON_MTIME), follow_symlinks=False)
                self._emit(_SYMLINK + _nar_str(target) + _CLOSE)
            else:
                raise unstorable(path, mode)

    def _check_special_bits(self, path: bytes, mode: int) -> None:
        if self.canon and mode & (stat.S_ISUID | stat.S_ISGID):
            bits = "setuid" if mode & stat.S_ISUID else "setgid"
            raise StoreError(
                f"{shown_name(path)}: has the {bits} bit (mode {stat.S_IMODE(mode):04o}); "
                "store paths may not contain setuid/setgid files"
            )

    def _regular(self, path: bytes, st: os.stat_result, dest: bytes | None) -> None:
        self._check_special_bits(path, st.st_mode)
        exe = bool(st.st_mode & stat.S_IXUSR)
        # (the node listed: not a FIFO, device, directory or symlink put there since)
        try:
            fd, opened = open_listed(path, _OPEN_FLAGS, st)
        except PermissionError:
            if not self.canon:
                raise
            os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IRUSR)  # a build output we own
            fd, opened = open_listed(path, _OPEN_FLAGS, st)
        dfd = -1
        try:
            size = opened.st_size
            self._emit((_REGULAR + _EXEC if exe else _REGULAR) + _CONTENTS + size.to_bytes(8, "little"))
            if dest is not None:
                made = self.plan.creator.take()
                assert made is not None  # (a file's node: the creator hands its copy's descriptor)
                dfd = made
            mode = 0o555 if exe else 0o444
            big = self._copy(path, fd, dfd, size)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                size,
                opened.st_mtime_ns,
                opened.st_ctime_ns,
            ):  # written to while read: the copy may mix old and new bytes (tar's "file changed")
                raise changed(path, "a file was written to while it was read")
            if big:
                assert self.writer is not None
                handed, dfd = dfd, -1  # the writer's from here on (end_file closes it on failure)
                self.writer.end_file(handed, mode)
            elif dfd >= 0:
                os.fchmod(dfd, mode)
                os.utime(dfd, (CANON_MTIME, CANON_MTIME))
            elif self.canon:
                os.fchmod(fd, mode)
                os.utime(fd, (CANON_MTIME, CANON_MTIME))
            self._emit(b"\0" * (-size % 8) + _CLOSE)
        except BaseException:
            if dfd >= 0 and self.writer is not None:
                self.writer.stop()  # it may still hold writes for this descriptor
            raise
        finally:
            os.close(fd)
            if dfd >= 0:
                os.close(dfd)

    def _copy(self, path: bytes, fd: int, dfd: int, size: int) -> bool:
        """Read ``size`` bytes of ``fd`` into ring slots, write them to ``dfd`` (unless
        -1) and queue the same slots to the sink: the NAR holds exactly the bytes written
        to the materialised file, whatever the source does meanwhile.

        A big file (``DIRECT_MIN`` or more) goes to the copy writer, which the caller
        must then hand ``dfd`` with ``end_file`` (returns True). It starts in a fresh
        slot, so its pieces are page-aligned and whole blocks can go to the device with
        ``O_DIRECT``; always, with or without a copy or ``O_DIRECT``, because the slots
        are the sink's chunks and so its zstd frames: the object is then the same for
        the same tree on any file system. Smaller files are written here, buffered."""
        w = self.writer if dfd >= 0 and size >= DIRECT_MIN else None  # (None: written here)
        big = w is not None
        if size >= DIRECT_MIN:
            self._flush()
        left = size
        while left:
            if self.fill == CHUNK:
                self._flush()
            n = min(left, CHUNK - self.fill)
            piece = self.cur[self.fill : self.fill + n]
            got = 0
            while got < n:
                k = os.readv(fd, [piece[got:]])
                if k == 0:
                    raise StoreError(
                        f"{shown_name(path)}: file shrank while being read (expected {size} bytes)"
                    )
                got += k
            self.fill += n
            left -= n
            if w is not None:
                w.put(dfd, piece)
            elif dfd >= 0:
                write_all(dfd, piece)
        return big

    def _open_directory(
        self, path: bytes, st: os.stat_result, dest: bytes | None
    ) -> list[tuple[bytes, os.stat_result]]:
        """Start a directory node; return its entries in NAR order."""
        self._check_special_bits(path, st.st_mode)
        self._emit(_DIR)
        if dest is not None:
            self.plan.creator.take()  # the creator made the directory
            return self.plan.children[path]
        if self.canon and st.st_mode & 0o700 != 0o700:
            os.chmod(path, 0o755)  # we must list it and may need to fix children's modes
        return list_dir(path, st, self.filter)

    def _close_directory(self, path: bytes, dest: bytes | None, top: bool) -> None:
        """End a directory node (after its entries) and seal the copy or the tree."""
        self._emit(_CLOSE)
        target = dest if dest is not None else (path if self.canon else None)
        if target is not None:
            if not top:
                os.chmod(target, 0o555)
            os.utime(target, (CANON_MTIME, CANON_MTIME))


_VISIT, _EMIT, _DONE = 0, 1, 2  # TreeIngest._node's steps
