"""The links Debian's maintainer scripts and the alternatives system would have made in an
unpacked toolchain tree (``LINKS``), added by ``add_links`` after the last ``.deb``.

Maintainer scripts never run (``debunpack``), so these links are made instead, each only
if its target exists and its path is free. Both are judged *inside* the tree, as the build
will see it (``debtree``): a package shipping ``bin -> /somewhere`` cannot make kiln write
on the host, and host files never decide which links exist. The list comes from reading
the ``postinst`` of every package in the lock (docs/toolchain.md, "Links added, and why").
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from .debtree import exists_inside, inside

#: (link path, target) — what maintainer scripts / update-alternatives create on a real
#: Debian system. Targets are relative to the link's directory. First match wins per path.
LINKS: tuple[tuple[str, str], ...] = (
    ("bin/sh", "bash"),  # dash's package ships /bin/sh; bash's postinst makes it if missing
    ("usr/bin/awk", "gawk"),  # alternatives: awk (gawk postinst)
    ("usr/bin/awk", "mawk"),
    ("usr/bin/nawk", "gawk"),  # slave of the awk alternative
    ("usr/bin/cc", "gcc"),  # alternatives: cc (gcc postinst)
    ("usr/bin/c89", "c89-gcc"),  # alternatives: c89 (gcc postinst)
    ("usr/bin/c99", "c99-gcc"),  # alternatives: c99 (gcc postinst)
    ("usr/bin/c++", "g++"),  # alternatives: c++ (g++ postinst)
    ("usr/bin/cpp", "cpp-12"),  # only if the cpp package's own link is missing
    ("lib/cpp", "../usr/bin/cpp"),  # alternatives: cpp (cpp postinst); old configure scripts probe it
    ("usr/bin/touch", "../../bin/touch"),  # coreutils postinst (made relative so it works in any root)
    ("usr/bin/which", "which.debianutils"),  # alternatives: which (debianutils postinst)
    ("usr/sbin/rmt", "rmt-tar"),  # alternatives: rmt (tar postinst)
    ("usr/bin/lzma", "xz"),  # alternatives: lzma and its slaves (xz-utils postinst)
    ("usr/bin/unlzma", "unxz"),
    *((f"usr/bin/lz{u}", f"xz{u}") for u in ("cat", "more", "less", "diff", "cmp", "grep", "egrep", "fgrep")),
)


def add_links(out: Path, on_step: Callable[[str], None]) -> list[str]:
    """Create the ``LINKS`` whose target exists and whose path is free; returns them as
    ``path -> target`` strings. ``on_step(link)`` is called for every path component
    resolved while judging ``link`` (it may raise: ``debunpack`` counts them in the
    unpack's ``MAX_RESOLVE_STEPS``, since the tree's symlinks can make each lookup cost
    tens of thousands of system calls).

    Both the link's directory and its target are resolved *inside* the tree, as the build
    will see it (a package may ship ``bin -> /usr/bin`` or ``usr -> ../elsewhere``): the
    host's files never decide whether a link is made, and nothing is created outside
    ``out``. A link whose directory is missing or leaves the tree is not made."""
    root = out.resolve()
    made: list[str] = []
    for link, target in LINKS:
        step = functools.partial(on_step, link)
        *dirs, name = link.split("/")
        d = inside(root, dirs, link, create=False, on_step=step)
        if d is None or os.path.lexists(d / name):
            continue
        here = list(d.relative_to(root).parts)
        if not exists_inside(root, [*here, *PurePosixPath(target).parts], on_step=step):
            continue
        os.symlink(target, d / name)
        made.append(f"{link} -> {target}")
    return made
