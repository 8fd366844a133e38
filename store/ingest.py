"""One-pass serialisation of a file system tree into a ``NarSink``, optionally writing
a canonical copy or canonicalising the tree in place on the way.

Theory of operation
-------------------
``TreeIngest`` reads every source byte exactly once, in ~1 MiB chunks. Each chunk is
queued to the sink (hashing + compression threads, see ``objects``) and, when a
destination is given, written to the canonical copy - so the materialised tree and the
NAR are the same bytes even if the source changes underneath. Small files and headers
are coalesced into ~1 MiB chunks to keep per-chunk overhead out of the pipeline.

The NAR produced is byte-identical to ``nar.dump`` / ``nix-store --dump``: entries sorted
by the bytes of their names, a file is ``executable`` iff its owner-execute bit is set,
no other metadata. Sockets, devices and fifos are rejected with the offending path.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import StoreError
from .objects import CANON_MTIME, CHUNK, NarSink, write_all

COPY_PIECE = 4 << 20
MMAP_MIN = 256 << 10
#: copy_file_range errors that mean "not possible here", not "I/O failed"
_NO_CFR = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM, errno.EBADF}


def _nar_str(b: bytes) -> bytes:
    return len(b).to_bytes(8, "little") + b + b"\0" * (-len(b) % 8)


_MAGIC = _nar_str(b"nix-archive-1")
_OPEN, _CLOSE = _nar_str(b"("), _nar_str(b")")
_REGULAR = _OPEN + _nar_str(b"type") + _nar_str(b"regular")
_EXEC = _nar_str(b"executable") + _nar_str(b"")
_CONTENTS = _nar_str(b"contents")
_DIR = _OPEN + _nar_str(b"type") + _nar_str(b"directory")
_ENTRY = _nar_str(b"entry") + _OPEN + _nar_str(b"name")
_NODE = _nar_str(b"node")
_SYMLINK = _OPEN + _nar_str(b"type") + _nar_str(b"symlink") + _nar_str(b"target")

#: filter(path, kind) -> keep?; kind is "regular", "directory" or "symlink"
PathFilter = Callable[[str, str], bool]


class TreeIngest:
    """Serialises a file system tree as NAR into a ``NarSink``, in one read pass.

    Modes (choose by arguments to ``run``):
    - ``dest`` given: write a canonical copy there (files 0444/0555, dirs 0555 except
      the top directory, which stays writable for the caller's rename; mtime 1).
    - ``canonicalise=True``: fix the source tree in place instead (build outputs);
      setuid/setgid files are rejected rather than silently stripped.
    Sockets, devices and fifos are always rejected with the offending path.
    """

    def __init__(self, sink: NarSink, filter: PathFilter | None = None) -> None:
        self.sink = sink
        self.filter = filter
        self.buf = bytearray()
        #: copy with copy_file_range + mmap (False after the kernel refused once)
        self.in_kernel_copy = True

    def _emit(self, b: bytes) -> None:
        self.buf += b
        if len(self.buf) >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self.buf:
            chunk, self.buf = self.buf, bytearray()
            self.sink.write(chunk)

    def _emit_data(self, b: bytes) -> None:
        if len(self.buf) + len(b) < CHUNK:
            self.buf += b
        else:
            self._flush()
            self.sink.write(b)

    def run(self, src: Path, dest: Path | None = None, canonicalise: bool = False) -> None:
        self.canon = canonicalise
        self.buf += _MAGIC
        s = os.fsencode(src)
        self._node(s, os.lstat(s), None if dest is None else os.fsencode(dest), top=True)
        self._flush()

    def _node(self, path: bytes, st: os.stat_result, dest: bytes | None, top: bool = False) -> None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            self._regular(path, st, dest)
        elif stat.S_ISDIR(mode):
            self._directory(path, st, dest, top)
        elif stat.S_ISLNK(mode):
            target = os.readlink(path)
            self._emit(_SYMLINK + _nar_str(target) + _CLOSE)
            if dest is not None:
                os.symlink(target, dest)
            if dest is not None or self.canon:
                os.utime(
                    dest if dest is not None else path, (CANON_MTIME, CANON_MTIME), follow_symlinks=False
                )
        else:
            kind = _kind_name(mode)
            raise StoreError(
                f"{os.fsdecode(path)}: is a {kind}; a store path may contain only regular files, "
                "directories and symlinks"
            )

    def _check_special_bits(self, path: bytes, mode: int) -> None:
        if self.canon and mode & (stat.S_ISUID | stat.S_ISGID):
            bits = "setuid" if mode & stat.S_ISUID else "setgid"
            raise StoreError(
                f"{os.fsdecode(path)}: has the {bits} bit (mode {stat.S_IMODE(mode):04o}); "
                "store paths may not contain setuid/setgid files"
            )

    def _regular(self, path: bytes, st: os.stat_result, dest: bytes | None) -> None:
        self._check_special_bits(path, st.st_mode)
        exe = bool(st.st_mode & stat.S_IXUSR)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except PermissionError:
            if not self.canon:
                raise
            os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IRUSR)  # a build output we own
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        dfd = -1
        try:
            size = os.fstat(fd).st_size
            self._emit((_REGULAR + _EXEC if exe else _REGULAR) + _CONTENTS + size.to_bytes(8, "little"))
            if dest is not None:
                dfd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            if dfd >= 0 and self.in_kernel_copy:
                self._copy_then_read(path, fd, dfd, size)
            else:
                self._read_and_copy(path, fd, dfd, size)
            self._emit(b"\0" * (-size % 8) + _CLOSE)
            mode = 0o555 if exe else 0o444
            if dfd >= 0:
                os.fchmod(dfd, mode)
                os.utime(dfd, (CANON_MTIME, CANON_MTIME))
            elif self.canon:
                os.fchmod(fd, mode)
                os.utime(fd, (CANON_MTIME, CANON_MTIME))
        finally:
            os.close(fd)
            if dfd >= 0:
                os.close(dfd)

    def _read_and_copy(self, path: bytes, fd: int, dfd: int, size: int) -> None:
        """Read ``size`` bytes from ``fd`` into the NAR (and write them to ``dfd``)."""
        remaining = size
        while remaining:
            b = os.read(fd, min(CHUNK, remaining))
            if not b:
                raise StoreError(f"{os.fsdecode(path)}: file shrank while being read (expected {size} bytes)")
            self._emit_data(b)
            if dfd >= 0:
                write_all(dfd, b)
            remaining -= len(b)

    def _copy_then_read(self, path: bytes, fd: int, dfd: int, size: int) -> None:
        """Copy ``fd`` to ``dfd`` in the kernel (``copy_file_range``: about half the CPU of
        read+write) a few MiB at a time, and read each piece back *from the copy* into the
        NAR, so the NAR describes exactly the bytes of the materialised file."""
        done = 0
        while done < size:
            want = min(COPY_PIECE, size - done)
            got = 0
            while got < want:
                try:
                    n = os.copy_file_range(fd, dfd, want - got)
                except OSError as e:
                    if e.errno not in _NO_CFR or done or got:
                        raise
                    self.in_kernel_copy = False  # e.g. across file systems: plain copying
                    return self._read_and_copy(path, fd, dfd, size)
                if n == 0:
                    raise StoreError(
                        f"{os.fsdecode(path)}: file shrank while being read (expected {size} bytes)"
                    )
                got += n
            if want >= MMAP_MIN:
                # map the private copy: hashing and compressing read the page cache
                # directly (no user-space copy); the mapping lives until the last chunk
                # (a memoryview into it) has been consumed by the sink's threads
                view = memoryview(mmap.mmap(dfd, want, access=mmap.ACCESS_READ, offset=done))
                for off in range(0, want, CHUNK):
                    self._emit_data(view[off : off + CHUNK])
            else:
                b = os.pread(dfd, want, done)
                if len(b) != want:
                    raise StoreError(f"{os.fsdecode(path)}: the copy in the store is shorter than expected")
                self._emit_data(b)
            done += want
        return None

    def _directory(self, path: bytes, st: os.stat_result, dest: bytes | None, top: bool) -> None:
        self._check_special_bits(path, st.st_mode)
        self._emit(_DIR)
        if dest is not None:
            os.mkdir(dest, 0o700)
        elif self.canon and st.st_mode & 0o700 != 0o700:
            os.chmod(path, 0o755)  # we must list it and may need to fix children's modes
        for name in sorted(os.listdir(path)):
            child = path + b"/" + name
            cst = os.lstat(child)
            if self.filter is not None and not self.filter(os.fsdecode(child), _filter_kind(cst.st_mode)):
                continue
            self._emit(_ENTRY + _nar_str(name) + _NODE)
            self._node(child, cst, None if dest is None else dest + b"/" + name)
            self._emit(_CLOSE)
        self._emit(_CLOSE)
        target = dest if dest is not None else (path if self.canon else None)
        if target is not None:
            if not top:
                os.chmod(target, 0o555)
            os.utime(target, (CANON_MTIME, CANON_MTIME))


def _filter_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "regular" if stat.S_ISREG(mode) else "unknown"


def _kind_name(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return f"file of unknown type (mode {mode:o})"
