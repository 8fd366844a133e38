"""Garbage collection of the local store.

GC decides what goes and moves it out of the store under the *exclusive* GC lock, so no
registration is in flight (they hold it shared from their first temp file to their
committed row), and deletes it after releasing the lock (``gcremove.Trash``): a writer
waits for the decisions and renames, not for the unlinks. Under the lock:

1. roots = every store path named by ``gcroots/`` (recursively: a symlink to a logical
   or real store path or to a path inside one, a symlink to a symlink that ends in the
   store - e.g. a ``result`` link - or a regular file holding a path; each read by
   ``roots.named_path``, which also finds a path through a moved store root) plus the temp
   roots of live processes (``temprootscan.live_temp_roots``; files of dead processes are
   deleted);
2. live = closure of the roots over ``gcedges``: references, recorded derivers
   (keep-derivations), the outputs of live ``.drv`` files unless the store's
   ``keep_outputs`` is false (keep-outputs: what building a rooted result again takes),
   and, for a path ``verify --repair`` quarantined, the references and deriver it
   recorded (``quarantine``): while it is rooted or referenced and has no row, they are
   what building or fetching it again needs, and its record is never deleted;
3. dead = valid paths not live. Their rows are deleted first, in one transaction, made
   durable (from then on they are merely garbage files: a crash here is harmless), then
   their trees are renamed into this GC's ``tmp/gc-<pid>-<rand>/`` (its trash), as are
   their attestations (they describe content that is gone) and any attestation directory
   whose hash part has no row (left by a GC killed after deleting rows).
   A path whose tree this user cannot remove (a directory in it another user owns:
   root wrote into this store) is not dead: it keeps its row and its closure, and is
   reported as kept; a rename or removal that fails anyway is reported, and the rest
   goes on (``gcremove``);
4. objects no remaining row uses are renamed into the trash (one object can back several
   paths with identical NARs; it goes only when none of them is valid), as are
   unregistered trees left by crashed registrations (only entries named like a store
   path base, ``<hash>-<name>``: anything else in the store dir is never touched; and
   not those a live process roots: a build's staged outputs, ``stagedbuild``) and store
   writers' entries in ``tmp/``; the build loop's and ``--check``'s dirs and other GCs'
   trash whose owner died (each is flocked while in use, ``buildtmp``; the FUSE mounts a
   killed ``--vary`` rebuild left in one are taken down first, ``mounts``) are adopted:
   GC takes their lock; the per-path lock files go (a build lock only if nobody holds
   it; a signing-hook marker, ``hookmarks``, only if nobody holds it and its path is not
   valid);
5. beside the store paths (``gcside``): the build logs of derivations nothing live or
   rooted leads to, failed builds' ``tmp/kiln-failed-*`` dirs older than
   ``keep_failed_days`` that no running build may still be filling, eval-cache
   entries unused for ``eval_cache_days``, and the quarantine records that can no longer
   matter (their path valid and live again, or not live: ``gcquarantine``) older than
   ``keep_quarantine_days`` are renamed into the trash too.

Then, without the lock, the trash, the adopted dirs and the small temp files of killed
writers are deleted: nothing there is any other process's (a writer registering a dead
path again meanwhile writes a new tree and object). A GC killed before it finished
leaves its trash unlocked: the next GC adopts it; a running GC's (locked) is left alone.

At the end (not in a dry run) the database gives back its free pages when a large share
of it is free (``dbcompact``: a ``VACUUM``; a failure there is a warning, never an error).

The store's reserved space (``reserve``) is deleted first, so a collection runs on a
full disk (its trash, and the deletion of the rows in the WAL, need space; ``kiln store
gc`` deletes it before it even opens the database, which needs space too), and made
again at the end, even after an error (``reserve.restore``). The trash is made before
any row is deleted: a full disk stops a collection there, with every row in place.

``dry_run`` does the same computation and reports what would go (paths, unregistered
trees, objects, leftover ``tmp/`` dirs, logs, failed builds' dirs, eval-cache entries,
quarantine records, with their bytes) without deleting anything, not even dead
processes' temp-roots files.
The bytes are counted twice (``gcremove.Sizes``): the blocks freed on disk, and the
apparent size of the regular files.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import attestations, db, gcside, hookmarks, reserve
from .buildtmp import owner_gone
from .dbcompact import compact
from .gcedges import gc_edges
from .gcquarantine import StaleRecord
from .gcremove import Progress, Sizes, Trash, inspect_tree, remove, size, size_beside_mounts, total
from .locks import FileLock, remove_if_free
from .mounts import MOUNTINFO, mounts_below, unmount_below
from .roots import each_root
from .storeconfig import config_gc_days
from .storescan import attestation_dirs, dead_writers_files, object_files, stray_tree_names, used_objects
from .temprootscan import live_temp_roots

_WRITER_TMP = re.compile(r"^\d+-")
#: dirs flocked by their owner while in use (``buildtmp``; a GC's trash, ``gcremove``)
_OWNED_TMP = re.compile(r"^(build|check|vary|gc)-")

if TYPE_CHECKING:
    from .localstore import LocalStore


@dataclass(frozen=True, slots=True)
class GcReport:
    """What a collection deleted (or would delete, when ``dry_run``)."""

    dry_run: bool
    roots: tuple[str, ...]
    deleted: tuple[str, ...]
    stray_trees: tuple[str, ...]
    objects_deleted: int
    #: the apparent size of what goes (its regular files' bytes: ``gcremove.Sizes``)
    bytes_freed: int
    #: leftover working dirs in ``tmp/`` (of dead writers and builds), counted in the bytes
    tmp_dirs: tuple[str, ...] = ()
    #: leftover dirs kept, each with why: something is mounted there that GC cannot take down
    kept: tuple[str, ...] = ()
    #: quarantine records (``quarantine``) that could not be read, each with why: what
    #: those paths referenced was not kept alive for them
    unread_quarantine: tuple[str, ...] = ()
    #: the blocks what goes frees on disk (``st_blocks * 512``; ``gcremove.Sizes``)
    disk_bytes_freed: int = 0
    #: build logs of derivations nothing keeps (``gcside``), failed builds' ``tmp/kiln-failed-*``
    #: dirs past ``keep_failed_days`` and eval-cache entries unused for ``eval_cache_days``
    logs: tuple[str, ...] = ()
    failed_dirs: tuple[str, ...] = ()
    eval_cache_entries: tuple[str, ...] = ()
    #: quarantine records that can no longer matter, past ``keep_quarantine_days`` (``gcquarantine``)
    quarantine_dirs: tuple[StaleRecord, ...] = ()
    #: the bytes the database file gave back (``dbcompact``; 0: not compacted)
    db_bytes_freed: int = 0


def find_roots(store: LocalStore, stale_tmp: list[str] | None = None) -> set[str]:
    """Store paths named by ``gcroots/``, each read as ``roots.named_path`` reads it (see
    the module docstring). ``add_root``'s leftover temporary links are not roots; they
    are appended to ``stale_tmp`` if given."""
    return {r.path for r in each_root(store, stale_tmp) if r.path is not None}


def collect(
    store: LocalStore,
    dry_run: bool = False,
    progress: Progress | None = None,
    keep_outputs: bool | None = None,
    keep_failed_days: int | None = None,
    eval_cache_days: int | None = None,
    keep_quarantine_days: int | None = None,
) -> GcReport:
    """Collect (see the module docstring); ``progress`` is told how the deletion after
    the lock is released goes (entries removed, entries in all); ``keep_outputs``: keep
    the outputs of live derivations (``gcedges``; None: the store's setting);
    ``keep_failed_days``, ``eval_cache_days``: how old a failed build's dir and an unused
    eval-cache entry get before they go (``gcside``; None: the store's config, else 7
    and 30 days; 0: any age); ``keep_quarantine_days``: how old a quarantine record that
    can no longer matter gets before it goes (``gcquarantine``; None: the store's config,
    else 30 days; 0: any age)."""
    trash: Trash | None = None
    released = store.reserve_released + reserve.release(store.root)
    store.reserve_released = 0
    try:
        days = (
            config_gc_days(store.root, "keep_failed_days") if keep_failed_days is None else keep_failed_days,
            config_gc_days(store.root, "eval_cache_days") if eval_cache_days is None else eval_cache_days,
            config_gc_days(store.root, "keep_quarantine_days")
            if keep_quarantine_days is None
            else keep_quarantine_days,
        )
        with FileLock(store.gc_lock_path):
            if not dry_run:
                trash = Trash(store.tmp)
            report = _under_lock(store, trash, keep_outputs, days)
        if trash is None:
            return report
        # the GC lock is free: writers and builds go on while the garbage is deleted
        kept = [*report.kept, *trash.empty(progress)]
        # small temp files of writers killed mid-write (``storeconfig.init_config``, build
        # logs, the eval cache): told by their pid and age, not by the lock
        for f in dead_writers_files(store.root):
            f.unlink(missing_ok=True)
        report = replace(report, kept=tuple(kept))  # (with what could not be removed)
    finally:
        if trash is not None:
            trash.close()  # (after an error: what is in it is the next GC's)
        reserve.restore(store.root, store.reserved, released)
    # after the reserve is back: the WAL a VACUUM fills must not take the space kept for GC
    done = compact(store.conn, store.root / "db.sqlite")
    why = () if done.not_done is None else (f"{store.root / 'db.sqlite'} at its size: {done.not_done}",)
    return replace(report, kept=(*report.kept, *why), db_bytes_freed=done.freed)


def _under_lock(
    store: LocalStore, trash: Trash | None, keep_outputs: bool | None, days: tuple[int, int, int]
) -> GcReport:
    """Decide what goes and, unless this is a dry run (``trash`` None), delete the rows
    and move it into ``trash`` (or adopt it there). Call with the exclusive GC lock."""
    dry_run = trash is None
    stale_root_links: list[str] = []
    roots = find_roots(store, stale_root_links) | live_temp_roots(
        store.root / "temproots", delete_dead=not dry_run
    )
    # references, derivers (keep-derivations), outputs of live .drvs (keep-outputs) and
    # quarantine records: ``gcedges``, shared with ``kiln store why``
    edges = gc_edges(store, keep_outputs)
    refs, unread = edges.refs, edges.unread
    known = edges.known
    live: set[str] = set()

    def keep_alive(starts: list[str]) -> None:
        stack = [r for r in starts if r in known]
        while stack:
            p = stack.pop()
            if p in live:
                continue
            live.add(p)
            stack.extend(r for r in edges(p) if r in known and r not in live)

    keep_alive(list(roots))
    dead = sorted(set(refs) - live)

    valid_bases = {p.rsplit("/", 1)[1] for p in refs}
    # an unregistered tree that a live process roots is being registered (a build's
    # staged output, ``stagedbuild``): not garbage
    rooted_bases = {p.rsplit("/", 1)[1] for p in roots}
    stray = [name for name in stray_tree_names(store) if name not in valid_bases and name not in rooted_bases]
    kept: list[str] = []
    # a tree this user cannot remove (another user's: root wrote into this store with
    # ``sudo -E kiln build``) keeps its row, and so its closure: deleting the row first
    # left it unregistered for good, and the collection stopped at it, every time
    sizes: dict[str, Sizes] = {}
    blocked: dict[str, str] = {}
    euid = os.geteuid()
    for base in [p.rsplit("/", 1)[1] for p in dead] + stray:
        sizes[base], why = inspect_tree(store.real_store / base, euid)
        if why is not None:
            blocked[base] = why
    if blocked:
        keep_alive([p for p in dead if p.rsplit("/", 1)[1] in blocked])
        dead = sorted(set(refs) - live)
        stray = [s for s in stray if s not in blocked]
        for base, why in sorted(blocked.items()):
            what = "its row is kept, with what it references" if base in valid_bases else "unregistered"
            fix = f"as root: chown -R {euid} {shlex.quote(str(store.real_store / base))}"
            kept.append(f"{store.store_dir}/{base}: {why}; {what} (for GC to remove it, {fix})")
    # attestations of paths without a row (a GC killed between deleting rows and
    # removing them, a quarantine): they would attach to the path if it came back
    # with other content. Paths being registered have rows before attestations.
    live_hash_parts = {b[:32] for b in valid_bases - {p.rsplit("/", 1)[1] for p in dead}}
    live_hash_parts |= {b[:32] for b in rooted_bases}
    att_dirs = attestation_dirs(store)
    orphan_atts = [h for h in att_dirs if h not in live_hash_parts]
    att_temp = attestations.stale_temp(store, [h for h in att_dirs if h in live_hash_parts])
    used_after = used_objects(store, exclude=set(dead))
    doomed_objects = [o for o in object_files(store) if o.name.split(".", 1)[0] not in used_after]
    # logs, kept failed builds, the eval cache, quarantine records: before the ``tmp/``
    # dirs are adopted below (its check of who holds a build dir must not find this GC's
    # own locks)
    side = gcside.plan(store.root, store.store_dir, live, roots, edges, *days)
    kept.extend(side.kept)

    # store writers' dirs (``<pid>-<hex>``) are stale: every writer is excluded now. The
    # build loop's ``build-*`` and ``check-*`` live longer than the GC lock: each is
    # flocked by its owner (``buildtmp``), as are ``--vary``'s ``vary-*`` and another
    # GC's trash ``gc-*`` (it deletes without the lock), so one nobody holds is a dead
    # process's: adopted right here (its lock taken and kept, ``gcremove.Trash``).
    # ``kiln-failed-*`` go by age (``gcside``, above).
    tmp_entries = list(os.scandir(store.tmp))
    writers_tmp = [e.path for e in tmp_entries if _WRITER_TMP.match(e.name)]
    doomed_tmp = sorted(
        writers_tmp
        + [
            e.path
            for e in tmp_entries
            if _OWNED_TMP.match(e.name)
            and e.is_dir(follow_symlinks=False)
            and (owner_gone(e.path) if trash is None else trash.adopt(e.path))
        ]
    )
    # a killed ``--check --vary`` leaves its disorderfs mounts in ``vary-*``: taken down
    # first; a dry run does not count such a dir's bytes (the mounts show them twice)
    table = Path(MOUNTINFO).read_bytes() if doomed_tmp else b""
    mounted = [t for t in doomed_tmp if mounts_below(Path(t), table)]
    if trash is not None:
        for t in mounted:
            if (why := unmount_below(Path(t), table)) is not None:
                doomed_tmp.remove(t)
                trash.disown(t)
                kept.append(f"{t}: {why}")
    freed = total(
        [
            *(sizes[p.rsplit("/", 1)[1]] for p in dead),
            *(sizes[s] for s in stray),
            *(size(o) for o in doomed_objects),
            *(
                size_beside_mounts(Path(t), table) if dry_run and t in mounted else size(Path(t))
                for t in doomed_tmp
            ),
            side.sizes,
        ]
    )
    report = GcReport(
        dry_run=dry_run,
        roots=tuple(sorted(roots & set(refs))),
        deleted=tuple(dead),
        stray_trees=tuple(f"{store.store_dir}/{s}" for s in stray),
        objects_deleted=len(doomed_objects),
        bytes_freed=freed.apparent,
        tmp_dirs=tuple(doomed_tmp),
        kept=tuple(kept),
        unread_quarantine=tuple(unread),
        disk_bytes_freed=freed.disk,
        logs=tuple(map(str, side.logs)),
        failed_dirs=tuple(map(str, side.failed_dirs)),
        eval_cache_entries=tuple(map(str, side.eval_entries)),
        quarantine_dirs=side.quarantine,
    )
    if trash is None:
        return report

    # invalidate first: files without rows are only garbage; durably (db.delete), as
    # after a power cut a row must never come back without its files
    db.delete(store.conn, dead)
    for link in stale_root_links:
        os.unlink(link)
    # out of the store by renames (O(1) each, whatever the tree holds); what cannot be
    # moved stays in place, a tree unregistered, for a later GC
    for base in [p.rsplit("/", 1)[1] for p in dead] + stray:
        name = f"{store.store_dir}/{base}"
        if (why := trash.move(store.real_store / base, name)) is not None:
            kept.append(f"{name}: {why} (unregistered now; a later GC tries again)")
    atts = store.root / "attestations"
    for h in sorted(set(orphan_atts) | {p.rsplit("/", 1)[1][:32] for p in dead}):
        if trash.move(atts / h) is not None:
            shutil.rmtree(atts / h, ignore_errors=True)
    for leftover in att_temp:  # a killed attestation writer's
        leftover.unlink(missing_ok=True)
    for entry in side.entries:  # (an entry that cannot move is left as it is)
        if (why := trash.move(entry)) is not None:
            kept.append(f"{entry}: {why}")
    # (a directory or a symlink at an object's name goes too); a writer's ``tmp/``
    # entry is moved, not deleted later in place: its live owner may make it again
    for o in [*doomed_objects, *map(Path, writers_tmp)]:
        if trash.move(o) is not None and (why := remove(o)) is not None:
            kept.append(f"{o}: {why}")
    for e in os.scandir(store.root / "locks"):
        # registration locks are only taken under the GC lock (shared), so none is held
        # now; the build loop's ``*.build`` locks go only when nobody holds them
        if e.name.endswith(".lock"):
            os.unlink(e.path)
        elif e.name.endswith(".build"):
            remove_if_free(Path(e.path))
        elif (
            (marked := hookmarks.is_marker(e.name)) is not None
            and marked not in live_hash_parts
            and e.is_file(follow_symlinks=False)  # (anything else there is no marker: hookmarks)
        ):
            remove_if_free(Path(e.path))  # a dead builder's, of a path never committed
    return replace(report, kept=tuple(kept))
