"""The recipe tree: where an evaluation may read files (imports) and take ``path`` sources.

Why
---
``import`` and ``path`` name files relative to the recipe, but ``..`` and absolute paths
reach anywhere: ``path "../home/keys/default.sec"`` in an untrusted recipe copied the
store's signing key into a world-readable store path, signed it and made it pushable,
before any sandbox ran. Nix's pure evaluation confines a flake to its source tree for
the same reason, and it is hermeticity too: a recipe that reads ``/etc`` gives other
store paths on other machines.

Rule
----
The *recipe tree* is the nearest directory holding a ``.kilnroot`` file (a regular
file, owned by the user running kiln or root, or, when kiln runs as root under ``sudo``,
by the user ``SUDO_UID`` names) at or above the entry file (the recipe named on the
command line, symlinks resolved), else that file's directory; ``KILN_RECIPE_ROOT`` replaces it (a directory above a shared ``lib/`` of
recipes, say). Not the git work tree: a ``.git`` above an unpacked tarball (a dotfiles
repository in ``$HOME``, a stray ``/tmp/.git``) would hand the tarball's recipes the
whole home directory; a marker is something a project's author put there on purpose.
Every imported file and every ``path`` source must lie in it, judged on the real path
(symlinks resolved) of an import, and of a source's parent directory: a source that is
itself a symlink is stored as a symlink, never followed, and so are symlinks inside a
source tree. Expressions on the command line (``kiln build F 'path "./x"'``) are
evaluated in the entry file's scope and confined the same way.

A marker that is there but does not count (a symlink, another user's) is named, with
its owner, in the error for a path outside the tree: the user sees why the project's
own marker was passed over.
"""

from __future__ import annotations

import os

#: environment variable naming the recipe tree explicitly
ROOT_VAR = "KILN_RECIPE_ROOT"


#: the file that marks a directory as the top of its recipe tree
MARKER = ".kilnroot"


def recipe_root(entry: str, override: str | None = None) -> str:
    """The recipe tree of the entry file ``entry`` (a real path): ``override`` (made
    absolute and resolved) if given, else the nearest directory at or above ``entry``
    holding a ``MARKER`` file that counts (``_marker_problem``), else its directory."""
    if override:
        return os.path.realpath(override)
    top = os.path.dirname(entry)
    d = top
    while True:
        if _marker_problem(os.path.join(d, MARKER)) == "":
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return top
        d = parent


def _trusted_uids() -> tuple[int, ...]:
    """The owners whose marker counts: the user running kiln and root, and, when that
    user is root and ``SUDO_UID`` is set (``sudo kiln build``), the user who ran sudo,
    whose project it is (git's ``safe.directory`` trusts ``SUDO_UID`` the same way). A
    ``SUDO_UID`` that is not a number is ignored."""
    euid = os.geteuid()
    uids: tuple[int, ...] = (euid, 0)
    sudo = os.environ.get("SUDO_UID", "")
    if euid == 0 and sudo.isascii() and sudo.isdigit():
        uids += (int(sudo),)
    return uids


def _marker_problem(path: str) -> str | None:
    """Why the ``MARKER`` at ``path`` does not count: None if there is none, ``""`` if it
    counts. It counts if it is a regular file (not a symlink) owned by one of
    ``_trusted_uids``: one another user left in a shared directory above (a
    ``/tmp/.kilnroot``) must not widen everyone's tree (git's ``safe.directory`` is for
    the same case)."""
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        return f"it is {kind}"
    if st.st_uid not in _trusted_uids():
        return f"it is owned by {_user(st.st_uid)}, and a marker counts only if owned by {_trusted_names()}"
    return ""


def _trusted_names() -> str:
    """``_trusted_uids`` in words, for an error."""
    euid = os.geteuid()
    if euid != 0:
        return f"the user running kiln ({_user(euid)}) or root"
    uids = _trusted_uids()
    if len(uids) > 2:
        return f"root or the user who ran sudo (SUDO_UID: {_user(uids[2])})"
    return "root (kiln runs as root, and SUDO_UID, which sudo sets, names no other user)"


def _user(uid: int) -> str:
    """``uid 1000 (alice)``, or ``uid 1000`` when it has no name."""
    from .errors import visible

    try:
        import pwd

        return f"uid {uid} ({visible(pwd.getpwuid(uid).pw_name)})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def ignored_markers(root: str) -> list[tuple[str, str]]:
    """``(path, why)`` of every ``MARKER`` at or above ``root`` that is there but does
    not count, nearest first, up to the first that counts (one at ``root`` itself: none
    then). What the error for a path outside the tree names: a project's own marker
    passed over (``sudo`` without ``SUDO_UID``, a marker checked out as a symlink)."""
    found: list[tuple[str, str]] = []
    d = root
    while True:
        marker = os.path.join(d, MARKER)
        why = _marker_problem(marker)
        if why == "":
            return found
        if why is not None:
            found.append((marker, why))
        parent = os.path.dirname(d)
        if parent == d:
            return found
        d = parent


def inside(root: str, real: str) -> bool:
    """Whether the resolved path ``real`` is ``root`` or below it."""
    return real == root or real.startswith(root.rstrip("/") + "/")


def source_real(target: str) -> str:
    """The real location of a ``path`` source ``target`` (normalised, absolute): its
    parent directory resolved, its last component kept (it is not followed)."""
    parent, base = os.path.split(target)
    return os.path.join(os.path.realpath(parent), base) if base else os.path.realpath(parent)


def outside_message(what: str, real: str, root: str) -> str:
    """The error for ``what`` (``import "x"``, ``path "x"``, already quoted) leading to
    ``real``, outside the tree ``root``; names (``errors.visible``) every marker at or
    above ``root`` that was passed over, and why."""
    from .errors import visible

    message = (
        f"{what} leads outside the recipe tree {visible(root)} (to {visible(real)}); a recipe may read "
        f"only files in its tree: the directory of the recipe named on the command line, or the nearest "
        f"one above it holding a {MARKER} file"
    )
    ignored = ignored_markers(root)
    if not ignored:
        return message + f" (add one to the project's top, or set {ROOT_VAR})"
    notes = "; ".join(f"{visible(m)} does not count: {why}" for m, why in ignored)
    return message + f"; {notes}; {ROOT_VAR} names the tree explicitly"
