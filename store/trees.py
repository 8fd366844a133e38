"""Materialised store trees: canonical metadata, checks and removal.

A materialised tree is read-only and canonical: regular files 0444 (0555 when the
owner-execute bit was set), directories 0555, symlinks as they are, every mtime 1, no
setuid/setgid/sticky bits, nothing but files, directories and symlinks, no extended
attribute (a POSIX ACL is one) but those ``outputcanon`` keeps: the NAR records none.
The top directory is left writable while a tree is prepared in ``tmp/`` (renaming a
directory to another parent needs write permission on it for ``..``) and made 0555
right after the rename into the store directory.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import AnyStr, Literal

from .errors import StoreError
from .nar_restore import rmtree_iter
from .objects import CANON_MTIME

_MTIME = (CANON_MTIME, CANON_MTIME)
#: extended attributes a store tree may keep (as Nix's canonicalisePathMetaData);
#: ``outputcanon`` strips every other one from a build output
KEEP_XATTRS = ("security.selinux", "system.nfs4_acl")


def walk(top: AnyStr, topdown: bool = True) -> Iterator[tuple[AnyStr, list[AnyStr], list[AnyStr]]]:
    """``os.walk`` without recursion (Python 3.11's recurses, so a tree deeper than the
    recursion limit, which a NAR may hold, raised ``RecursionError`` in every walker) and
    without hiding errors (``os.walk`` skips a directory it cannot list; here that raises,
    so canonicalising or scanning never silently misses part of a tree). Same listing
    rules: a symlink to a directory is listed among the directories but not entered;
    with ``topdown`` the caller may reorder or prune ``dirnames`` in place."""
    todo: list[tuple[AnyStr, tuple[list[AnyStr], list[AnyStr]] | None]] = [(top, None)]
    while todo:
        d, listing = todo.pop()
        if listing is not None:  # bottom-up: its subdirectories are done
            yield d, listing[0], listing[1]
            continue
        dirs: list[AnyStr] = []
        files: list[AnyStr] = []
        with os.scandir(d) as it:
            for e in it:
                try:
                    is_dir = e.is_dir()
                except OSError:  # a symlink loop (ELOOP): not a directory, as for os.walk
                    is_dir = False
                (dirs if is_dir else files).append(e.name)
        if topdown:
            yield d, dirs, files
        else:
            todo.append((d, (dirs, files)))
        for name in reversed(dirs):
            sub = os.path.join(d, name)
            if not os.path.islink(sub):
                todo.append((sub, None))


def canonicalise(top: Path, keep_top_writable: bool = True) -> None:
    """Give a freshly restored tree canonical modes and mtimes (bottom-up, so setting a
    directory's mtime is not undone by changes to its entries)."""
    t = os.fsencode(top)
    st = os.lstat(t)
    if stat.S_ISDIR(st.st_mode):
        for dirpath, dirnames, filenames in walk(t, topdown=False):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                p = os.path.join(dirpath, name)
                canon_leaf(p, os.lstat(p))
            for name in dirnames:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    os.chmod(p, 0o555)
                    os.utime(p, _MTIME)
        os.chmod(t, 0o755 if keep_top_writable else 0o555)
        os.utime(t, _MTIME)
    else:
        canon_leaf(t, st)


def open_up(top: Path) -> None:
    """Give the owner read (and, on directories, write and search) access to everything
    in a build output, so it can be scanned, archived and removed when the build left
    directories or files without them (``chmod 000``): as root that does not matter, as
    any other user every walk of the tree would fail. Top-down, so each directory is
    opened before it is listed; symlinks are not followed."""
    t = os.fsencode(top)
    st = os.lstat(t)
    if stat.S_ISLNK(st.st_mode):
        return
    if not stat.S_ISDIR(st.st_mode):
        if st.st_mode & 0o400 == 0:
            os.chmod(t, stat.S_IMODE(st.st_mode) | 0o600)
        return
    stack = [t]
    while stack:
        d = stack.pop()
        dst = os.lstat(d)
        if dst.st_mode & 0o700 != 0o700:
            os.chmod(d, stat.S_IMODE(dst.st_mode) | 0o700)
        with os.scandir(d) as it:
            for e in it:
                est = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(est.st_mode):
                    stack.append(os.fsencode(e.path))
                elif stat.S_ISREG(est.st_mode) and est.st_mode & 0o400 == 0:
                    os.chmod(e.path, stat.S_IMODE(est.st_mode) | 0o600)


def canon_leaf(p: AnyStr, st: os.stat_result) -> None:
    """Canonical mode (files) and mtime (everything) for one non-directory entry."""
    if stat.S_ISREG(st.st_mode):
        os.chmod(p, 0o555 if st.st_mode & stat.S_IXUSR else 0o444)
    os.utime(p, _MTIME, follow_symlinks=False)


def move_into_place(tree: Path, real: Path, aside: Path) -> None:
    """Rename ``tree`` to ``real`` (its path in the store dir) and seal it. Whatever is
    at ``real`` already is an unregistered leftover of a crashed registration (the
    caller holds the path's registration lock and checked there is no row): it is moved
    to ``aside`` first, for its owner's temp dir cleanup."""
    if os.path.lexists(real):
        if os.path.isdir(real) and not os.path.islink(real):
            os.chmod(real, 0o755)  # renaming a directory needs write access to it
        os.rename(real, aside)
    os.rename(tree, real)
    seal_top(real)


def seal_top(top: Path) -> None:
    """Make the top directory of a tree read-only (after its final rename)."""
    st = os.lstat(top)
    if stat.S_ISDIR(st.st_mode):
        os.chmod(top, 0o555)
        os.utime(top, _MTIME)


def metadata_problems(top: Path, limit: int = 5) -> list[str]:
    """Deviations from canonical metadata (mode, mtime, file type, an extended attribute
    such as a POSIX ACL that canonicalisation removes), at most ``limit``."""

    out: list[str] = []

    def check(p: bytes, st: os.stat_result) -> None:
        m = st.st_mode
        rel = os.fsdecode(p[len(t) :]) or "/"
        if stat.S_ISLNK(m):
            ok_mode = True
        elif stat.S_ISREG(m):
            ok_mode = stat.S_IMODE(m) in (0o444, 0o555)
        elif stat.S_ISDIR(m):
            ok_mode = stat.S_IMODE(m) == 0o555
        else:
            out.append(f"{rel}: not a file, directory or symlink (mode {m:o})")
            return
        if not ok_mode:
            out.append(f"{rel}: mode {stat.S_IMODE(m):04o} is not canonical")
        if int(st.st_mtime) != CANON_MTIME:
            out.append(f"{rel}: mtime {int(st.st_mtime)} is not {CANON_MTIME}")
        if extra := [n for n in _xattrs(p) if n not in KEEP_XATTRS]:
            out.append(
                f"{rel}: extended attributes {', '.join(extra)} (an ACL or xattr the NAR does not record)"
            )

    t = os.fsencode(top)
    check(t, os.lstat(t))
    if os.path.isdir(t) and not os.path.islink(t):
        for dirpath, dirnames, filenames in walk(t):
            for name in dirnames + filenames:
                if len(out) >= limit:
                    return out
                p = os.path.join(dirpath, name)
                check(p, os.lstat(p))
    return out[:limit]


def _xattrs(p: bytes) -> list[str]:
    """The names of the extended attributes of ``p`` itself (none where unsupported)."""
    try:
        return os.listxattr(p, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise


def remove_tree(p: Path) -> None:
    """Delete a (read-only) tree or file; missing is fine."""
    b = os.fsencode(p)
    try:
        st = os.lstat(b)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(b)
        return
    # iterative: a tree deeper than Python's recursion limit (shutil.rmtree, os.walk)
    # must not make the collector itself fail on every later run
    rmtree_iter(b, writable=True)
    if os.path.lexists(b):
        raise StoreError(f"could not remove all of {p}")


def tree_size(p: Path, skip: frozenset[bytes] = frozenset()) -> int:
    """Bytes used by regular files under ``p`` (apparent size), not descending into the
    directories in ``skip`` (full paths, as ``p`` spells them)."""
    b = os.fsencode(p)
    st = os.lstat(b)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    total = 0
    for dirpath, dirnames, filenames in walk(b):
        if skip:
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for f in filenames:
            s = os.lstat(os.path.join(dirpath, f))
            if stat.S_ISREG(s.st_mode):
                total += s.st_size
    return total


#: libc's ``renameat2`` once looked up (False: it has none); ctypes is imported on first use
_renameat2: Callable[..., int] | Literal[False] | None = None


def exchange(a: Path, b: Path) -> None:
    """Swap the entries ``a`` and ``b`` (in the same directory, so directories need no
    write access) with ``renameat2(RENAME_EXCHANGE)``: ``b`` is never missing, even if
    the process dies. Where the kernel or libc lacks it: three renames (``b`` is then
    briefly missing)."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):
            _renameat2 = False
    if _renameat2:
        import ctypes

        at_fdcwd, rename_exchange = -100, 2
        if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(b))
    parked = a.with_name(a.name + ".x")
    os.rename(b, parked)
    os.rename(a, b)
    os.rename(parked, a)


def _write_canonical_file(p: bytes, pieces: Iterable[bytes | memoryview], executable: bool) -> None:
    """Create regular file ``p`` (it must not exist) from ``pieces``, mode 0555/0444 set
    explicitly (umask-proof), mtime 1."""
    from .nar_restore import write_all

    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for piece in pieces:
            write_all(fd, piece)
        os.fchmod(fd, 0o555 if executable else 0o444)
        os.utime(fd, _MTIME)
    finally:
        os.close(fd)


def restore_canonical(chunks: Iterable[bytes], dest: Path) -> None:
    """Materialise the NAR in ``chunks`` at ``dest`` (which must not exist, in a private
    temp dir) directly in canonical form: files 0444/0555, directories 0555 except the
    top (0755, see ``seal_top``), every mtime 1 — one pass, no separate
    ``canonicalise`` walk. On error a partial tree may remain at ``dest``; the caller
    owns the temp dir and removes it. The NAR is validated as it is read
    (``FormatError``); iterating ``chunks`` to the end runs its own digest checks."""
    from .nar_read import _Input, _parse, single_file  # the store's NAR parser, without restore's temp dir

    top = os.fsencode(dest)
    if isinstance(chunks, list) and len(chunks) == 1 and (one := single_file(chunks[0])) is not None:
        # the whole NAR in memory and it is one regular file: no tokenizer needed
        executable, contents = one
        _write_canonical_file(top, [contents], executable)
        return
    inp = _Input(chunks)
    dirs: list[bytes] = []
    for e in _parse(inp):
        p = os.path.join(top, os.fsencode(e.path)) if e.path else top
        if e.type == "directory":
            os.mkdir(p, 0o755)
            dirs.append(p)
        elif e.type == "symlink":
            os.symlink(os.fsencode(e.target or ""), p)
            os.utime(p, _MTIME, follow_symlinks=False)
        else:
            _write_canonical_file(p, inp.chunks(e.size, f"contents of {e.path!r}"), e.type == "executable")
    for d in reversed(dirs):  # children before parents, so their mtimes stick
        os.chmod(d, 0o755 if d == top else 0o555)
        os.utime(d, _MTIME)


_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def mark_topdir(d: Path) -> bool:
    """Give directory ``d`` the ``T`` attribute (``chattr +T``, ``FS_TOPDIR_FL``) if it
    lacks it: ext4's Orlov allocator then spreads ``d``'s subdirectories over block
    groups with many free inodes instead of packing them next to ``d``. Why it matters
    here: ext4 skips inodes freed in the last minutes when it allocates one, one buffer
    lookup per skipped inode, so creating files in a group where thousands were just
    deleted (every test, benchmark or GC run deletes thousands in ``tmp/``) costs up to
    ~0.2 ms per file instead of ~0.03 ms. A hint only: returns False, changing nothing,
    where the file system or the kernel does not support it."""
    import array
    import fcntl

    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        buf = array.array("l", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
        if buf[0] & _FS_TOPDIR_FL:
            return True
        buf[0] |= _FS_TOPDIR_FL
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, buf, True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
