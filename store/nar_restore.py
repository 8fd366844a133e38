"""Writing NARs to the file system: ``restore`` (all-or-nothing materialisation of a
NAR with the validating parser of ``nar_read``) and the small file helpers it and the
ingest pipeline use (``write_all``, ``fsync_dir``, an iterative ``rm -rf`` safe for
hostile depth).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from typing import BinaryIO

from .errors import FormatError
from .nar_read import MAX_NAME, MAX_TARGET, NarEntry, _Input, _parse


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def restore(
    src: BinaryIO | Iterable[bytes],
    dest: str | os.PathLike,
    *,
    fsync: bool = False,
    scratch: str | os.PathLike | None = None,
) -> None:
    """Materialise the NAR read from ``src`` at ``dest``, which must not exist.

    All-or-nothing: on any error (bad input, I/O) nothing is left at ``dest``. With
    ``fsync`` every file and directory is synced before the final rename. The tree is
    built in a hidden directory beside ``dest``, or in ``scratch`` (on the same file
    system) when given: where a process killed meanwhile leaves it for its owner's
    clean-up (a store's ``tmp/``) rather than among the entries of ``dest``'s parent.
    The hidden directory's name carries the pid; one left beside ``dest`` by a killed
    restore (``kill -9``) is removed by the next restore there once its process is gone
    and it is an hour old (``locks.left_by_dead_writer``)."""
    dest_b = os.fsencode(os.path.abspath(dest))
    if os.path.lexists(dest_b):
        raise FileExistsError(errno.EEXIST, "restore destination already exists", os.fsdecode(dest_b))
    parent, base = os.path.split(dest_b)
    if not os.path.isdir(parent):  # (else the error would name the hidden scratch dir)
        raise FileNotFoundError(
            errno.ENOENT, "restore destination's directory does not exist", os.fsdecode(parent)
        )
    prefix = b"." + base[:40] + b".restore-"
    if scratch is None:
        _sweep_dead(parent, prefix)
    where = os.fsencode(os.path.abspath(scratch)) if scratch is not None else parent
    # the name first, made inside the ``try``: a ^C's exception just after the mkdir
    # (before an assignment) must not leave the directory behind
    tmp = _temp_name(where, prefix + str(os.getpid()).encode() + b"-")
    try:
        while True:
            try:
                os.mkdir(tmp, 0o700)
                break
            except FileExistsError:
                tmp = _temp_name(where, prefix + str(os.getpid()).encode() + b"-")
            except OSError as e:  # (named by the destination, not the hidden directory)
                raise type(e)(
                    e.errno, f"cannot restore there ({e.strerror}: no directory can be made beside it)", dest
                ) from None
        root = os.path.join(tmp, b"root")
        inp = _Input(src)
        dirs: list[bytes] = []
        for entry in _parse(inp):
            _makeable(entry, inp.offset)
            p = os.path.join(root, os.fsencode(entry.path)) if entry.path else root
            if entry.type == "directory":
                os.mkdir(p)
                dirs.append(p)
            elif entry.type == "symlink":
                os.symlink(os.fsencode(entry.target or ""), p)
            else:
                mode = 0o777 if entry.type == "executable" else 0o666
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
                try:
                    for piece in inp.chunks(entry.size, f"contents of {entry.path!r}"):
                        write_all(fd, piece)
                    if fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
        if fsync:
            for d in reversed(dirs):
                fsync_dir(d)
        _rename_noreplace(root, dest_b)
        if fsync:
            fsync_dir(parent)
    finally:
        rmtree_iter(tmp)  # (nothing if the mkdir did not happen)


def _makeable(e: NarEntry, offset: int) -> None:
    """``FormatError`` if Linux cannot make entry ``e`` (read up to ``offset``): a name
    over ``MAX_NAME`` bytes or a symlink target over ``MAX_TARGET`` (the NAR format has
    no such limit; the file system's error would name kiln's hidden temp directory)."""
    name = os.fsencode(e.path).rpartition(b"/")[2]
    if len(name) > MAX_NAME:
        raise FormatError(
            f"NAR: entry {e.path[:80]!r}... (before offset {offset}) has a name of {len(name)} bytes; "
            f"Linux takes at most {MAX_NAME}: it cannot be restored here"
        )
    target = os.fsencode(e.target or "")
    if len(target) > MAX_TARGET:
        raise FormatError(
            f"NAR: symlink {e.path[:80]!r} (before offset {offset}) has a target of {len(target)} bytes; "
            f"Linux takes at most {MAX_TARGET}: it cannot be restored here"
        )


def _sweep_dead(parent: bytes, prefix: bytes) -> None:
    """Remove ``<prefix><pid>-<12 hex>`` directories of dead restores in ``parent``: only
    what a restore of this user made (owned by us, mode 0700, exactly that name), so a
    shared directory's other entries are never touched."""
    import re
    import stat
    import time

    from .locks import left_by_dead_writer

    name = re.compile(re.escape(prefix) + rb"([0-9]{1,10})-[0-9a-f]{12}")
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(parent) as it:
        for entry in it:
            m = name.fullmatch(entry.name)
            if m is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
                continue
            if left_by_dead_writer(entry, int(m.group(1)), now):
                rmtree_iter(entry.path, writable=True)


def _temp_name(parent: bytes, prefix: bytes) -> bytes:
    """A name for a fresh directory in ``parent`` (``restore`` makes it 0700)."""
    return os.path.join(parent, prefix + os.urandom(6).hex().encode())


def _rename_noreplace(src: bytes, dst: bytes) -> None:
    """``rename`` that fails with ``FileExistsError`` instead of replacing ``dst``
    (``renameat2(RENAME_NOREPLACE)``; plain rename after a check where unavailable)."""
    import ctypes  # only restore needs it

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if fn(at_fdcwd, src, at_fdcwd, dst, rename_noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, "restore destination appeared while restoring", os.fsdecode(dst))
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), os.fsdecode(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "restore destination appeared while restoring", os.fsdecode(dst))
    os.rename(src, dst)


def rmtree_iter(top: bytes, writable: bool = False) -> None:
    """Best-effort iterative ``rm -rf``. ``shutil.rmtree`` recurses (a hostile NAR can be
    deeper than Python's recursion limit) and resolves whole paths (quadratic in depth);
    this keeps one directory fd, works relative to it, and climbs back with ``..``.
    ``writable``: make each directory 0700 first (read-only store trees). Entries that
    cannot be removed are skipped, never retried forever."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(top, flags)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(top)
        return
    if writable:
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o700)
    where: list[str] = []  # names from ``top`` down to the directory ``fd`` is
    stuck: set[tuple[str, ...]] = set()
    while True:
        child = None
        with contextlib.suppress(OSError), os.scandir(fd) as it:
            for entry in it:
                if not entry.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.name, dir_fd=fd)
                elif (*where, entry.name) not in stuck:
                    child = entry.name
                    break
        if child is not None:
            try:
                sub = os.open(child, flags, dir_fd=fd)
            except PermissionError:
                # a directory its owner cannot read (chmod 000, as a build may leave
                # one): open it up and try once more
                try:
                    os.chmod(child, 0o700, dir_fd=fd)
                    sub = os.open(child, flags, dir_fd=fd)
                except OSError:
                    stuck.add((*where, child))
                    continue
            except OSError:
                stuck.add((*where, child))
                continue
            os.close(fd)
            fd = sub
            where.append(child)
            if writable:
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o700)
            continue
        if not where:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.rmdir(top)
            return
        parent = os.open("..", flags, dir_fd=fd)
        os.close(fd)
        fd = parent
        name = where.pop()
        try:
            os.rmdir(name, dir_fd=fd)
        except OSError:
            stuck.add((*where, name))


def fsync_dir(path: str | bytes | os.PathLike) -> None:
    """fsync a directory (makes the entries created or renamed in it durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
