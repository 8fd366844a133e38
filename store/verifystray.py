"""The unregistered trees and objects ``kiln store verify`` reports (``stray_*``): what
GC would remove, as it finds them, and nothing a writer at work beside verify is
registering.

Verify holds the GC lock shared, as writers do, so paths are registered while it runs:
it reads the valid paths at its start but scans the store's directories at its end.
A candidate is therefore judged after the scan, against the database as it is then,
and only once every registration that could have placed it has finished:

1. Candidates: the scanned trees whose paths were not valid at the start; the scanned
   objects no row uses, the rows read *after* the scan (an object is placed before its
   row is inserted, so one placed before the scan and registered by then is used).
2. Settle: registration holds the path's stripe lock (``locks.path_lock_file``) from
   before it places the tree and object until its row is committed (``registration``
   steps 3-7; batches take their stripes in ascending order). For each stripe of a
   candidate tree (for objects, whose paths are unknown: every stripe), the lock is
   taken shared and released, in ascending order (the lock order), so a registration
   under way at the scan has committed (or given up) by the time the candidate is
   judged. Stripe files are opened read-only and never made (a store on a read-only
   file system is verified too); GC, which removes them, is excluded by the shared GC
   lock verify holds.
3. Judge: a tree still unregistered is reported unless a live process names its path in
   its temp roots (a build places its outputs, then archives and registers them with
   no stripe lock held: ``registration._placer``); an object still unused is reported
   unless it is gone.

Left: a build's object placed in the moment between its placing and its row
(``stagedbuild.commit``, no stripe lock held then) can still be reported once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import db
from .locks import path_lock_file
from .storescan import object_files, stray_tree_names, used_objects
from .temprootscan import live_rooter

if TYPE_CHECKING:
    from .localstore import LocalStore


def stray_entries(store: LocalStore, valid_at_start: set[str]) -> tuple[list[str], list[str]]:
    """``(stray trees, stray objects)``: the store paths of unregistered trees and the
    file names of unused objects, sorted, judged as the module docstring says. The
    caller holds the GC lock shared; ``valid_at_start``: the paths valid when it read
    them (a first filter only)."""
    valid_bases = {p.rsplit("/", 1)[1] for p in valid_at_start}
    trees = [n for n in stray_tree_names(store) if n not in valid_bases]
    objects = object_files(store)
    used = used_objects(store, exclude=set())  # (after the scan: see the module docstring)
    objs = [o for o in objects if o.name.split(".", 1)[0] not in used]
    if not trees and not objs:
        return [], []
    _settle(store, None if objs else {n[:32] for n in trees})
    paths = [f"{store.store_dir}/{n}" for n in trees]
    stray_trees = [
        p
        for p, n in zip(paths, trees, strict=True)
        if not db.is_valid(store.conn, p)
        and os.path.lexists(store.real_store / n)
        and live_rooter(store.root / "temproots", p) is None
    ]
    if objs:
        used = used_objects(store, exclude=set())
        objs = [o for o in objs if o.name.split(".", 1)[0] not in used and os.path.lexists(o)]
    return sorted(stray_trees), sorted(str(o) for o in objs)


def _settle(store: LocalStore, hash_parts: set[str] | None) -> None:
    """Wait for the registrations holding the stripe locks of ``hash_parts`` (None:
    every stripe) to finish: take each lock shared and release it, in ascending order."""
    if hash_parts is None:
        try:
            names = [e.name for e in os.scandir(store.root / "locks") if e.name.startswith("reg-")]
        except FileNotFoundError:
            return
        files = [store.root / "locks" / n for n in names if n.endswith(".lock")]
    else:
        files = [path_lock_file(store.root, h) for h in hash_parts]
    for f in sorted(set(files)):
        _wait_for(f)


def _wait_for(lock: Path) -> None:
    """Take ``lock`` shared and release it at once; nothing if it does not exist (no
    registration ever held it)."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError:  # (a link or worse where a lock file should be: nothing waits on it)
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)
