"""Removing what GC collects, and sizing it for the report (``gc``).

A tree is removed by renaming it into GC's ``tmp/gc-*`` directory and deleting it
there. What this user cannot remove is found before any row is deleted
(``inspect_tree``: a directory in it that another user owns, as after ``sudo -E kiln
build`` wrote into this user's store), so its row is kept; what fails anyway is put
back under its name and reported, never left in ``tmp/gc-*`` or allowed to stop the
collection.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from .errors import StoreError
from .mounts import mounts_below
from .perms import owner_text
from .trees import remove_tree, tree_size


def inspect_tree(p: Path, euid: int) -> tuple[int, str | None]:
    """Bytes under ``p`` for the report, and why this user cannot remove it (``None``: it
    can): a directory in it that another user owns (``euid`` 0, root, removes anything).
    What cannot be read counts 0 bytes and no reason: the removal tries (and opens up
    what is ours), and a failure there is reported then."""
    b = os.fsencode(p)
    try:
        st = os.lstat(b)
    except OSError:
        return 0, None
    if not stat.S_ISDIR(st.st_mode):
        return (st.st_size if stat.S_ISREG(st.st_mode) else 0), None
    if euid != 0 and st.st_uid != euid:
        return 0, owner_text(st.st_uid)
    total, todo = 0, [b]
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
            if stat.S_ISDIR(s.st_mode):
                if euid != 0 and s.st_uid != euid:
                    return 0, f"{os.fsdecode(e.path)} in it is {owner_text(s.st_uid)}"
                todo.append(e.path)
            elif stat.S_ISREG(s.st_mode):
                total += s.st_size
    return total, None


def remove(p: Path) -> str | None:
    """Remove ``p`` (``trees.remove_tree``); why it could not, or None."""
    try:
        remove_tree(p)
    except OSError as e:
        return f"could not be removed: {e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    except StoreError as e:
        return str(e)
    return None


def remove_via(real: Path, trash: Path) -> str | None:
    """Move the tree (or file) ``real`` into ``trash`` and remove it there; why it could
    not, or None. What could not be removed goes back to its name: nothing stays in
    ``trash``, and a later GC finds it again (an unregistered tree)."""
    if not os.path.lexists(real):
        return None
    moved = trash / real.name
    try:
        if real.is_dir() and not real.is_symlink():
            os.chmod(real, 0o755)  # renaming a directory needs write access to it
        os.rename(real, moved)
    except OSError as e:
        return f"could not be removed: {e.strerror or e}"
    if (why := remove(moved)) is not None and os.path.lexists(moved):
        with contextlib.suppress(OSError):
            os.rename(moved, real)
    return why


def size_beside_mounts(p: Path, table: bytes) -> int:
    """``size`` of ``p`` without what is mounted below it (a dry run leaves a killed
    rebuild's disorderfs mounts up: through them its real files would count twice).
    Walked resolved, as mountinfo names the mount points (a KILN_HOME under a symlink)."""
    return size(Path(os.path.realpath(p)), frozenset(os.fsencode(m) for m, _ in mounts_below(p, table)))


def size(p: Path, skip: frozenset[bytes] = frozenset()) -> int:
    """Bytes under ``p`` for the report; 0 where it cannot be read (a leftover a build
    made unreadable): a size is never a reason to stop collecting."""
    try:
        return tree_size(p, skip)
    except OSError:
        return 0
