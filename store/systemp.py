"""Scratch directories in the system's temp directory that a killed kiln does not leave
behind for ever.

Some work has no store or registry of its own to keep scratch in: ``kiln prefetch``'s
download, ``kiln copy``'s spool, a server's review of a path through a temporary store
(``registry.admission.verify_remote``). ``tempfile.TemporaryDirectory`` removes its
directory when the process ends normally, on an exception or on SIGTERM (kiln turns it
into an unwinding interrupt), but not after ``kill -9``, an OOM kill or a power cut:
then hundreds of megabytes stay in ``$TMPDIR`` until the system's cleaner, if any.

``owned_tmpdir(what)`` makes ``$TMPDIR/kiln-owned-<what>-<random>`` (0700, no ACL) and
holds an exclusive ``flock`` on it (``store.buildtmp.owned_tmpdir``) until it is removed;
the kernel drops the lock when the process dies, however it dies. Every call first
sweeps: it removes each ``kiln-owned-*`` directory of this user whose lock it can take
(its owner is gone). Invariants:

- a directory whose owner runs is never removed (it holds the lock from the moment the
  directory exists, and a sweep removes only what it holds the lock of);
- only this prefix is swept (older kiln made ``kiln-copy-*`` and such without a lock:
  they are left alone), only directories (never a symbolic link: ``O_NOFOLLOW``), and
  only this user's (``/tmp`` is shared; another user's are none of ours).

Where ``flock`` is not exact (a ``$TMPDIR`` on NFS: rare, and a lock held on another
host may be invisible) this could remove another host's live directory; ``$TMPDIR`` is
local on every system we know of.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .buildtmp import owned_tmpdir as _owned
from .buildtmp import release_tmpdir, take_if_owner_gone

PREFIX = "kiln-owned-"


def sweep(parent: Path | None = None) -> int:
    """Remove the ``PREFIX`` directories of this user in ``parent`` (default: the system
    temp directory) whose owner is gone; returns how many went. Never raises for a
    directory it cannot read or remove (it is left)."""
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    gone = 0
    try:
        entries = [e.path for e in os.scandir(parent) if e.name.startswith(PREFIX)]
    except OSError:
        return 0
    for path in entries:
        fd = take_if_owner_gone(path)
        if fd is None:
            continue  # (alive, gone already, not a directory, or not ours to open)
        try:
            if os.fstat(fd).st_uid != os.getuid():
                os.close(fd)
                continue
        except OSError:
            os.close(fd)
            continue
        release_tmpdir(Path(path), fd)
        gone += not os.path.lexists(path)
    return gone


@contextlib.contextmanager
def owned_tmpdir(what: str, parent: Path | None = None) -> Iterator[Path]:
    """A new ``<parent>/kiln-owned-<what>-<random>/`` (``parent``: the system temp
    directory), owned by this process for the block and removed after it (see the module
    docstring); the leftovers of dead owners are swept first."""
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    sweep(parent)
    d, fd = _owned(parent, f"{PREFIX}{what}-", None)
    try:
        yield d
    finally:
        release_tmpdir(d, fd)
