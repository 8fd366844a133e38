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

import os
import queue
import resource
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import StoreError
from .objects import CANON_MTIME

#: filter(path, kind) -> keep?; kind is "regular", "directory" or "symlink"
PathFilter = Callable[[str, str], bool]


def list_dir(path: bytes, filter: PathFilter | None) -> list[tuple[bytes, os.stat_result]]:
    """Entries of directory ``path`` in NAR order (by name bytes), filtered."""
    out = []
    for name in sorted(os.listdir(path)):
        child = path + b"/" + name
        cst = os.lstat(child)
        if filter is None or filter(os.fsdecode(child), _filter_kind(cst.st_mode)):
            out.append((name, cst))
    return out


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


def unstorable(path: bytes, mode: int) -> StoreError:
    return StoreError(
        f"{os.fsdecode(path)}: is a {_kind_name(mode)}; a store path may contain only regular files, "
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
                self.targets[path] = os.readlink(path)
                yield LNK, path, dest
            elif stat.S_ISDIR(mode):
                kids = self.children[path] = list_dir(path, self.filter)
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
