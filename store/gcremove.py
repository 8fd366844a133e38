"""Removing what GC collects, and sizing it for the report (``gc``).

What GC deletes leaves its place under the exclusive GC lock and is deleted after the
lock is released (``Trash``), so a store writer or build waits for GC's decisions and
renames, O(1) per entry, not for its unlinks, O(files):

- under the lock, each dead tree, unused object, unneeded attestation directory and
  stale writer's ``tmp/<pid>-<rand>`` entry is *renamed* into this GC's own
  ``tmp/gc-<pid>-<rand>/`` (same file system: atomic), where no other process looks
  for anything; a leftover directory with an owner lock (``build-*``, ``check-*``,
  ``vary-*``, a dead GC's ``gc-*``: see ``buildtmp``) whose owner is gone is *adopted*
  instead: GC takes its lock and keeps it until the directory is gone;
- after the lock is released, the trash and the adopted directories are deleted.

The trash directory is ``flock``ed by its GC from creation (under the exclusive lock)
until it is gone, exactly as a build dir is by its build: another GC leaves a running
GC's trash alone, and adopts and deletes one whose GC was killed (kill -9) before it
finished. A name is never reused, so nothing another process writes can end up there.

What this user cannot remove is found before any row is deleted (``inspect_tree``: a
directory in it that another user owns, as after ``sudo -E kiln build`` wrote into this
user's store), so its row is kept and it is never moved. A rename that fails leaves the
entry where it was (a tree is then unregistered, for a later GC); a removal that fails
in the trash is reported and left there, for the next GC, which adopts the trash.
Neither stops the collection.

Sizes. What goes is measured before it moves, for the report (``Sizes``): the apparent
size (regular files' ``st_size``) and the blocks freed on disk (``st_blocks * 512`` of
every entry; a file with other hard links only when all its links are in the same
entry, as its blocks are freed only then). Neither is ever a reason to stop: what
cannot be read counts 0.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .buildtmp import owned_tmpdir
from .errors import StoreError
from .mounts import mounts_below
from .perms import owner_text
from .trees import remove_tree


@dataclass(frozen=True, slots=True)
class Sizes:
    """What deleting an entry frees, for the report: ``apparent``, the bytes of its regular
    files (``st_size``, what ``du --apparent-size`` counts); ``disk``, the blocks of all its
    entries, directories and symlinks included (``st_blocks * 512``, what ``du`` counts):
    what the file system gets back. A sparse file is large and frees little; a tree of
    tiny files frees a block each. A file with other hard links counts on disk only when
    every link is in the same entry (else its blocks stay in use)."""

    apparent: int = 0
    disk: int = 0

    def __add__(self, other: Sizes) -> Sizes:
        return Sizes(self.apparent + other.apparent, self.disk + other.disk)


def total(sizes: Iterable[Sizes]) -> Sizes:
    """The sum of ``sizes``."""
    return sum(sizes, Sizes())


class _Tally:
    """Adds up one entry's ``Sizes`` stat by stat (its hard-linked files' links counted)."""

    def __init__(self) -> None:
        self.apparent = 0
        self.disk = 0
        self._links: dict[tuple[int, int], int] = {}  # (dev, inode) -> links seen

    def add(self, st: os.stat_result) -> None:
        if stat.S_ISREG(st.st_mode):
            self.apparent += st.st_size
        if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            self.disk += st.st_blocks * 512
            return
        key = (st.st_dev, st.st_ino)
        seen = self._links[key] = self._links.get(key, 0) + 1
        if seen == st.st_nlink:  # its last link: its blocks go with this entry
            self.disk += st.st_blocks * 512

    def sizes(self) -> Sizes:
        return Sizes(self.apparent, self.disk)


def _measure(p: Path, euid: int | None, skip: frozenset[bytes] = frozenset()) -> tuple[Sizes, str | None]:
    """``Sizes`` of ``p`` and, when ``euid`` is given, why this user cannot remove it (see
    ``inspect_tree``). Not descending into the directories in ``skip`` (full paths, as ``p``
    spells them). What cannot be read counts 0."""
    b = os.fsencode(p)
    try:
        st = os.lstat(b)
    except OSError:
        return Sizes(), None
    tally = _Tally()
    tally.add(st)
    if not stat.S_ISDIR(st.st_mode):
        return tally.sizes(), None
    if euid is not None and euid != 0 and st.st_uid != euid:
        return Sizes(), owner_text(st.st_uid)
    todo = [b]
    while todo:  # (iterative: a tree may be deeper than the recursion limit)
        try:
            with os.scandir(todo.pop()) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            try:
                s = e.stat(follow_symlinks=False)
            except OSError:
                continue
            tally.add(s)
            if stat.S_ISDIR(s.st_mode):
                if euid is not None and euid != 0 and s.st_uid != euid:
                    return Sizes(), f"{os.fsdecode(e.path)} in it is {owner_text(s.st_uid)}"
                if e.path not in skip:
                    todo.append(e.path)
    return tally.sizes(), None


def inspect_tree(p: Path, euid: int) -> tuple[Sizes, str | None]:
    """What removing ``p`` frees (``Sizes``), and why this user cannot remove it (``None``:
    it can): a directory in it that another user owns (``euid`` 0, root, removes
    anything; the sizes are then empty). What cannot be read counts 0 bytes and no
    reason: the removal tries (and opens up what is ours), and a failure there is
    reported then."""
    return _measure(p, euid)


def remove(p: Path) -> str | None:
    """Remove ``p`` (``trees.remove_tree``); why it could not, or None."""
    try:
        remove_tree(p)
    except OSError as e:
        return f"could not be removed: {e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    except StoreError as e:
        return str(e)
    return None


def size_beside_mounts(p: Path, table: bytes) -> Sizes:
    """``size`` of ``p`` without what is mounted below it (a dry run leaves a killed
    rebuild's disorderfs mounts up: through them its real files would count twice).
    Walked resolved, as mountinfo names the mount points (a KILN_HOME under a symlink)."""
    return size(Path(os.path.realpath(p)), frozenset(os.fsencode(m) for m, _ in mounts_below(p, table)))


def size(p: Path, skip: frozenset[bytes] = frozenset()) -> Sizes:
    """``Sizes`` of ``p`` for the report, not descending into ``skip`` (full paths); 0
    where it cannot be read (a leftover a build made unreadable): a size is never a
    reason to stop collecting."""
    return _measure(p, None, skip)[0]


#: what ``Trash.empty`` reports as it goes: (entries removed, entries in all)
Progress = Callable[[int, int], None]


class Trash:
    """One collection's ``tmp/gc-<pid>-<rand>/`` and the leftover directories it adopted
    (see the module docstring). Make it, ``move``/``adopt`` under the exclusive GC lock,
    then ``empty`` it after the lock is released; ``close`` (always) drops the locks that
    ``empty`` did not, so whatever is left is a dead GC's leftover for the next one."""

    def __init__(self, tmp: Path) -> None:
        self.dir, fd = owned_tmpdir(tmp, f"gc-{os.getpid()}-", None)
        self._fd: int | None = fd  # holds the trash's lock; None once closed
        self._moved: list[tuple[Path, str]] = []  # (its name in here, what to report it as)
        self._adopted: dict[str, int] = {}  # leftover dir -> the fd holding its lock

    def move(self, p: Path, label: str | None = None) -> str | None:
        """Rename ``p`` (a tree, file or directory; missing is fine) into the trash; why
        it could not, or None. ``label`` names it in what ``empty`` reports."""
        dest = self.dir / str(len(self._moved))
        try:
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o700 != 0o700:
                # renaming a directory to another parent needs write access to it (``..``)
                os.chmod(p, stat.S_IMODE(st.st_mode) | 0o700)
            os.rename(p, dest)
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"could not be removed: {e.strerror or e}"
        self._moved.append((dest, label or str(p)))
        return None

    def adopt(self, d: str) -> bool:
        """Take the owner lock of the leftover directory ``d`` and keep it (True), or
        leave ``d`` alone: its owner (a build, a running GC) is alive, or it is gone."""
        if d == str(self.dir):
            return False
        from .buildtmp import take_if_owner_gone

        fd = take_if_owner_gone(d)
        if fd is None:
            return False
        self._adopted[d] = fd
        return True

    def disown(self, d: str) -> None:
        """Give up the adopted ``d`` (kept after all: a mount on it stays)."""
        if (fd := self._adopted.pop(d, None)) is not None:
            os.close(fd)

    def empty(self, progress: Progress | None = None) -> list[str]:
        """Delete everything moved into the trash, then the adopted directories, then the
        trash itself (call without the GC lock); what could not be removed, each with why
        (left where it is, for the next GC). ``progress`` is told after each entry."""
        kept: list[str] = []
        total, done = len(self._moved) + len(self._adopted), 0
        for dest, label in self._moved:
            if (why := remove(dest)) is not None:
                kept.append(f"{label}: {why} (left in {self.dir} for a later GC)")
            done += 1
            if progress is not None:
                progress(done, total)
        for d in list(self._adopted):
            if (why := remove(Path(d))) is not None:
                kept.append(f"{d}: {why}")
            self.disown(d)
            done += 1
            if progress is not None:
                progress(done, total)
        self.close()
        return kept

    def close(self) -> None:
        """Remove the trash if it is empty and drop every lock still held (idempotent)."""
        for d in list(self._adopted):
            self.disown(d)
        if self._fd is not None:
            # (unless something is still in it: left for the next GC, which adopts it)
            with contextlib.suppress(OSError):
                os.rmdir(self.dir)
            # (cleared before it is closed: an interrupt in between must not leave a number
            # that a later close() would close again, by then maybe another file's)
            fd, self._fd = self._fd, None
            os.close(fd)
