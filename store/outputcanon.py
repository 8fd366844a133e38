"""Build outputs made canonical in place: what a store path may not hold is refused,
the rest is given canonical metadata.

Invariants: after ``canonicalise_output`` succeeds the tree holds only regular files,
directories and symlinks; no setuid/setgid bit; no extended attributes but those Nix
keeps (``trees.KEEP_XATTRS``); files 0444/0555, directories 0555 (the top one 0755 until
``trees.seal_top``), every mtime ``CANON_MTIME``. On refusal the tree may be half
canonical: it is the build's scratch, never a store path. Iterative: deep trees cannot
overflow the stack. (Trees made by restoring a NAR are canonical by construction:
``trees.restore_canonical``.)
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import StoreError
from .objects import CANON_MTIME
from .shownname import shown_name
from .trees import KEEP_XATTRS, canon_leaf

_MTIME = (CANON_MTIME, CANON_MTIME)


def canonicalise_output(top: Path, shown: str | None = None) -> None:
    """Make a finished build output canonical in place (as ``canonicalise``, top left
    writable for ``seal_top``), refusing first what a store path may not hold:
    setuid/setgid files or directories and anything but regular files, directories and
    symlinks (``StoreError`` naming the path, under ``shown`` — the output's store path —
    instead of ``top`` when given: the build's scratch dir means nothing to its author;
    the tree may then be half canonical, it is the build's scratch). Directories the
    build left unreadable are opened up before they are listed. Iterative: deep trees
    cannot overflow the stack."""
    try:
        _canonicalise_output(top)
    except StoreError as e:
        if shown is None:
            raise
        raise StoreError(str(e).replace(os.fsdecode(os.fsencode(top)), shown, 1)) from None


def _canonicalise_output(top: Path) -> None:
    t = os.fsencode(top)
    st = os.lstat(t)
    _refuse(t, st)
    if not stat.S_ISDIR(st.st_mode):
        canon_leaf(t, st)
        return
    os.chmod(t, 0o755)
    stack: list[tuple[bytes, bool]] = [(t, False)]  # (dir, its entries done)
    while stack:
        d, done = stack.pop()
        if done:
            if d != t:
                os.chmod(d, 0o555)
            os.utime(d, _MTIME)
            continue
        stack.append((d, True))
        for name in os.listdir(d):
            p = d + b"/" + name
            cst = os.lstat(p)
            _refuse(p, cst)
            if stat.S_ISDIR(cst.st_mode):
                os.chmod(p, 0o755)
                stack.append((p, False))
            else:
                canon_leaf(p, cst)


def _refuse(p: bytes, st: os.stat_result) -> None:
    from .treeplan import unstorable as _unstorable

    m = st.st_mode
    if not (stat.S_ISREG(m) or stat.S_ISDIR(m) or stat.S_ISLNK(m)):
        raise _unstorable(p, m)
    _strip_xattrs(p)
    if not stat.S_ISLNK(m) and m & (stat.S_ISUID | stat.S_ISGID):
        bits = "setuid" if m & stat.S_ISUID else "setgid"
        raise StoreError(
            f"{shown_name(p)}: has the {bits} bit (mode {stat.S_IMODE(m):04o}); "
            "store paths may not contain setuid/setgid files"
        )


def _strip_xattrs(p: bytes) -> None:
    """Remove the extended attributes (and POSIX ACLs, which are xattrs) a build left on
    ``p``: the NAR does not record them, so the materialised tree would hold metadata
    that no other copy of the path has. Unsupported file systems are fine."""
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
            return
        raise
    doomed = [n for n in names if n not in KEEP_XATTRS]
    if not doomed:
        return
    st = os.lstat(p)
    if not stat.S_ISLNK(st.st_mode) and not st.st_mode & stat.S_IWUSR:
        # removing a user.* attribute needs write access, which a build may have taken
        # away (0444); canonicalisation sets the final mode afterwards
        os.chmod(p, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    for name in doomed:
        try:
            os.removexattr(p, name, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
