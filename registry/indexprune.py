"""Which versioned index files a registry (or a mirror) keeps: ``prune``.

Each index generation is two files, ``index/<v>.index.json`` (the whole path table:
~350 bytes a path) and ``index/<v>.snapshot.json``; a registry that publishes after
every push would keep thousands of full tables for ever. Nothing needs an old
generation once no reader can still be on its way to it:

- a reader (``index.update``: a mirror sync) reads ``timestamp.json``, then fetches the
  snapshot and index files it names. Between reading the timestamp and opening the
  index file lie the snapshot's request and the index request's start, each bounded by
  the client's wait for an answer (``httpclient.HEADERS_TIMEOUT``, 300 s) and its 503
  retries; once the server has the file open, deleting it does not cut the download.
  So a generation is kept for ``KEEP_SECONDS`` (15 minutes: twice that bound, with
  room) after the generation that replaced it was written;
- the previous generation is kept whatever its age (``KEEP_VERSIONS``): a client that
  has just read the previous timestamp or snapshot can still fetch what it names;
- roots (``<v>.root.json``) are never removed: clients walk the chain from the root
  they pinned, however old; nor are ``timestamp.json``, ``snapshot.json`` and
  ``root.json``, nor any generation newer than the current one.

Ages are the files' mtimes against the file system's clock (``dirstamps.fs_clock``). A
storage that is not a local directory is not pruned (it cannot tell ages).
"""

from __future__ import annotations

import contextlib
import os
import re
import time

from . import dirstamps
from .storage import Storage

#: generations kept whatever their age: the current one and the one before it
KEEP_VERSIONS = 2
#: an older generation is kept this long after the one that replaced it was written
KEEP_SECONDS = 15 * 60.0
_VERSIONED = re.compile(r"([1-9][0-9]{0,9})\.(index|snapshot)\.json")


def prune(storage: Storage, current: int) -> list[str]:
    """Remove the generations of ``index/`` that no reader may still fetch (see the
    module docstring), given the ``current`` one; returns the keys removed."""
    root = dirstamps.local_root(storage)
    if root is None:
        return []
    found: dict[int, dict[str, int]] = {}  # version -> {file name: mtime_ns}
    with contextlib.suppress(FileNotFoundError), os.scandir(root / "index") as it:
        for e in it:
            m = _VERSIONED.fullmatch(e.name)
            if m is not None:
                with contextlib.suppress(OSError):
                    found.setdefault(int(m.group(1)), {})[e.name] = e.stat(follow_symlinks=False).st_mtime_ns
    now = dirstamps.fs_clock(root) or time.time_ns()
    removed: list[str] = []
    # when each version was superseded: the oldest file of any later version (the one
    # that replaced it, or a later one if that is gone, which is later still: keeps longer)
    later = None
    for v in sorted(found, reverse=True):
        files = found[v]
        replaced_at = later
        oldest = min(files.values())
        later = oldest if later is None else min(later, oldest)
        if v > current - KEEP_VERSIONS or replaced_at is None:
            continue
        if now - replaced_at < KEEP_SECONDS * 1e9:
            continue
        for name in sorted(files, key=lambda n: not n.endswith(".snapshot.json")):  # snapshot first
            storage.delete(f"index/{name}")
            removed.append(f"index/{name}")
    return removed
