"""The record ``verify --repair`` keeps of a path it quarantined, and what GC reads from it.

A quarantine (``repair``) moves a path whose object and tree are both bad to
``quarantine/<base>-<time>/`` and deletes its row. The row was the only record of the
path's references and deriver, and the quarantined path is still wanted: a GC root may
name it, valid paths may reference it, and the way back is to build or fetch it again,
which needs its closure and its ``.drv``. So ``info.txt`` in that directory keeps them,
and GC (``gc.collect``) keeps them alive for as long as the quarantined path itself is
reachable (rooted, or referenced by a live path) and has no row of its own.

Format of ``info.txt`` (written before the row is deleted, fsynced): ``key: value``
lines, UTF-8; ``path``, ``nar_hash``, ``nar_size``, ``file_hash``, ``references`` (store
paths separated by single spaces, possibly none), ``deriver`` (empty if none; absent in
records made before it was kept), and possibly ``object copy: failed (...)`` appended
later. Store paths cannot contain spaces or newlines (``paths.check_name``), so the
format needs no quoting. Unknown keys are ignored; a record that cannot be read (also:
not a regular file, or over ``INFO_MAX_BYTES``) or has no ``path`` holds nothing alive
(``read_records`` skips it, and says so).

A record is not kept for good: once its path is valid again (its row records its
edges) or nothing keeps the path alive, GC deletes it when it is old enough
(``gcquarantine``: the age is the operator's time to inspect the bad bytes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .fileopen import FileTooLarge, NotRegularFile, read_small_file
from .pathinfo import PathInfo

#: the largest ``info.txt`` read: a record is one line per field, but ``references`` may
#: name tens of thousands of paths (50,000 references of ~60 bytes are 3 MB); 64 MiB is
#: twenty times that, and small enough to read into memory during GC
INFO_MAX_BYTES = 64 << 20


def info_text(info: PathInfo) -> str:
    """The ``info.txt`` of a quarantine of ``info``'s path."""
    return (
        f"path: {info.path}\nnar_hash: {info.nar_hash.to_nix32()}\nnar_size: {info.nar_size}\n"
        f"file_hash: {info.file_hash.to_nix32() if info.file_hash else ''}\n"
        f"references: {' '.join(info.references)}\nderiver: {info.deriver or ''}\n"
    )


def parse_info(text: str) -> tuple[str, tuple[str, ...]] | None:
    """``(path, paths it keeps alive)`` of one ``info.txt`` (its references other than
    itself, and its deriver), or None if it names no path."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key not in fields:
            fields[key] = value.strip()
    path = fields.get("path", "")
    if not path:
        return None
    keeps = [r for r in fields.get("references", "").split(" ") if r and r != path]
    if fields.get("deriver"):
        keeps.append(fields["deriver"])
    return path, tuple(keeps)


@dataclass(frozen=True, slots=True)
class Record:
    """One readable quarantine record: its directory (``quarantine/<base>-<time>[-<n>]``),
    the path its ``info.txt`` names, and what that path keeps alive (``parse_info``)."""

    dir: Path
    path: str
    keeps: tuple[str, ...]


def read_records(root: Path) -> tuple[list[Record], list[str]]:
    """Every record in ``root/quarantine`` that can be read (by directory name), and the
    ones that could not be read (each as ``<dir>: why``). Only reads; never raises for a
    bad record. Entries that are not directories are no records and are skipped."""
    records: list[Record] = []
    unreadable: list[str] = []
    try:
        entries = sorted(os.scandir(root / "quarantine"), key=lambda e: e.name)
    except FileNotFoundError:
        return [], []
    for e in entries:
        if not e.is_dir(follow_symlinks=False):
            continue
        try:
            # only a regular file, never a FIFO to wait on nor a link to /dev/zero, and
            # capped: a sparse info.txt of gigabytes costs nothing to make
            text = read_small_file(os.path.join(e.path, "info.txt"), INFO_MAX_BYTES)
        except (NotRegularFile, FileTooLarge) as err:  # (their strerror says what it is)
            unreadable.append(f"{e.path}: info.txt {err.strerror}")
            continue
        except OSError as err:
            unreadable.append(f"{e.path}: info.txt: {err.strerror or err}")
            continue
        parsed = parse_info(text.decode("utf-8", "replace"))
        if parsed is None:
            unreadable.append(f"{e.path}: info.txt names no path")
            continue
        records.append(Record(Path(e.path), *parsed))
    return records, unreadable


def closure_edges(records: Iterable[Record]) -> dict[str, frozenset[str]]:
    """For every path ``records`` record: the paths it keeps alive (the union over
    several quarantines of one path)."""
    edges: dict[str, set[str]] = {}
    for r in records:
        edges.setdefault(r.path, set()).update(r.keeps)
    return {p: frozenset(k) for p, k in edges.items()}


def recorded_closure_edges(root: Path) -> tuple[dict[str, frozenset[str]], list[str]]:
    """``closure_edges`` of the records under ``root/quarantine``, and the records that
    could not be read (``read_records``)."""
    records, unreadable = read_records(root)
    return closure_edges(records), unreadable
