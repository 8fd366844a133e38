"""Which narinfos (and attestation listings) of a registry directory changed since they
were last read, told from ``stat`` alone: what lets ``publish`` re-index, ``mirror``
sync and ``narhashmap`` look up by NAR hash without reading every narinfo each time.

Theory
------
A *stamp* is a file's (inode, size, mtime_ns, ctime_ns). Every change to what a name
holds sets a ctime at the time of the change, and userspace cannot set a ctime: a write
in place sets the file's, and a replacement (temp file + rename, a hard link, a restore
that sets an old mtime) puts a file there that was created or renamed (or linked) at
that time, or an older file with another inode number. So if a stamp is taken *before* a
file is read, and the file's stamp is the same later, it holds what was read — unless a
change fell in the same clock tick as the stamp's ctime (timestamps are as coarse as the
kernel's clock tick, a second or two on some network file systems). As git does with
"racily clean" files, a stamp vouches for nothing unless its ctime is ``MARGIN_NS``
older than the file system's own clock at the scan (``fs_clock``: the ctime of a file
written just then, so on NFS the server's clock counts, not ours): any later change
then gives a later ctime. A file written in the last ``MARGIN_NS`` is simply read again
next time. (A system clock stepped back by more than the margin could in principle
give a changed file its old ctime to the nanosecond; callers keep a full mode that
reads everything.)

Stamps are remembered in JSON files under ``.kiln/`` (private, never served), each
tied to what it vouches for (an index's sha256): a record that does not match is
ignored, and everything is read as if there were none.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .storage import FileStorage, Storage

Stamp = tuple[int, int, int, int]
#: a stamp whose ctime is not this much older than the file system's clock is "racy"
MARGIN_NS = 2_000_000_000
_CLOCK = ".kiln/stamp-clock"
NARINFO = ".narinfo"


def stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def local_root(storage: Storage) -> Path | None:
    """The directory of a ``FileStorage`` (stamps need one), else None."""
    return storage.root if isinstance(storage, FileStorage) else None


def fs_clock(root: Path) -> int | None:
    """The file system's clock now (ns): the ctime of ``.kiln/stamp-clock`` written just
    now. None if it cannot be written (then no stamp is settled: all is read)."""
    try:
        fd = os.open(root / _CLOCK, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        os.write(fd, b"x")
        return os.fstat(fd).st_ctime_ns
    except OSError:
        return None
    finally:
        os.close(fd)


def settled(stamp: Sequence[int] | None, clock: int | None) -> bool:
    """Whether ``stamp`` (taken after ``clock`` was read; a ``Stamp``, or its four numbers
    as a JSON record holds them) may vouch for its file later."""
    return stamp is not None and clock is not None and stamp[3] < clock - MARGIN_NS


def dir_stamp(root: Path) -> Stamp | None:
    """The stamp of the directory itself: it changes when an entry is added, removed or
    renamed there (a narinfo published, replaced or deleted), not when a file is
    written in place or a subdirectory changes."""
    try:
        return stamp_of(os.stat(root))
    except OSError:
        return None


def scan(root: Path) -> tuple[dict[str, Stamp], set[str]]:
    """``({hash part: stamp}, names)``: the stamp of every regular file ``<h>.narinfo`` at
    the top of ``root`` (links followed, as reads follow them; names starting with a dot
    skipped, as ``Storage.list`` does; the stem may be any name, callers check it), and
    the names of every top-level entry (to tell which paths have a ``<h>.att/``)."""
    stamps: dict[str, Stamp] = {}
    names: set[str] = set()
    with os.scandir(root) as it:
        for e in it:
            name = e.name
            names.add(name)
            if name.endswith(NARINFO) and not name.startswith("."):
                with contextlib.suppress(OSError):  # gone meanwhile, or a dangling link
                    if e.is_file():
                        stamps[name[: -len(NARINFO)]] = stamp_of(e.stat())
    return stamps, names


def att_stamp(root: Path, hash_part: str, names: set[str]) -> Stamp | None:
    """The stamp of ``<h>.att/index.json``, or None where there is none (no listing:
    the path has no attestations, whatever else is there)."""
    if f"{hash_part}.att" not in names:
        return None
    try:
        return stamp_of(os.stat(root / f"{hash_part}.att" / "index.json"))
    except OSError:
        return None


def pack(nar: Stamp, att: Stamp | None) -> list[int]:
    """One path's stamps as a JSON list: the narinfo's, then its listing's if any."""
    return [*nar, *att] if att is not None else list(nar)


def load(storage: Storage, key: str) -> dict[str, Any] | None:
    """A record written by ``save`` (None if absent or unreadable: start afresh)."""
    data = storage.read(key)
    if not data:
        return None
    try:
        rec = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("stamps"), dict) else None


def save(storage: Storage, key: str, rec: dict[str, Any]) -> None:
    """Write a record (atomically; not fsynced: a lost record only costs a full read)."""
    storage.put_bytes(key, json.dumps(rec, separators=(",", ":")).encode(), durable=False)
