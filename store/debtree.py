"""Resolving paths inside a tree being unpacked from ``.deb``s, as the build will see it.

Theory of operation
-------------------
The unpacked tree becomes the sandbox's ``/``, so a path in it means what it would mean
there: symlinks already in the tree are followed *inside* the tree (an absolute target is
taken relative to its root, and ``..`` never climbs above it), never through the host's
files. ``inside`` resolves directory components that way, optionally making the missing
ones; ``exists_inside`` says whether a path (its last component included) exists.

Both are iterative (a stack of components, not recursion) and bounded: at most
``MAX_SYMLINK_HOPS`` symlinks per lookup (``exists_inside`` makes up to
``MAX_SYMLINK_HOPS + 1`` lookups, one per symlink in the last position). ``inside`` can be
given a depth limit, and both take a callback per component resolved, through which
``debunpack`` bounds the work of a whole unpack, the links ``deblinks`` adds after the
last package included (40 symlinks with 4 KB targets of ``a/../`` made one lookup cost
~65,000 system calls; replacing a symlink empties the unpacker's cache of resolved
directories; and a 5 KB .deb of 826 symlinks made the added links cost 26 million).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from .errors import FormatError

#: symlinks followed in one lookup (the kernel's limit, MAXSYMLINKS, is 40 too)
MAX_SYMLINK_HOPS = 40


def inside(
    root: Path,
    parts: list[str],
    what: str,
    create: bool,
    *,
    max_depth: int | None = None,
    on_mkdir: Callable[[Path], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> Path | None:
    """The real directory inside ``root`` (resolved, absolute) that the directory
    components ``parts`` name, following symlinks in the tree inside it.

    ``create``: make missing directories (mode 0755), calling ``on_mkdir(path)`` first for
    each (it may raise to refuse it), and raise ``FormatError`` starting with ``what`` for
    a component that is not a directory, a path that leaves the root, too many symlinks,
    or (with ``max_depth``) a resolved directory more than ``max_depth`` levels below the
    root. Otherwise return None in those cases, and create nothing. ``on_step()`` is
    called for each component resolved, symlink targets' included (it may raise: each
    costs a system call, and symlinks can make a short path cost many)."""

    def fail(message: str) -> None:  # raises if creating; otherwise the caller returns None
        if create:
            raise FormatError(message)

    top = str(root)
    dirs: list[str] = []  # the real directories walked into, as strings: joins stay cheap
    todo = list(reversed(parts))  # a stack: the next component is last
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", ".", "/"):
            continue
        if on_step is not None:
            on_step()
        if part == "..":
            if not dirs:
                fail(f"{what} escapes the root through a symlink")
                return None
            dirs.pop()
            continue
        here = f"{dirs[-1] if dirs else top}/{part}"
        try:
            mode: int | None = os.lstat(here).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISLNK(mode):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                fail(f"{what}: too many symlinks")
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                dirs = []
            todo.extend(reversed(PurePosixPath(target).parts))
            continue
        if max_depth is not None and len(dirs) >= max_depth:
            fail(
                f"{what}: directories nested more than {max_depth} levels deep "
                "(kiln.store.debunpack.MAX_UNPACKED_DEPTH)"
            )
            return None
        if mode is None:
            if not create:
                return None
            if on_mkdir is not None:
                on_mkdir(Path(here))
            os.mkdir(here, 0o755)
        elif not stat.S_ISDIR(mode):
            fail(f"{what} needs {here[len(top) + 1 :]} to be a directory")
            return None
        dirs.append(here)
    return Path(dirs[-1]) if dirs else root


def exists_inside(root: Path, parts: list[str], on_step: Callable[[], None] | None = None) -> bool:
    """Whether ``parts`` (relative to ``root``) names something that exists, resolving
    every symlink on the way inside the tree, the last one included (at most
    ``MAX_SYMLINK_HOPS`` of the last ones). ``on_step`` is as for ``inside``: called for
    every component resolved, here and in the ``inside`` lookups this makes."""
    for _ in range(MAX_SYMLINK_HOPS + 1):
        if not parts or parts[-1] in (".", ".."):
            return inside(root, parts, "", create=False, on_step=on_step) is not None
        d = inside(root, parts[:-1], "", create=False, on_step=on_step)
        if d is None:
            return False
        if on_step is not None:
            on_step()  # the last component's lstat
        p = d / parts[-1]
        if not p.is_symlink():
            return p.exists()
        target = os.readlink(p)
        base = [] if target.startswith("/") else list(d.relative_to(root).parts)
        parts = [*base, *PurePosixPath(target).parts]
    return False
