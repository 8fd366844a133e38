"""The state of the file system under a store: read-only, or how many bytes are free.

One ``statvfs`` answers every question kiln asks before it explains a failed write or
a failed database open (``db``), keeps or restores its reserved space (``reserve``),
or adds a hint to an error (``kiln.common``): so they all count free space the same
way (``f_bavail``: what this user may still write, not what root could).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: below this many free bytes, a failed write or database open is put down to a full disk
LOW_SPACE = 1 << 20


@dataclass(frozen=True, slots=True)
class FsState:
    """What ``statvfs`` said of one file system."""

    read_only: bool
    #: bytes this user may still write (0 on a read-only file system)
    free: int

    def full(self, below: int = LOW_SPACE) -> bool:
        """Writable but with fewer than ``below`` bytes free."""
        return not self.read_only and self.free < below


def state_of(path: str | os.PathLike[str]) -> FsState | None:
    """The state of the file system holding ``path`` (None: ``statvfs`` failed, e.g. the
    path is gone)."""
    try:
        st = os.statvfs(Path(path))
    except OSError:
        return None
    read_only = bool(st.f_flag & os.ST_RDONLY)
    return FsState(read_only, 0 if read_only else st.f_bavail * st.f_frsize)


def on_read_only_fs(path: str | os.PathLike[str]) -> bool:
    """Whether the file system holding ``path`` is mounted read-only (False if it cannot
    be told)."""
    state = state_of(path)
    return state is not None and state.read_only


def why_refused(path: Path, state: FsState | None) -> str:
    """Why the file system holding ``path`` (in ``state``) may refuse SQLite's files (its
    ``-wal`` and ``-shm`` are made at every open): ``" (the file system ... is
    read-only)"``, ``" (... is full: N bytes free ...)"``, ``" (this user ... cannot write in
    ...)"`` (another user's store, an immutable directory: SQLite's "attempt to write a
    readonly database" said nothing of that), or ``""``. When the store holds
    reserved space (``reserve``), it says that ``kiln store gc`` can run: it deletes that
    first."""
    if state is None:
        return ""
    if state.read_only:
        return f" (the file system holding {path.parent} is read-only)"
    if not os.access(path.parent, os.W_OK):
        try:
            owner = os.stat(path.parent).st_uid
        except OSError:
            owner = os.geteuid()
        whose = (
            f"it belongs to uid {owner}; open the store as its owner"
            if owner != os.geteuid()
            else "its mode or attributes (chattr +i) forbid it"
        )
        return (
            f" (this user, uid {os.geteuid()}, cannot write in {path.parent}, where SQLite makes the "
            f"database's -wal and -shm at every open: {whose})"
        )
    if state.full():
        from .reserve import held

        gc = ""
        if (kept := held(path.parent)) > 0:
            gc = (
                f"; 'kiln store gc' can run, as it first releases the {kept:,} bytes the store keeps "
                f"in reserve ({path.parent / 'reserved'}) for it"
            )
        return (
            f" (the file system holding {path.parent} is full: {state.free:,} bytes free; free some "
            f"space and run the command again{gc})"
        )
    return ""
