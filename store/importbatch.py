"""Batched import of compressed objects with group commit (``LocalStore.import_objects``).

Registering paths one by one costs, per path, a temp dir, an object fsync, a directory
fsync, a database commit and a lock file; for the thousands of tiny paths of a
``kiln copy`` that is most of the time. A batch pays those once.

Protocol for one batch of up to ``batch_size()`` paths; the caller holds ``gc.lock``
shared for the whole call and gives a private temp dir:

1. stage each path: tee the compressed bytes to ``<k>.obj`` while decompressing them,
   restoring the tree canonically at ``<k>`` and hashing both; after the last byte the
   file hash/size (if the info has them) and the NAR hash/size must match, else
   ``HashMismatch``, and a ``ca`` must be true of the tree (``pathadmit.check_ca``), else
   ``ContentAddressError``; either way that path is not staged. Its signatures are
   filtered first (``pathadmit.admitted_sigs``: well-formed, each once, at most 64). Every reference must be valid already
   or staged earlier in the same call (dependencies first). Nothing is fsynced here;
2. take the (striped) registration locks of the batch's paths, each once, in ascending
   order (two batch importers cannot deadlock; single registrations hold one at a
   time) and drop paths that became valid meanwhile. If another live process has placed
   one of the paths' trees and not registered it yet (a build), release them all, wait
   for that process and start this step again;
3. add the paths to this process's temp roots;
4. link each object to its final name in ``objects/aa/`` *without replacing*: an
   existing object of that name is kept if its bytes hash right (another path has the
   same object, and it may already be some row's), replaced only if it does not (a
   torn leftover of a crash). Rename trees into the store dir (a stale unregistered
   tree left by a crash is moved away first) and seal their tops;
5. ``syncfs`` on the store's file system: one journal commit makes every staged object,
   its name and every tree durable (group commit instead of per-path fsyncs);
6. insert every row (with refs and sigs) in one transaction, each recorded as imported
   (``madehere``; made here only for ``add_texts``' own derivations); release the locks.

A crash anywhere before 6 leaves only stray objects and unregistered trees (GC removes
them, verify ignores them); a row is inserted only after its object is durable under
its final name — the same guarantee as single registration (docs/store.md). Step 4
never puts a not-yet-durable file in place of an object that hashes right, so a
concurrent registration's row cannot end up naming our unsynced bytes. If staging a
path fails, the paths staged before it are still committed, then the error is raised.

Stager threads write into ``tmp``, which the caller removes as soon as this returns or
raises: so it never returns or raises (an error, or Ctrl-C's/SIGTERM's
``KeyboardInterrupt``) while a staging runs. ``stop_stagers`` cancels the queued ones,
stops a streaming one at its next chunk and waits for the rest (in memory: at most
``SMALL_NAR`` bytes); a signal meanwhile is raised after that wait, not instead of it.
The main thread's calls into ``concurrent.futures`` run in ``sigshield`` regions.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import zstandard

from . import db, hookmarks, sigshield
from .errors import HashMismatch, StoreError
from .hashes import Hash
from .locks import FileLock, PlacerWait
from .nar_restore import write_all
from .objects import object_rel_path, sync_filesystem
from .objread import (
    TeeReader,
    check_digest,
    check_frames,
    decompress_verified,
    file_expectation,
    read_object,
)
from .pathadmit import admitted_sigs, check_ca, tree_content
from .pathinfo import PathInfo
from .trees import move_into_place, remove_tree, restore_canonical

if TYPE_CHECKING:
    from .localstore import LocalStore

#: Objects up to this size are staged in memory on ``STAGERS`` threads.
SMALL = 1 << 20
STAGERS = 2

#: Paths per group commit: enough to amortise a syncfs (tens of ms on a busy disk) and a
#: commit, small enough that a failure or a crash redoes little.
MAX_BATCH = 512


def batch_size() -> int:
    """Paths per batch: ``MAX_BATCH``, fewer under a very low descriptor limit (the
    commit holds up to 32 lock descriptors; staging a path needs a few)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_BATCH
    return MAX_BATCH if soft >= 64 else max(1, soft // 4)


@dataclass(frozen=True, slots=True)
class Staged:
    """A verified path waiting in the temp dir: its info (with the object's digest), its
    object file and its canonical tree."""

    info: PathInfo
    obj: Path
    tree: Path


def incoming(info: PathInfo) -> str:
    """How errors name the object being imported for ``info``: its path and the object's
    digest, which is its name in a registry (``nar/<nix32>.nar.zst``) and in a store
    (``objects/``, in hex); the staging file in the temp dir is gone by then."""
    if info.file_hash is None:
        return f"{info.path} (its object, of no recorded FileHash)"
    return f"{info.path} (object nar/{info.file_hash.nix32}.nar.zst)"


class StagingStopped(Exception):
    """A staging on a stager thread stopped early: the import is being abandoned."""


def _until(stop: threading.Event, chunks: Iterator[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        if stop.is_set():
            raise StagingStopped("staging stopped: the import is abandoned")
        yield chunk


def stage(info: PathInfo, zst: BinaryIO, tmp: Path, k: int, stop: threading.Event | None = None) -> Staged:
    """Step 1 for one path (see module docstring). Once ``stop`` is set the restore
    stops at its next chunk (``StagingStopped``): a small object may hold a large NAR."""
    tree, obj = tmp / str(k), tmp / f"{k}.obj"
    tee = TeeReader(zst, os.open(obj, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
    try:
        stream = decompress_verified(
            tee, incoming(info), file_expectation(info), (info.nar_hash, info.nar_size)
        )
        restore_canonical(stream if stop is None else _until(stop, stream), tree)
    finally:
        os.close(tee.fd)
    check_ca(info, tree_content(tree, info.nar_hash))  # the unsigned CA must be true
    return Staged(replace(info, file_hash=Hash("sha256", tee.sha.digest()), file_size=tee.size), obj, tree)


#: NARs up to this size, with their object in memory, are checked and restored in one
#: go (``stage_bytes``) instead of streaming.
SMALL_NAR = 8 << 20


def stage_bytes(info: PathInfo, data: bytes, tmp: Path, k: int) -> Staged:
    """``stage`` for a small object held in memory (``len(data) <= SMALL`` and
    ``info.nar_size <= SMALL_NAR``): every digest is checked before anything is
    written, and the NAR is decompressed and hashed in one call each."""
    what = incoming(info)
    file_hash = Hash("sha256", hashlib.sha256(data).digest())
    expect_file = file_expectation(info)
    if expect_file is not None:
        check_digest(what, "compressed file", expect_file, file_hash, len(data))
    try:
        # bounded by the announced size: a small object must not inflate without limit;
        # an object may hold several frames (see ``narsink``)
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as r:
            nar = r.read(info.nar_size + 1)
        check_frames(data, what)  # a stream cut after a block decompresses without error
    except zstandard.ZstdError as e:
        raise HashMismatch(
            f"compressed NAR of {what}", "a valid zstd stream", f"corrupt data ({e})"
        ) from None
    check_digest(
        what, "NAR", (info.nar_hash, info.nar_size), Hash("sha256", hashlib.sha256(nar).digest()), len(nar)
    )
    tree, obj = tmp / str(k), tmp / f"{k}.obj"
    fd = os.open(obj, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    restore_canonical([nar], tree)
    check_ca(info, tree_content(tree, info.nar_hash))
    return Staged(replace(info, file_hash=file_hash, file_size=len(data)), obj, tree)


def submit(
    pool: concurrent.futures.ThreadPoolExecutor,
    submitted: list[concurrent.futures.Future[Staged]],
    fn: Callable[..., Staged],
    *args: object,
) -> concurrent.futures.Future[Staged]:
    """``pool.submit(fn, *args)``, recorded in ``submitted`` (for ``stop_stagers``), in a
    ``sigshield`` region: a signal's exception cut into it could leave the pool's lock
    held, or a future that runs but is not recorded."""
    with sigshield.shielded:
        f = pool.submit(fn, *args)
        submitted.append(f)
    return f


def result(f: concurrent.futures.Future[Staged] | Staged) -> Staged:
    """``f.result()`` (or ``f`` itself), waited for in a ``sigshield`` region, polled: a
    signal that comes meanwhile is raised within ``sigshield.POLL``."""
    if not isinstance(f, concurrent.futures.Future):
        return f
    with sigshield.shielded:
        while not f.done() and not sigshield.pending():
            concurrent.futures.wait([f], timeout=sigshield.POLL)
    return f.result()


def stop_stagers(
    pool: concurrent.futures.ThreadPoolExecutor,
    submitted: list[concurrent.futures.Future[Staged]],
    stop: threading.Event,
    abandon: bool,
) -> None:
    """Shut ``pool`` down; return once none of ``submitted`` runs. If the import is
    abandoned (``abandon``, or an interrupt comes meanwhile) the queued stagings are
    cancelled and ``stop`` is set; else every one finishes. An interrupt meanwhile
    (deferred by kiln's handlers; another handler's is caught) is raised after the wait:
    the temp dir the stagers write in is removed next."""
    interrupt: BaseException | None = None
    shut: bool | None = None  # the last shutdown: with cancelling or not
    with sigshield.shielded:
        while True:
            try:
                abandon = abandon or interrupt is not None or sigshield.pending()
                if abandon:
                    stop.set()
                if shut is None or (abandon and not shut):
                    pool.shutdown(wait=False, cancel_futures=abandon)
                    shut = abandon
                running = [f for f in submitted if not f.done()]
                if not running:
                    break
                concurrent.futures.wait(running, timeout=sigshield.POLL)
            except KeyboardInterrupt as e:
                interrupt = interrupt or e
        pool.shutdown(wait=True)  # (idle workers, told to exit: no wait to speak of)
    if interrupt is not None:
        raise interrupt


def place_object(obj: Path, final: Path, file_hash: Hash, file_size: int) -> None:
    """Step 4 for one object: ``final`` gets ``obj``'s bytes unless it already holds a
    correct copy (``link`` never replaces; a wrong existing file is replaced)."""
    try:
        os.link(obj, final)
    except FileExistsError:
        try:
            for _ in read_object(final, str(final), (file_hash, file_size), None):
                pass
            return  # a correct copy is there already
        except (HashMismatch, StoreError):
            os.rename(obj, final)


def commit(
    store: LocalStore, staged: list[Staged], tmp: Path, made_here: bool = False
) -> dict[str, PathInfo]:
    """Steps 2-6 for ``staged`` (paths sorted or not; each path once). Returns the
    registered (or meanwhile registered by someone else) info of every path."""
    if not staged:
        return {}
    out: dict[str, PathInfo] = {}
    sps = {s.info.path: store.parse_path(s.info.path) for s in staged}
    wait: PlacerWait | None = None
    with contextlib.ExitStack() as locks:
        while True:
            for lock in sorted({store._path_lock(sp) for sp in sps.values()}):
                locks.enter_context(FileLock(lock))
            placed = next(((p, pid) for p, sp in sps.items() if (pid := store._placer(sp)) is not None), None)
            if placed is None:
                break
            # another process's build placed one of these and will register it soon:
            # its tree may be in use, so wait for it with no lock held (see
            # ``Registering._registration_lock``), then look at the batch afresh
            locks.close()
            wait = wait or PlacerWait(placed[0])
            wait.sleep(placed[1])
        todo: list[Staged] = []
        for s in staged:
            existing = store.query(s.info.path)
            if existing is not None:
                out[s.info.path] = existing
            else:
                todo.append(s)
        store.temproots.add([s.info.path for s in staged], locked=True)
        store._registered.extend(s.info.path for s in staged)
        now = int(time.time())
        have_dirs = set(os.listdir(store.objects))
        rows: list[tuple[PathInfo, str]] = []
        for s in todo:
            assert s.info.file_hash is not None
            final = store.objects / object_rel_path(s.info.file_hash)
            if final.parent.name not in have_dirs:
                final.parent.mkdir(exist_ok=True)  # made durable by the syncfs below
                have_dirs.add(final.parent.name)
            place_object(s.obj, final, s.info.file_hash, s.info.file_size or 0)
            sp = sps[s.info.path]
            move_into_place(s.tree, store.real_store / sp.base, tmp / f"stale-{sp.hash_part}")
            info = replace(s.info, registration_time=now)
            rows.append((info, sp.hash_part))
            out[info.path] = info
        if rows:
            sync_filesystem(store.objects)
            # before the rows: a kill between the two leaves no free marker on a valid import
            hookmarks.drop_free(store, [info.path for info, _ in rows])
            db.insert_many(store.conn, rows, ultimate=made_here)
    return out


def import_objects(
    store: LocalStore, items: Iterable[tuple[PathInfo, BinaryIO]], tmp: Path, made_here: bool = False
) -> list[PathInfo]:
    """The body of ``LocalStore.import_objects`` (caller holds the shared GC lock and
    owns ``tmp``).

    Small objects (``file_size`` known and at most ``SMALL``) are read into memory and
    staged on ``STAGERS`` threads: most of staging a small path is creating two inodes,
    kernel work that runs outside the GIL, so the threads keep both cores busy. Larger
    ones are staged on the calling thread, streaming. The prefix rule still holds: if
    staging a path fails, only the paths before it (in ``items`` order) are committed."""
    limit = batch_size()
    results: list[PathInfo | str] = []  # an info, or the path whose batch is pending
    done: dict[str, PathInfo] = {}
    staged: list[concurrent.futures.Future[Staged] | Staged] = []
    submitted: list[concurrent.futures.Future[Staged]] = []  # not known to be done
    pending: set[str] = set()
    stop = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(STAGERS, thread_name_prefix="kiln-stage")
    slots = [tmp / f"s{i}" for i in range(STAGERS)]
    for d in slots:
        d.mkdir()

    def flush() -> None:
        ok: list[Staged] = []
        error: BaseException | None = None
        for f in staged:
            try:
                ok.append(result(f))
            except Exception as e:  # noqa: BLE001 - re-raised below, after the prefix commits
                error = e
                break
        done.update(commit(store, ok, tmp, made_here))
        for st in ok:
            with contextlib.suppress(FileNotFoundError):
                remove_tree(st.tree)  # only there if someone else registered the path
            with contextlib.suppress(FileNotFoundError):
                os.unlink(st.obj)
        staged.clear()
        pending.clear()
        submitted[:] = [f for f in submitted if not f.done()]
        if error is not None:
            raise error

    try:
        for k, (info, zst) in enumerate(items):
            info = admitted_sigs(info, store_root=store.root)
            store._check_importable(info, also_valid=pending)
            if info.path in pending or info.path in done:
                results.append(info.path)
                continue
            existing = store.query(info.path)
            if existing is not None:
                store._keep(info.path)
                results.append(existing)
                continue
            if info.file_size is not None and info.file_size <= SMALL:
                data = zst.read(SMALL + 1)  # more than announced: the file check reports it
                # one directory per slot: creating entries in one directory from two
                # threads makes them spin on its inode lock instead of working in parallel
                slot = slots[k % STAGERS]
                if info.nar_size <= SMALL_NAR:
                    staged.append(submit(pool, submitted, stage_bytes, info, data, slot, k))
                else:
                    staged.append(submit(pool, submitted, stage, info, io.BytesIO(data), slot, k, stop))
            else:
                staged.append(stage(info, zst, slots[0], k))
            pending.add(info.path)
            results.append(info.path)
            if len(staged) >= limit:
                flush()
    except BaseException as e:
        stop_stagers(pool, submitted, stop, True)  # (an interrupt meanwhile is raised from here)
        if not isinstance(e, KeyboardInterrupt):
            # what verified so far is registered, then the failure is reported (an
            # interrupt meanwhile is reported instead)
            with contextlib.suppress(Exception):
                flush()
        raise
    stop_stagers(pool, submitted, stop, False)
    flush()
    return [done[r] if isinstance(r, str) else r for r in results]
