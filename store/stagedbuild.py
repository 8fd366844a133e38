"""Registering build outputs with group commit, off the build's critical path.

Theory of operation
-------------------
``LocalStore.register_built`` makes one path valid synchronously: archive, fsync the
object, fsync its directory, commit the row. In a build loop that is 2-5 ms of waiting
on the disk per derivation, as much as the sandbox itself. Here registration is split
in two, so the next build's sandbox runs while the output is compressed and the disk
catches up:

``place`` (the builder's thread, right after the sandbox exits; shared GC lock held):

1. canonicalise the output in place (modes 0444/0555, mtime 1), refusing setuid/setgid
   files, devices, sockets and fifos;
2. under the path's registration lock: if the path is valid already, keep it; else
   drop a stale unregistered tree (a crashed writer's), rename ours to the real path
   and seal it; add the path to this process's temp roots (GC keeps temp-rooted trees
   even without a row). Remember the tree's identity (device, inode, ctime: inode
   numbers alone get reused).

From here the tree is usable as an input of later builds (``Pending`` answers their
closure queries) but the path is not valid: no row, so other processes see an
unregistered tree, which is exactly the state a crash between steps 6 and 7 of single
registration leaves. The builder keeps holding the derivation's output lock, so no
other ``kiln build`` builds it meanwhile.

``archive`` (the bookkeeping thread): 3. serialise the placed tree (canonical and
read-only, so reading it while a later build has it mounted is safe) into an object
file in the build's own temp dir (``tmp/build-*``, which GC leaves alone), hashing the
NAR and the compressed object — *no* fsync — and check the tree's identity again. A
concurrent import of the same path (substitution, ``kiln copy``: they do not take the
output lock) may have replaced the placed tree and registered the path meanwhile; that
registration is then accepted (``StagedOutput.taken``) instead of failing the build.

``commit`` (the bookkeeping thread, in FIFO order after the builds it covers; every
placed output not yet committed is archived and goes in one batch):

4. fsync every object file of the batch (one journal commit covers them all), link it
   to its final name in ``objects/`` (content-addressed: an existing correct object is
   kept), fsync the object directories;
5. under the registration locks (sorted), for each path: if someone registered it
   meanwhile, keep theirs; else check the real path still holds our tree (same identity)
   and every reference is valid or earlier in the batch; insert all rows in one
   transaction. Now the paths are valid. Then the output locks are released.

Guarantees are those of single registration (``docs/store.md``): a row exists only
after its object is durable under its final name; a crash before 5 leaves only
unregistered trees and stray objects (GC removes them, verify ignores them). Outputs
are committed in build order, so a path's references are always committed no later
than the path itself.

Step 3 fails with a ``StoreError`` naming the output and what failed (an ``OSError``
writing the object, a full disk or ``ulimit -f``, included); steps 4-5 with a
``StoreError`` or an ``OSError`` (an object that cannot be put in place). The build loop
takes either as the failure of that derivation alone (``buildcommit``). ``Pending`` and
the closures that count its outputs live in ``pendingoutputs`` (re-exported here).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import db
from .errors import KilnError, StoreError
from .importbatch import place_object
from .ingest import TreeIngest
from .locks import FileLock
from .narsink import NarSink
from .objects import fsync_dir, object_rel_path
from .outputerrors import canonicalise_named, output_os_error
from .pathinfo import PathInfo
from .pendingoutputs import Pending as Pending  # re-exported: callers import it from here
from .pendingoutputs import Queued as Queued
from .pendingoutputs import closure as closure
from .pendingoutputs import closure_parts as closure_parts
from .trees import move_into_place, remove_tree

if TYPE_CHECKING:
    from .localstore import LocalStore


@dataclass(frozen=True, slots=True)
class Placed:
    """An output canonicalised and moved to its real path, not yet archived or valid:
    its references and deriver, where its object file is to go (the build's temp dir)
    and the identity of the placed tree (device, inode, ctime: inode numbers get reused)."""

    path: str
    references: tuple[str, ...]
    deriver: str | None
    obj: Path
    identity: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class StagedOutput:
    """A placed output archived: its info (digests, refs, deriver), its not-yet-durable
    object file and the identity of the placed tree. ``taken``: another process (an
    import of the same path) replaced the placed tree and registered the path before it
    was archived; ``info`` is then that registration's and ``obj`` is not used."""

    info: PathInfo
    obj: Path
    identity: tuple[int, int, int]
    taken: bool = False


def _identity(p: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def _check_identity(real: Path, path: str, identity: tuple[int, int, int]) -> None:
    """``StoreError`` unless ``real`` is still the tree placed for ``path``."""
    if _identity(real) != identity:
        raise StoreError(
            f"cannot register {path}: its tree was removed or replaced by another process "
            "before it was registered (build it again)"
        )


def place(
    store: LocalStore,
    path: str,
    tree: Path,
    references: Iterable[str],
    deriver: str | None,
    obj: Path,
    canonical: bool = False,
    stop: Callable[[], bool] | None = None,
) -> Placed | PathInfo:
    """Steps 1-2 for one output, on the build thread (``store`` used from this thread
    only): canonicalise ``tree`` in place (refusing setuid/setgid files, devices,
    sockets, fifos), then under the path's registration lock move it to the real path
    and seal it. Returns the existing info if ``path`` is valid already (``tree`` is
    left alone; a build dir on another file system is registered at once instead).
    ``obj`` is a new file name in the caller's build temp dir for ``archive``;
    ``canonical`` says the caller ran ``canonicalise_output`` on ``tree`` already;
    ``stop`` bounds that immediate registration as it does ``archive``."""
    sp = store.parse_path(path)
    path = str(sp)
    refs = tuple(sorted(set(map(str, references))))
    with FileLock(store.gc_lock_path, shared=True):
        if os.lstat(tree).st_dev != os.stat(store.real_store).st_dev:
            # build dir on another file system: no cheap rename, register the usual way
            return store.register_built(path, tree, refs, deriver, stop=stop)
        if not canonical:
            canonicalise_named(Path(tree), path)
        with FileLock(store._path_lock(sp)):
            existing = store.query(path)
            store._keep(path)
            if existing is not None:
                return existing
            real = store.real_store / sp.base
            move_into_place(Path(tree), real, obj.with_name(obj.name + ".stale"))
            ident = _identity(real)
    assert ident is not None
    return Placed(path, refs, deriver, obj, ident)


def unplace(store: LocalStore, placed: Placed) -> None:
    """Undo ``place`` for an output that will not be registered (a sibling output of
    the same build was refused): remove its tree if it is still the one placed and the
    path did not become valid meanwhile. Never raises: the build's own error is what
    to report, and GC removes an unregistered tree anyway."""
    sp = store.parse_path(placed.path)
    real = store.real_store / sp.base
    with (
        contextlib.suppress(OSError, KilnError),
        FileLock(store.gc_lock_path, shared=True),
        FileLock(store._path_lock(sp)),
    ):
        if store.query(placed.path) is None and _identity(real) == placed.identity:
            remove_tree(real)


def archive(store: LocalStore, placed: Placed, stop: Callable[[], bool] | None = None) -> StagedOutput:
    """Step 3, on the bookkeeping thread: archive the placed tree (canonical and
    read-only, so reading it while later builds have it mounted is safe) into
    ``placed.obj``, hashing the NAR and the compressed object; no fsync. Raises
    ``StoreError`` if the tree was replaced meanwhile or the object cannot be written
    (an ``OSError``, named), ``ingest.IngestStopped`` once ``stop()`` is true (asked per
    MiB archived: a build's ``--timeout`` bounds it)."""
    real = store.real_store / store.parse_path(placed.path).base
    try:
        fd = os.open(placed.obj, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StoreError(_object_error(placed.path, e)) from None
    sink = NarSink(fd)
    try:
        TreeIngest(sink, stop=stop).run(real)
    except BaseException as e:
        sink.abort()
        if isinstance(e, OSError) and e is getattr(sink.output, "error", None):  # writing, not reading
            raise StoreError(_object_error(placed.path, e)) from None
        # the tree vanished under the walk: fine if someone registered the path instead
        other = _registered_meanwhile(store, placed) if isinstance(e, (OSError, KilnError)) else None
        if other is not None:
            return other
        if isinstance(e, OSError):  # named: the output, and the file in it
            raise StoreError(output_os_error(placed.path, real, "archive", e)) from None
        raise
    try:
        oi = sink.finish(sync=False)  # (aborts the sink if it fails)
    except OSError as e:  # the last pieces of the object: its own write failed
        raise StoreError(_object_error(placed.path, e)) from None
    if _identity(real) != placed.identity:
        other = _registered_meanwhile(store, placed)
        if other is not None:
            return other
        _check_identity(real, placed.path, placed.identity)
    info = PathInfo(
        placed.path,
        oi.nar_hash,
        oi.nar_size,
        placed.references,
        placed.deriver,
        file_hash=oi.file_hash,
        file_size=oi.file_size,
    )
    return StagedOutput(info, placed.obj, placed.identity)


def _object_error(path: str, e: OSError) -> str:
    """The error for an ``OSError`` writing the object of output ``path`` (``archive``)."""
    limit = " (above this process's file size limit, ulimit -f)" if e.errno == errno.EFBIG else ""
    why = e.strerror or type(e).__name__
    return f"cannot archive output {path}: {why} writing its compressed copy in the store's tmp/{limit}"


def _registered_meanwhile(store: LocalStore, placed: Placed) -> StagedOutput | None:
    """After the placed tree was found replaced: the path's registration by another
    process (an import of the same path does not take the build's output lock), or None.
    Asked under the path's registration lock, which a registrant holds from replacing
    the tree to committing its row: a replaced tree with no row yet is waited for."""
    sp = store.parse_path(placed.path)
    with FileLock(store.gc_lock_path, shared=True), FileLock(store._path_lock(sp)):
        info = store.query(placed.path)
    if info is None:
        return None
    return StagedOutput(info, placed.obj, placed.identity, taken=True)


def stage(
    store: LocalStore, path: str, tree: Path, references: Iterable[str], deriver: str | None, obj: Path
) -> StagedOutput | PathInfo:
    """``place`` then ``archive``, on one thread (the existing info if already valid)."""
    placed = place(store, path, tree, references, deriver, obj)
    return archive(store, placed) if isinstance(placed, Placed) else placed


def commit(store: LocalStore, staged: list[StagedOutput]) -> list[PathInfo]:
    """Steps 4-5 for ``staged`` (in build order), with ``store`` used from this thread
    only. Returns the registered (or meanwhile registered by someone else) infos."""
    if not staged:
        return []
    with FileLock(store.gc_lock_path, shared=True):
        dirs: set[Path] = set()
        new_dirs = False
        for s in staged:
            if s.taken:  # valid already, with its own object: ours was never made
                continue
            assert s.info.file_hash is not None
            fd = os.open(s.obj, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            final = store.objects / object_rel_path(s.info.file_hash)
            if not final.parent.is_dir():
                final.parent.mkdir(exist_ok=True)
                new_dirs = True
            place_object(s.obj, final, s.info.file_hash, s.info.file_size or 0)
            dirs.add(final.parent)
        for d in sorted(dirs):
            fsync_dir(d)
        if new_dirs:
            fsync_dir(store.objects)
        with contextlib.ExitStack() as locks:
            for lock in sorted({store._path_lock(store.parse_path(s.info.path)) for s in staged}):
                locks.enter_context(FileLock(lock))
            out: list[PathInfo] = []
            rows: list[tuple[PathInfo, str]] = []
            # staged in build order, each derivation's outputs references-first
            # (buildplan.refs_first): a path's references are valid or earlier in the batch
            batch: set[str] = set()
            now = int(time.time())
            for s in staged:
                existing = store.query(s.info.path)
                if existing is not None:
                    out.append(existing)
                    batch.add(s.info.path)
                    continue
                sp = store.parse_path(s.info.path)
                _check_identity(store.real_store / sp.base, s.info.path, s.identity)
                store._check_refs(s.info, also_valid=batch)
                info = replace(s.info, registration_time=now)
                rows.append((info, sp.hash_part))
                out.append(info)
                batch.add(info.path)
            db.insert_many(store.conn, rows, ultimate=True)  # (made here: ``madehere``)
    return out
