"""Registering build outputs with group commit, off the build's critical path.

Theory of operation
-------------------
``LocalStore.register_built`` makes one path valid synchronously: archive, fsync the
object, fsync its directory, commit the row. In a build loop that is 2-5 ms of waiting
on the disk per derivation, as much as the sandbox itself. Here registration is split
in two, so the next build's sandbox runs while the disk catches up:

``stage`` (the builder's thread, right after the sandbox exits; shared GC lock held):

1. if the path is valid already, nothing to do;
2. canonicalise and archive the tree into an object file in the build's own temp dir
   (``tmp/build-*``, which GC leaves alone), hashing it — *no* fsync;
3. under the path's registration lock: drop a stale unregistered tree (a crashed
   writer's), rename ours to the real path and seal it; add the path to this process's
   temp roots (GC keeps temp-rooted trees even without a row). Remember the tree's
   identity (device, inode, ctime: inode numbers alone get reused).

From here the tree is usable as an input of later builds (``Pending`` answers their
closure queries) but the path is not valid: no row, so other processes see an
unregistered tree, which is exactly the state a crash between steps 6 and 7 of single
registration leaves. The builder keeps holding the derivation's output lock, so no
other ``kiln build`` builds it meanwhile.

``commit`` (the bookkeeping thread, in FIFO order after the builds it covers; every
staged output not yet committed goes in one batch):

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
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from . import db
from .errors import StoreError
from .importbatch import place_object
from .ingest import TreeIngest
from .locks import FileLock
from .objects import NarSink, fsync_dir, object_rel_path
from .pathinfo import PathInfo
from .trees import seal_top


@dataclass(frozen=True, slots=True)
class StagedOutput:
    """An output placed at its real path but not yet valid: its info (digests, refs,
    deriver), its not-yet-durable object file and the identity (inode, ctime) of the placed tree."""

    info: PathInfo
    obj: Path
    inode: tuple[int, int, int]  # st_dev, st_ino, st_ctime_ns: inode numbers get reused


def stage(
    store, path: str, tree: Path, references: Iterable[str], deriver: str | None, obj: Path
) -> StagedOutput | PathInfo:
    """Steps 1-3 for one output (``store`` is a LocalStore used from this thread only).
    Returns the existing info if ``path`` is valid already (``tree`` is left alone), or
    the staged output. ``obj`` is a new file name in the caller's build temp dir."""
    sp = store.parse_path(path)
    path = str(sp)
    refs = tuple(sorted(set(map(str, references))))
    with FileLock(store.gc_lock_path, shared=True):
        existing = store.query(path)
        if existing is not None:
            store._keep(path)
            return existing
        if os.lstat(tree).st_dev != os.stat(store.real_store).st_dev:
            # build dir on another file system: no cheap rename, register the usual way
            return store.register_built(path, tree, refs, deriver)
        fd = os.open(obj, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        sink = NarSink(fd)
        try:
            TreeIngest(sink).run(Path(tree), canonicalise=True)
        except BaseException:
            sink.abort()
            raise
        oi = sink.finish(sync=False)
        info = PathInfo(
            path, oi.nar_hash, oi.nar_size, refs, deriver, file_hash=oi.file_hash, file_size=oi.file_size
        )
        with FileLock(store._path_lock(sp)):
            existing = store.query(path)
            store._keep(path)
            if existing is not None:
                return existing
            real = store.real_store / sp.base
            if os.path.lexists(real):  # left by a crashed registration: not valid, replace it
                if os.path.isdir(real) and not os.path.islink(real):
                    os.chmod(real, 0o755)
                os.rename(real, obj.with_name(obj.name + ".stale"))
            os.rename(tree, real)
            seal_top(real)
            st = os.lstat(real)
    return StagedOutput(info, obj, (st.st_dev, st.st_ino, st.st_ctime_ns))


def commit(store, staged: list[StagedOutput], exclusive: contextlib.AbstractContextManager) -> list[PathInfo]:
    """Steps 4-5 for ``staged`` (in build order). ``store`` is the builder's LocalStore;
    its database is used only inside ``exclusive`` (the lock the builder's threads share
    it under). Returns the registered (or meanwhile registered by someone else) infos."""
    if not staged:
        return []
    with FileLock(store.gc_lock_path, shared=True):
        dirs: set[Path] = set()
        new_dirs = False
        for s in staged:
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
        with exclusive, contextlib.ExitStack() as locks:
            for lock in sorted({store._path_lock(store.parse_path(s.info.path)) for s in staged}):
                locks.enter_context(FileLock(lock))
            out: list[PathInfo] = []
            rows: list[tuple[PathInfo, str]] = []
            batch: set[str] = set()
            now = int(time.time())
            for s in staged:
                existing = store.query(s.info.path)
                if existing is not None:
                    out.append(existing)
                    batch.add(s.info.path)
                    continue
                sp = store.parse_path(s.info.path)
                try:
                    st = os.lstat(store.real_store / sp.base)
                except FileNotFoundError:
                    st = None
                if st is None or (st.st_dev, st.st_ino, st.st_ctime_ns) != s.inode:
                    raise StoreError(
                        f"cannot register {s.info.path}: its tree was removed or replaced by another "
                        "process before it was registered (build it again)"
                    )
                store._check_refs(s.info, also_valid=batch)
                info = replace(s.info, registration_time=now)
                rows.append((info, sp.hash_part))
                out.append(info)
                batch.add(info.path)
            db.insert_many(store.conn, rows)
    return out


class Pending:
    """Outputs staged by this builder and not yet committed: ``path -> PathInfo``,
    shared by the builder's threads (the build threads add, the committer removes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._infos: dict[str, PathInfo] = {}
        self._queue: list[tuple[StagedOutput, contextlib.ExitStack]] = []

    def add(self, staged: list[StagedOutput], locks: contextlib.ExitStack) -> None:
        """Queue ``staged`` (one derivation's outputs) with the locks to release once
        they are committed."""
        with self._lock:
            for s in staged:
                self._infos[s.info.path] = s.info
            self._queue.append((staged, locks))

    def take(self) -> list[tuple[list[StagedOutput], contextlib.ExitStack]]:
        with self._lock:
            q, self._queue = self._queue, []
            return q

    def done(self, paths: Iterable[str]) -> None:
        with self._lock:
            for p in paths:
                self._infos.pop(p, None)

    def get(self, path: str) -> PathInfo | None:
        with self._lock:
            return self._infos.get(path)

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._infos)


def closure(store, paths: Iterable[str], pending: Pending | None) -> list[str]:
    """The closure of ``paths`` over references, counting pending outputs as valid."""
    paths = sorted(set(map(str, paths)))
    if not pending:
        return store.closure(paths)
    seen: set[str] = set()
    valid: list[str] = []
    stack = list(paths)
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        info = pending.get(p)
        if info is None:
            valid.append(p)
        else:
            stack.extend(r for r in info.references if r not in seen)
    out = store.closure(valid) if valid else []
    have = set(out)
    return out + sorted(p for p in seen if p not in have)
