"""The tree side of an ingest with a copy: listing the source as the walk will visit it
(``Plan``) and making the copy's directories, empty files and symlinks ahead of the walk
on a thread (``Creator``), file creation being the costliest kernel work of an ingest.

Invariants
----------
- ``Plan.nodes`` yields the tree in pre-order with entries sorted by name bytes (NAR
  order), after recording a directory's listing or a symlink's target; the walk reads
  those only after taking that node from the creator, so both follow one listing even if
  the source changes meanwhile.
- The creator hands over exactly one item per node, in that order: an open descriptor
  for a file, None otherwise, or the exception that stopped it.
- At most ``depth`` items wait (descriptors stay bounded, see ``Creator``).
"""

from __future__ import annotations

import errno
import os
import queue
import resource
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import StoreError
from .nar import kind_name
from .objects import CANON_MTIME

#: filter(path, kind) -> keep?; kind is "regular", "directory" or "symlink"
PathFilter = Callable[[str, str], bool]


def list_dir(
    path: bytes, st: os.stat_result, filter: PathFilter | None
) -> list[tuple[bytes, os.stat_result]]:
    r"""Entries of directory ``path`` in NAR order (by name bytes), filtered; ``st`` is its
    ``lstat`` from its parent's listing. The directory is opened without following a
    symbolic link and must be that same directory (``changed``): one replaced meanwhile
    by a symbolic link to a directory elsewhere is not listed, nor what it points to
    copied. Its entries are ``lstat``\ ed relative to it (one gone by then: ``changed``)."""
    fd, _ = open_listed(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, st)
    try:
        out = []
        for name in sorted(map(os.fsencode, os.listdir(fd))):  # (str names from a descriptor)
            try:
                cst = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise changed(path + b"/" + name, "listed, then gone") from None
            if filter is None or filter(os.fsdecode(path + b"/" + name), _filter_kind(cst.st_mode)):
                out.append((name, cst))
        return out
    finally:
        os.close(fd)


def read_link(path: bytes, st: os.stat_result) -> bytes:
    """The target of the symbolic link ``path`` whose ``lstat`` (from its parent's
    listing) is ``st``: read from the link itself, opened without following it, so a
    directory on the way replaced meanwhile cannot make it another link's target."""
    fd, _ = open_listed(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, st)
    try:
        return os.readlink(b"", dir_fd=fd)
    finally:
        os.close(fd)


def open_listed(path: bytes, flags: int, listed: os.stat_result) -> tuple[int, os.stat_result]:
    """``os.open(path, flags)`` (``flags`` with ``O_NOFOLLOW``, and ``O_NONBLOCK`` for a
    read: a FIFO put there must not block) of the node whose ``lstat`` from its
    directory's listing is ``listed``, checked to be that node (``check_same``); returns
    the descriptor and its ``fstat``. An entry gone or replaced by a symbolic link or a
    socket meanwhile is ``changed`` too."""
    try:
        fd = os.open(path, flags)
    except OSError as e:
        # (ENXIO: a socket, which cannot be opened, put in its place)
        if e.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            raise
        try:
            now = os.lstat(path)
        except OSError:
            raise changed(path, f"a {kind_name(listed.st_mode)} when listed, gone when opened") from None
        check_same(path, now, listed)
        raise  # (the same node after all: the error is its own)
    try:
        now = os.fstat(fd)
        check_same(path, now, listed)
    except BaseException:
        os.close(fd)
        raise
    return fd, now


def check_same(path: bytes, now: os.stat_result, listed: os.stat_result) -> None:
    """Raise ``changed`` unless ``now`` (an ``fstat`` of what was opened at ``path``) is
    the file system node ``listed`` (its ``lstat`` when its directory was listed), of the
    same kind: else the source changed in between (an entry replaced, a directory on the
    way swapped for a symbolic link)."""
    if (now.st_dev, now.st_ino) != (listed.st_dev, listed.st_ino) or stat.S_IFMT(now.st_mode) != stat.S_IFMT(
        listed.st_mode
    ):
        was, found = kind_name(listed.st_mode), kind_name(now.st_mode)
        what = (
            f"a {was} when listed, now a {found}" if was != found else f"another {found} than the one listed"
        )
        raise changed(path, f"replaced while being read: {what}")


def changed(path: bytes, what: str) -> StoreError:
    """The error for a source that changed under the walk (``what``: how); ``path``
    shown escaped, as in ``unstorable``."""
    from .shownname import shown_name

    return StoreError(
        f"{shown_name(path)}: the source changed while it was being added ({what}); add it again "
        "once nothing is changing it"
    )


def left_out(src: str | os.PathLike, real_src: str, below: str, filter: PathFilter, last_kind: str) -> bool:
    """Whether walking the tree ``src`` (real path ``real_src``) down to ``below`` (a real
    path under it), ``filter`` leaves out a component on the way. The walker hands the
    filter paths spelled from ``src``; every component is a directory but the last,
    which is ``last_kind``. ``below`` being ``real_src`` itself leaves nothing out: the
    filter never judges the top of the walk."""
    walked = os.fspath(src)
    parts = Path(os.path.relpath(below, real_src)).parts  # () for src itself (str.split gave ".")
    for k, part in enumerate(parts):
        walked = os.path.join(walked, part)
        if not filter(walked, last_kind if k == len(parts) - 1 else "directory"):
            return True
    return False


def check_source(src: Path, filter: PathFilter | None, root: Path, copies: Path) -> None:
    """Refuse a missing ``src`` (to copy into the store at ``root``) or one whose walk would
    reach ``copies``, the store's ``tmp/`` where the copy is made: the root or ``tmp/``
    itself (unless ``filter`` skips a directory on the way to the root, e.g. a
    ``.kilnignore``d ``.kiln``). The last component is not resolved: a symlink is added as
    a symlink, never followed."""
    if not os.path.lexists(src):
        raise StoreError(f"cannot add {src}: no such file or directory")
    a = os.path.abspath(src)
    here = os.path.join(os.path.realpath(os.path.dirname(a)), os.path.basename(a))
    real_root = os.path.realpath(root)
    real_copies = os.path.realpath(copies)
    if os.path.isdir(here) and not os.path.islink(here) and os.path.commonpath([here, real_copies]) == here:
        if os.path.commonpath([here, real_root]) != here:  # inside the store, around tmp/
            raise StoreError(
                f"cannot add {src}: it contains the store's temp directory {real_copies}, where its copy "
                "would be made (expected a file or directory outside the store)"
            )
        if filter is not None and left_out(src, here, real_root, filter, "directory"):
            return
        raise StoreError(
            f"cannot add {src}: it contains the store root {real_root} (expected a file or directory "
            "outside the store: its copy would be made inside the directory being copied)"
        )


def unstorable(path: bytes, mode: int) -> StoreError:
    """The refusal of ``path``, a file of ``mode``'s kind, which no store path may hold.
    Its name is whoever made the tree's (a build's): shown escaped, a newline in it as
    ``\\n`` (``shownname``; imported here, on the error path only)."""
    from .shownname import shown_name

    return StoreError(
        f"{shown_name(path)}: is a {kind_name(mode)}; a store path may contain only regular files, "
        "directories and symlinks"
    )


class Plan:
    """The source tree listed once, in walk (pre-)order, by the creator as it goes
    (``nodes``): what to create where, the filtered directory listings and the symlink
    targets. The archiving walk reads a directory's listing or a symlink's target only
    after taking that node from the creator, so both follow the same listing even if
    the source changes meanwhile, and the listing is not a serial step before the
    pipeline starts."""

    def __init__(self, filter: PathFilter | None, root: tuple[bytes, os.stat_result, bytes]) -> None:
        self.filter = filter
        self.root = root  # (source, lstat, dest)
        self.children: dict[bytes, list[tuple[bytes, os.stat_result]]] = {}
        self.targets: dict[bytes, bytes] = {}
        self.creator: Creator

    def nodes(self) -> Iterator[tuple[int, bytes, bytes]]:
        """``(kind, source, dest)`` in pre-order, each listed (or its target read) before
        it is yielded; raises for a file a store path cannot hold."""
        todo = [self.root]  # iterative pre-order (trees may be very deep)
        while todo:
            path, st, dest = todo.pop()
            mode = st.st_mode
            if stat.S_ISREG(mode):
                yield REG, path, dest
            elif stat.S_ISLNK(mode):
                self.targets[path] = read_link(path, st)
                yield LNK, path, dest
            elif stat.S_ISDIR(mode):
                kids = self.children[path] = list_dir(path, st, self.filter)
                for name, cst in reversed(kids):  # popped in NAR order
                    todo.append((path + b"/" + name, cst, dest + b"/" + name))
                yield DIRK, path, dest
            else:
                raise unstorable(path, mode)


REG, DIRK, LNK = 0, 1, 2
LOOKAHEAD = 256  # files the creator may have open ahead of the copying walk


class Creator(threading.Thread):
    """Creates the plan's directories, (empty) files and symlinks in order and hands the
    walk one item per node through a FIFO: an open descriptor for a file, None otherwise,
    or the exception that stopped it. At most ``depth`` items wait in it (descriptors
    stay bounded): the creator then sleeps until the walk has taken half of them, so the
    two threads meet once per ``depth / 2`` files rather than on every one (a
    ``queue.Queue`` handing over each item cost more CPU than creating the file)."""

    def __init__(self, plan: Plan) -> None:
        super().__init__(daemon=True)
        self.plan = plan
        plan.creator = self
        # keep well inside the descriptor limit: up to ``depth`` descriptors wait here and
        # as many more in the copy writer (which is given the same bound), so a quarter
        # of the limit in all
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        depth = LOOKAHEAD if soft == resource.RLIM_INFINITY else max(1, min(LOOKAHEAD, soft // 8))
        self.depth = depth
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.made = 0  # items put (creator thread only)
        self.taken = 0  # items taken (walk only)
        self.waiting = False
        self.room = threading.Condition()
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            for kind, path, dest in self.plan.nodes():
                if self.halt.is_set():
                    return
                if kind == REG:
                    item = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                elif kind == DIRK:
                    os.mkdir(dest, 0o700)
                    item = None
                else:
                    os.symlink(self.plan.targets[path], dest)
                    os.utime(dest, (CANON_MTIME, CANON_MTIME), follow_symlinks=False)
                    item = None
                self.q.put(item)
                self.made += 1
                if self.made - self.taken >= self.depth:
                    with self.room:
                        self.waiting = True
                        self.room.wait_for(
                            lambda: self.made - self.taken <= self.depth // 2 or self.halt.is_set()
                        )
                        self.waiting = False
        except BaseException as e:  # noqa: BLE001 - handed to the walk
            self.q.put(e)

    def take(self) -> int | None:
        item = self.q.get()
        self.taken += 1
        # ``taken`` moves before ``waiting`` is read; the creator sets ``waiting`` and then
        # re-checks under the lock, so a wake-up is never lost
        if self.waiting and self.made - self.taken <= self.depth // 2:
            with self.room:
                self.room.notify()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """Stop early (on error) and close whatever was created but not taken."""
        self.halt.set()
        with self.room:
            self.room.notify()
        while self.is_alive():
            self._drain()  # unblocks a full queue; the thread then sees ``halt`` and ends
            self.join(0.002)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, int):
                os.close(item)


def _filter_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "regular" if stat.S_ISREG(mode) else "unknown"
