"""Repairing one path of the local store (``verify`` with ``repair=True``; the rules are
in ``verify``'s docstring). Runs under the path lock, with the GC lock held shared by the
caller. A tree is restored beside the path as ``<hash part>-repair-<rand>`` (a name GC
treats as a stray tree), sealed there and exchanged with the path in one directory, so
the valid path never lacks its tree nor, killed at any moment, has a writable one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import db, nar
from .errors import KilnError
from .ingest import TreeIngest
from .locks import FileLock, path_lock_file
from .nar_restore import fsync_dir, write_all
from .narsink import NarSink
from .objects import object_rel_path, publish_object
from .objread import read_object
from .pathinfo import PathInfo
from .quarantine import info_text
from .sigshield import finish
from .trees import canonicalise, exchange, remove_tree
from .verify import Problem, check_object

if TYPE_CHECKING:
    from .localstore import LocalStore


def repair_path(store: LocalStore, info: PathInfo, found: list[Problem]) -> tuple[list[Problem], bool]:
    """Repair one path (see the module docstring). The findings were made before any
    repair of this run: an object shared with a path repaired earlier may be good again,
    so the object is judged afresh here, under the path lock. A tree whose only problem
    is its metadata has the right NAR hash: it is good content, and can rebuild a bad
    object before being re-materialised from it."""
    sp = store.parse_path(info.path)
    tree_problem = any(p.kind.startswith("tree") for p in found)
    tree_content_bad = any(p.kind in ("tree-missing", "tree-corrupt") for p in found)
    tmp = store.tmp / f"{os.getpid()}-repair-{sp.hash_part}"
    remove_tree(tmp)
    tmp.mkdir()
    try:
        with FileLock(path_lock_file(store.root, sp.hash_part)):
            current = db.query(store.conn, info.path)  # a shared object may have moved
            if current is None:  # another repair got the lock first and quarantined it
                return _mark(found, "already invalidated by another process (see quarantine/)"), False
            info = current
            obj_bad = (
                any(p.kind.startswith("object") for p in found) and check_object(store, info) is not None
            )
            if not obj_bad and not tree_problem:
                return _mark(found, "the object was repaired with another path that shares it"), False
            if obj_bad and not tree_content_bad:
                msg = _rebuild_object(store, info, tmp)
                if tree_problem:  # metadata only: lay the tree out again from the new object
                    _rematerialise(store, db.query(store.conn, info.path) or info, tmp)
                    msg += "; tree re-materialised from it"
                return _mark(found, msg), False
            if not obj_bad:
                _rematerialise(store, info, tmp)
                return _mark(found, "re-materialised from the object"), False
            where = _quarantine(store, info)
            msg = f"quarantined to {where} and invalidated"
            refs = store.referrers(info.path)
            if refs:
                msg += f"; referrers now incomplete: {', '.join(refs[:5])}"
            return _mark(found, msg), True
    finally:
        remove_tree(tmp)


def _mark(found: list[Problem], msg: str) -> list[Problem]:
    """``found`` with its object and tree problems marked repaired by ``msg``."""
    return [replace(p, repaired=msg) if p.kind.startswith(("object", "tree")) else p for p in found]


def _rematerialise(store: LocalStore, info: PathInfo, tmp: Path) -> None:
    assert info.file_hash is not None and info.file_size is not None
    stream = read_object(
        store.objects / object_rel_path(info.file_hash),
        info.path,
        (info.file_hash, info.file_size),
        (info.nar_hash, info.nar_size),
    )
    real = store.real_path(info.path)
    # restored beside the path under a name GC treats as a stray tree (the hash part is
    # the path's, so no valid path can have it), sealed there, then exchanged in place:
    # same parent, so neither tree needs a writable top, and the valid path is never
    # without its tree nor, killed at any moment, left with a writable one
    new = real.parent / f"{real.name[:32]}-repair-{os.urandom(4).hex()}"
    try:
        nar.restore(stream, new, scratch=tmp)  # built in tmp (GC's if we are killed), moved in whole
        canonicalise(new, keep_top_writable=False)
        if os.path.lexists(real):
            exchange(new, real)  # ``new`` now names the previous tree
        else:
            os.rename(new, real)
    finally:
        # (to the end although a signal comes meanwhile: a cut removal left part of the
        # old tree in the store dir, a stray until verify or GC)
        finish(lambda: remove_tree(new))


def _rebuild_object(store: LocalStore, info: PathInfo, tmp: Path) -> str:
    fd = os.open(tmp / "object", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    sink = NarSink(fd)
    try:
        TreeIngest(sink).run(store.real_path(info.path))
    except BaseException:
        sink.abort()
        raise
    oi = sink.finish()
    if oi.nar_hash.digest != info.nar_hash.digest:  # the tree changed since we checked it
        raise KilnError(f"cannot repair {info.path}: its tree changed while being re-archived")
    old = store.objects / object_rel_path(info.file_hash) if info.file_hash else None
    final = store.objects / object_rel_path(oi.file_hash)
    # an unreadable "object" that is a directory: a rename cannot replace it
    _set_aside_if_directory(final, tmp / "bad-object")
    publish_object(tmp / "object", store.objects, oi.file_hash)
    db.set_file(store.conn, info.path, oi.file_hash, oi.file_size)  # durably: see db.set_file
    if old is not None and old.name.split(".")[0] != oi.file_hash.hex:
        assert info.file_hash is not None
        # the old object stays for GC, which deletes it once no row uses it: repair holds
        # the GC lock only shared, so a writer of another path with the same content may
        # be publishing a good copy under that name and registering it right now
        _set_aside_if_directory(old, tmp / "old-object")
    return f"object rebuilt from the tree ({oi.file_hash.hex[:16]}...)"


def _quarantine(store: LocalStore, info: PathInfo) -> Path:
    sp = store.parse_path(info.path)
    dest = _new_quarantine_dir(store.root / "quarantine", sp.base)
    fsync_dir(dest.parent)  # the entry itself survives a power cut, as info.txt in it will
    # what was invalidated, written before invalidating: a repair killed in between must
    # not lose the path without a word (the next run finds it broken and starts over)
    # (and what GC must keep alive while the path is wanted: ``quarantine``)
    _write_durably(dest / "info.txt", info_text(info))
    db.delete(store.conn, [info.path])  # invalidate first, durably (see db.delete)
    att = store.root / "attestations" / sp.hash_part
    if att.is_dir():  # they describe content that is no longer in the store: kept aside
        os.rename(att, dest / "attestations")
    real = store.real_path(info.path)
    if os.path.lexists(real):
        if real.is_dir() and not real.is_symlink():
            os.chmod(real, 0o755)
        os.rename(real, dest / "tree")
    if info.file_hash is not None:
        obj = store.objects / object_rel_path(info.file_hash)
        # The object is left where it is, for GC (see _rebuild_object's note; ``verify``
        # deletes it at once if the GC lock is free); a copy of its bytes goes with the
        # rest, as evidence: whole and durable, or not at all and said so in info.txt
        part = dest / f".{obj.name}.part"
        try:
            if stat.S_ISREG(os.lstat(obj).st_mode):
                shutil.copyfile(obj, part)
                with open(part, "rb") as f:
                    os.fsync(f.fileno())
                os.rename(part, dest / obj.name)
                fsync_dir(dest)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(part)
            with contextlib.suppress(OSError), open(dest / "info.txt", "a") as f:
                f.write(f"object copy: failed ({e.strerror or e})\n")
        _set_aside_if_directory(obj, dest / obj.name)
    return dest


def _new_quarantine_dir(parent: Path, base: str) -> Path:
    """A new, empty directory ``<base>-<time>`` in ``parent``, or ``<base>-<time>-<n>``
    if that name is taken: one path may be quarantined twice within a second
    (quarantined, fetched again, found broken again), and the second must neither
    overwrite the first one's record nor fail moving its tree into the first one's
    directory (after the row is gone). ``mkdir`` without ``exist_ok`` decides, so an
    existing directory is never reused."""
    stem, n = f"{base}-{int(time.time())}", 1
    while True:
        dest = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            dest.mkdir(parents=True)
            return dest
        except FileExistsError:
            n += 1


def _set_aside_if_directory(obj: Path, dest: Path) -> None:
    """Move a directory standing at an object's name to ``dest``: no writer can rename a
    file over it, so it is nobody's good copy, and it would stop the next writer of that
    content (a file is left for GC). Never raises: this is tidying, not the repair."""
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(os.lstat(obj).st_mode):
            os.chmod(obj, 0o755)  # moving a directory to another parent needs write access to it
            os.rename(obj, dest)


def _write_durably(path: Path, text: str) -> None:
    # O_EXCL: written into a directory just made (``_new_quarantine_dir``), never over a record
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
