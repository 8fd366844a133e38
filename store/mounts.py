"""Mounts left under a directory by a killed process, and their removal.

``--check --vary`` mounts disorderfs (FUSE) over a rebuild's directories and unmounts it
when the rebuild ends. A kill in between leaves the mounts, and their daemons, under
``tmp/vary-*``; GC removes that directory once its owner is gone (``buildtmp``), and
first unmounts what is mounted below it (a FUSE daemon exits when its mount goes).
Only FUSE mounts are taken down (``fusermount -u -z``, or ``fusermount3``, which works for
the user who mounted them and for root); any other mount below a directory keeps the directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(rb"\\([0-7]{3})")


def mount_table(mountinfo: bytes | None = None) -> list[tuple[str, str]]:
    """``(mount point, file system type)`` of every mount, in the kernel's order (a later
    one may hide an earlier one at the same point), from ``mountinfo``, the text of
    ``/proc/self/mountinfo`` (read if None; ``OSError`` if it cannot be)."""
    if mountinfo is None:
        with open(MOUNTINFO, "rb") as f:
            mountinfo = f.read()
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(b" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        # the kernel writes space, tab, newline and backslash as octal escapes
        point = os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4]))
        out.append((point, os.fsdecode(right.split()[0])))
    return out


def mounts_below(d: Path, mountinfo: bytes | None = None) -> list[tuple[str, str]]:
    """``(mount point, file system type)`` of every mount at or below ``d`` (resolved),
    deepest first. ``mountinfo`` is the text of ``/proc/self/mountinfo`` (read if None)."""
    top = os.path.realpath(d)
    out = [(p, t) for p, t in mount_table(mountinfo) if p == top or p.startswith(top + "/")]
    return sorted(out, key=lambda m: m[0].count("/"), reverse=True)


def unmount_below(d: Path, mountinfo: bytes | None = None) -> str | None:
    """Take down the FUSE mounts at or below ``d`` (``mountinfo`` as for
    ``mounts_below``); None when nothing is mounted there any more, else why something
    still is (``d`` must then be kept)."""
    for point, fstype in mounts_below(d, mountinfo):
        if not fstype.startswith("fuse"):
            return f"{point} is a {fstype} mount"
        why = fuse_unmount(point, lazy=True)
        if why is not None:
            return why
    return None


def fuse_unmount(point: str | Path, lazy: bool = False) -> str | None:
    """Unmount the FUSE mount at ``point`` with ``fusermount`` (FUSE 2) or ``fusermount3``
    (a machine may have either: disorderfs depends on ``fuse | fuse3``); None when done,
    else why not."""
    tool = shutil.which("fusermount") or shutil.which("fusermount3")
    if tool is None:
        return f"cannot unmount {point}: neither fusermount nor fusermount3 is installed"
    r = subprocess.run([tool, "-u", *(["-z"] if lazy else []), str(point)], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot unmount {point}: {r.stderr.strip() or f'{tool} exited {r.returncode}'}"
    return None
