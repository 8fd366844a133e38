"""Which files of a local ``path "./dir"`` source go into the store.

Rules (also in docs/recipe-language.md):

- ``.git`` directories (and ``.git`` files, as in worktrees) are always skipped;
- a ``.kilnignore`` file in the source's top directory lists patterns, one a line
  (``#`` comments, blank lines ignored). A pattern with a ``/`` matches the path relative
  to the top (``fnmatch``, ``*`` also crosses ``/``), otherwise the base name at any depth;
  a trailing ``/`` matches directories only. The ``.kilnignore`` file itself is kept.

``filtered_copy`` makes a temporary copy holding only the kept files (modes and symlinks
preserved) so any NAR hasher sees exactly them; ``fingerprint`` summarises the kept
files' metadata so the evaluation cache can tell when a source tree changed.

A copy holds what a store path may hold and nothing else, read where it lies: a
device, FIFO or socket is refused with the message the store's own ingest gives (a
character device was read until the disk was full, ``/dev/null`` copied as an empty
file); every directory and file is opened relative to its parent's descriptor without
following a symbolic link (``O_NOFOLLOW``) and must be the entry that was listed, so a
directory replaced meanwhile by a link cannot make the copy read outside the tree; and
no open waits (``O_NONBLOCK``: a FIFO put in a file's place is refused, not waited on).
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see kiln.lang)
if TYPE_CHECKING:
    from .errors import BadValue


def _patterns(root: Path) -> list[tuple[str, bool]]:
    """The ``(pattern, directories only)`` rules of ``root``'s ``.kilnignore`` (none if
    there is no such file). Raises ``BadValue`` (not located: the caller knows where the
    source was named) when the file is not UTF-8."""
    from .errors import BadValue, visible

    f = root / ".kilnignore"
    try:
        st = os.lstat(f)
    except (FileNotFoundError, NotADirectoryError):
        return []
    if stat.S_ISDIR(st.st_mode):
        return []  # (a directory of that name is just an entry)
    if not stat.S_ISREG(st.st_mode):
        # read where it lies: a symlink would read a file outside the recipe tree (and
        # let it decide what is stored), a FIFO would block
        raise BadValue(f"{visible(str(f))} must be a regular file, not a symlink or special file")
    fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = raw.count(b"\n", 0, e.start) + 1
        raise BadValue(
            f"{visible(str(f))} is not valid UTF-8 (byte 0x{raw[e.start]:02x} on line {line_no})"
        ) from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line.rstrip("/"), line.endswith("/")))
    return out


def _ignored(rel: str, is_dir: bool, patterns: list[tuple[str, bool]]) -> bool:
    base = rel.rsplit("/", 1)[-1]
    if base == ".git":
        return True
    for pat, dir_only in patterns:
        if dir_only and not is_dir:
            continue
        target = rel if "/" in pat else base
        if fnmatch.fnmatchcase(target, pat.lstrip("/")):
            return True
    return False


def kept(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """``(relative path, lstat)`` of every kept entry under ``root``, sorted."""
    patterns = _patterns(root)

    def walk(d: Path, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        for name in sorted(os.listdir(d)):
            rel = f"{prefix}{name}"
            st = os.lstat(d / name)
            is_dir = os.path.isdir(d / name) and not os.path.islink(d / name)
            if _ignored(rel, is_dir, patterns):
                continue
            yield rel, st
            if is_dir:
                yield from walk(d / name, rel + "/")

    yield from walk(root, "")


def needs_filtering(root: Path) -> bool:
    """True when some entry under ``root`` would be left out."""
    if not root.is_dir():
        return False
    if os.path.lexists(root / ".kilnignore") and not (root / ".kilnignore").is_dir():
        return True  # (a symlink or FIFO too: _patterns refuses it)
    return any(name == ".git" for _, dirs, files in os.walk(root) for name in (*dirs, *files))


#: what ``kiln.store``'s ingest calls what a store path cannot hold (``treeplan``)
_UNSTORABLE = (
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "fifo"),
)


def _unstorable(path: Path, mode: int) -> BadValue:
    """The error for an entry a store path cannot hold, worded as the store's ingest
    words it (``kiln build`` adds the same tree without a copy)."""
    from .errors import BadValue

    kind = next((k for test, k in _UNSTORABLE if test(mode)), f"file of unknown type (mode {mode:o})")
    return BadValue(
        f"{path}: is a {kind}; a store path may contain only regular files, directories and symlinks"
    )


def _changed(path: Path, what: str) -> BadValue:
    from .errors import BadValue

    return BadValue(
        f"{path}: the source changed while it was being copied ({what}); add it again once nothing "
        "is changing it"
    )


def _open_listed(name: str, dir_fd: int | None, flags: int, listed: os.stat_result, path: Path) -> int:
    """``name`` in the directory ``dir_fd`` opened with ``flags`` (plus ``O_NOFOLLOW``,
    ``O_NONBLOCK``), which must be the entry listed there as ``listed`` (same type, device
    and inode): else ``_changed``, or ``_unstorable`` for what a store path cannot hold."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.ENXIO):  # a link, gone, a socket
            raise _changed(path, f"listed, then {e.strerror or e} when opened") from None
        raise
    st = os.fstat(fd)
    if stat.S_IFMT(st.st_mode) != stat.S_IFMT(listed.st_mode) or (st.st_dev, st.st_ino) != (
        listed.st_dev,
        listed.st_ino,
    ):
        os.close(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise _unstorable(path, st.st_mode)
        raise _changed(path, "another entry when opened than when listed")
    return fd


def _copy_tree(root: Path, dest: Path, patterns: list[tuple[str, bool]]) -> None:
    """Copy the kept entries of the directory ``root`` into the existing directory
    ``dest``. Iterative, one directory open at a time (each opened by its path without
    following a link and checked to be the one its parent listed), so a tree of any
    depth needs neither deep recursion nor a descriptor per level."""
    todo: list[tuple[str, Path, os.stat_result | None]] = [("", dest, None)]  # (rel dir, its copy, listed)
    while todo:
        rel, dst_dir, listed = todo.pop()
        here = root / rel if rel else root
        if listed is None:  # the top, as given (it may be reached through a link)
            src_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)
        else:
            src_fd = _open_listed(os.fspath(here), None, os.O_RDONLY | os.O_DIRECTORY, listed, here)
        subdirs = []
        try:
            for name in sorted(os.listdir(src_fd)):
                sub = f"{rel}{name}"
                path, dst = root / sub, dst_dir / name
                st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
                mode = st.st_mode
                if _ignored(sub, stat.S_ISDIR(mode), patterns):
                    continue
                if stat.S_ISLNK(mode):
                    os.symlink(os.readlink(name, dir_fd=src_fd), dst)
                elif stat.S_ISDIR(mode):
                    dst.mkdir()
                    subdirs.append((sub + "/", dst, st))
                elif stat.S_ISREG(mode):
                    fd = _open_listed(name, src_fd, os.O_RDONLY, st, path)
                    os.set_blocking(fd, True)
                    with open(fd, "rb") as fin, open(dst, "xb") as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)
                    os.chmod(dst, stat.S_IMODE(mode))
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                else:
                    raise _unstorable(path, mode)
        finally:
            os.close(src_fd)
        todo.extend(reversed(subdirs))  # (popped in name order)


def filtered_copy(root: Path, tmp_parent: Path | None = None) -> Path:
    """A temporary directory ``<tmp>/<basename>`` with only the kept entries of the
    directory ``root`` (the module docstring says how they are read: a device, FIFO or
    socket is a ``BadValue``, worded as the store words it). The caller removes
    ``path.parent`` when done."""
    patterns = _patterns(root)
    tmp = Path(tempfile.mkdtemp(prefix="kiln-src-", dir=tmp_parent))
    dest = tmp / root.name
    try:
        dest.mkdir()
        _copy_tree(root, dest, patterns)
    except BaseException:
        # an unreadable file, a full disk or ^C must not leave a half copy behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _stat_key(st: os.stat_result) -> str:
    # ctime and inode too: ``touch -d``, ``cp -p``, ``rsync -t`` and ``tar x`` can restore
    # an mtime (and a same-size edit keeps the size), but no edit leaves ctime unchanged
    return f"{st.st_mode}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"


def fingerprint(root: Path) -> str:
    """Digest of the kept entries' names, types, modes, sizes, times, inodes and symlink
    targets. The root itself is not followed: a symlink is fingerprinted as a link (its
    target text), which is what is added to the store."""
    h = hashlib.sha256()
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode):
        h.update(f"link:{_stat_key(st)}:".encode() + os.fsencode(os.readlink(root)))
        return h.hexdigest()
    if not stat.S_ISDIR(st.st_mode):
        h.update(_stat_key(st).encode())
        return h.hexdigest()
    for rel, est in kept(root):
        h.update(f"{rel}\0{_stat_key(est)}".encode("utf-8", "surrogateescape"))
        if stat.S_ISLNK(est.st_mode):
            h.update(b"\0" + os.fsencode(os.readlink(root / rel)))
        h.update(b"\n")
    return h.hexdigest()


def make_filter(root: Path) -> Callable[[str, str], bool]:
    """A ``LocalStore.add_path`` filter ``(abs path, kind) -> keep?`` with these rules."""
    root_s = os.path.abspath(root)
    patterns = _patterns(Path(root_s)) if os.path.isdir(root_s) else []

    def keep(path: str, kind: str) -> bool:
        rel = os.path.relpath(path, root_s).replace(os.sep, "/")
        return not _ignored(rel, kind == "directory", patterns)

    return keep


def hash_only(store_dir: str) -> Callable[[Path, str], str]:
    """The default ``add_source``: the store path a source *would* get (NAR hash of the
    kept files, ``make_source_path``), without adding it anywhere."""

    def add(src: Path, name: str) -> str:
        from kiln.store.nar import hash_path
        from kiln.store.paths import make_source_path

        copy = filtered_copy(src) if needs_filtering(src) else None
        try:
            h, _ = hash_path(copy if copy is not None else src)
        finally:
            if copy is not None:
                shutil.rmtree(copy.parent)
        return str(make_source_path(name, h, store_dir=store_dir))

    return add
