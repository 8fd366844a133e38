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
file, owned by the user running kiln or root) at or above the entry file (the recipe named on the command line, symlinks resolved), else that file's
directory; ``KILN_RECIPE_ROOT`` replaces it (a directory above a shared ``lib/`` of
recipes, say). Not the git work tree: a ``.git`` above an unpacked tarball (a dotfiles
repository in ``$HOME``, a stray ``/tmp/.git``) would hand the tarball's recipes the
whole home directory; a marker is something a project's author put there on purpose.
Every imported file and every ``path`` source must lie in it, judged on the real path
(symlinks resolved) of an import, and of a source's parent directory: a source that is
itself a symlink is stored as a symlink, never followed, and so are symlinks inside a
source tree. Expressions on the command line (``kiln build F 'path "./x"'``) are
evaluated in the entry file's scope and confined the same way.
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
    holding a ``MARKER`` file, else its directory."""
    if override:
        return os.path.realpath(override)
    top = os.path.dirname(entry)
    d = top
    while True:
        if _is_marker(os.path.join(d, MARKER)):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return top
        d = parent


def _is_marker(path: str) -> bool:
    """A ``MARKER`` counts if it is a regular file (not a symlink) owned by the user
    running kiln or by root: one another user left in a shared directory above (a
    ``/tmp/.kilnroot``) must not widen everyone's tree (git's ``safe.directory`` is for
    the same case)."""
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid in (os.geteuid(), 0)


def inside(root: str, real: str) -> bool:
    """Whether the resolved path ``real`` is ``root`` or below it."""
    return real == root or real.startswith(root.rstrip("/") + "/")


def source_real(target: str) -> str:
    """The real location of a ``path`` source ``target`` (normalised, absolute): its
    parent directory resolved, its last component kept (it is not followed)."""
    parent, base = os.path.split(target)
    return os.path.join(os.path.realpath(parent), base) if base else os.path.realpath(parent)


def outside_message(what: str, real: str, root: str) -> str:
    """The error for ``what`` (``import "x"``, ``path "x"``) leading to ``real``."""
    return (
        f"{what} leads outside the recipe tree {root} (to {real}); a recipe may read only files "
        f"in its tree: the directory of the recipe named on the command line, or the nearest one "
        f"above it holding a {MARKER} file (add one to the project's top, or set {ROOT_VAR})"
    )
