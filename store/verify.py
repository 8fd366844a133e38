"""Verification and repair of the local store.

For every valid path, ``verify`` checks (two paths at a time, one per core):

- the object: decompresses it, re-hashing the compressed bytes and the NAR against the
  row (``object-missing``, ``object-corrupt`` with expected and found digests);
  each object and each tree is read once: a content-address check takes the flat file
  hash from the object's NAR stream when the object is good;
- the materialised tree: its NAR hash and size against the row (``tree-missing``,
  ``tree-corrupt``) and its canonical metadata (``tree-metadata``: modes, mtimes);
- content-address claims: the claimed hash must be the content's and the path the one
  it implies (``ca-mismatch``; judged by ``pathadmit.ca_problem``, the same function
  every import and registry admission uses);
- references: each must be valid (``dangling-reference``; only quarantine makes these,
  and a repair that quarantines a path reports them for its referrers in the same run);
- an object that cannot be read at all (EIO, EACCES, not a file) is
  ``object-unreadable``; a repair that fails is ``repair-failed`` on that path; either
  way the run goes on with the other paths;
- signatures, when ``sigs_needed`` > 0: at least that many valid signatures by distinct
  ``trusted`` keys; a content-addressed path needs none when verify recomputed its path
  from its content (``fixed:r:sha256``, flat ``fixed:sha256``, ``text:sha256``, tree
  clean): the unsigned ``ca`` claim alone exempts nothing.

Repair (``repair=True``), per path, under the path lock:

- object good, tree bad/missing: restore the tree from the object beside the path, seal
  it and exchange it with the path atomically (``repair``);
- object bad, tree content good (its NAR hash matches the row, even if its modes or
  mtimes are off): re-archive the tree into a new object (the row's NAR hash proves the
  tree right), point the row at it, and re-materialise the tree from it if its metadata
  was off;
- both bad: *quarantine*: move the tree and a copy of the object to
  ``quarantine/<base>-<time>/`` and delete the row. Referrers keep their (now dangling)
  reference and are reported.

Repair never moves or deletes an object file while it holds the GC lock shared, as
writers do (one may be publishing a good copy under that name and registering it): the
objects repaired paths no longer use are deleted at the end, only if the GC lock can be
had exclusively then, else left for GC.

Paths with identical NARs share one object, and a repair made through one of them fixes
it for all: paths whose tree content is good are repaired first, and each path's object
is judged again under its path lock before deciding.

The whole run holds the GC lock shared, so GC cannot delete things under our feet.
Unregistered trees and objects (left by crashed writers, removed by GC) are listed as
``stray_*`` but are not problems; writers go on beside verify, and what they register
while it runs is not listed (``verifystray``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import db, nar, sigshield
from .caclaim import CA_METHODS
from .errors import KilnError
from .hashes import Hash
from .locks import FileLock
from .objects import object_rel_path
from .objread import read_object
from .pathadmit import FlatHasher, ca_problem, nar_content, tree_content
from .pathinfo import PathInfo
from .trees import metadata_problems
from .verifystray import stray_entries

if TYPE_CHECKING:
    from .localstore import LocalStore
    from .signing import PublicKey


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding. ``repaired`` says what repair did (empty if nothing)."""

    path: str
    kind: str
    detail: str
    repaired: str = ""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked: int
    problems: tuple[Problem, ...]
    quarantined: tuple[str, ...]
    stray_trees: tuple[str, ...]
    stray_objects: tuple[str, ...]
    #: valid paths that reference a path this run quarantined (each has an unrepaired
    #: ``dangling-reference`` problem, so ``ok`` is false)
    incomplete: tuple[str, ...] = ()
    #: with ``sigs_needed`` > 0, the paths that needed no signature because verify
    #: recomputed their path from their content (a summary that counted them as signed
    #: would overstate what the keys vouch for)
    ca_proved: int = 0

    @property
    def ok(self) -> bool:
        """True if nothing is (still) wrong. A quarantine is a repair of its own path,
        but leaves every referrer with an unrepaired ``dangling-reference``."""
        return all(p.repaired for p in self.problems)


def check_object(store: LocalStore, info: PathInfo) -> Problem | None:
    """The problem with ``info``'s object (missing, corrupt, unreadable), or None."""
    return _read_object(store, info, None)


def _read_object(store: LocalStore, info: PathInfo, flat: FlatHasher | None) -> Problem | None:
    """``check_object``, feeding the NAR to ``flat`` as it goes (when given): the
    content hash a ``ca`` check needs, from the one read of the object."""
    assert info.file_hash is not None and info.file_size is not None
    obj = store.objects / object_rel_path(info.file_hash)
    if not obj.exists():
        return Problem(info.path, "object-missing", f"{obj} does not exist")
    try:
        for chunk in read_object(
            obj, info.path, (info.file_hash, info.file_size), (info.nar_hash, info.nar_size)
        ):
            if flat is not None:
                flat.update(chunk)
    except KilnError as e:
        return Problem(info.path, "object-corrupt", str(e))  # (it names the object file: objread)
    except OSError as e:
        # EIO from a failing disk, EACCES, EISDIR: this path's problem, not the run's
        return Problem(info.path, "object-unreadable", f"{obj}: cannot read: {_os_text(e)}")
    return None


def _os_text(e: OSError) -> str:
    """``e`` as text for a report: its message, without a bytes repr of the file name."""
    return f"{e.strerror} (errno {e.errno})" if e.strerror else str(e)


def _check_tree(
    store: LocalStore, info: PathInfo, flat: Hash | None = None, flat_known: bool = False
) -> list[Problem]:
    """The tree's problems. With ``flat_known``, ``flat`` is the sha256 of the one plain
    file the path's NAR holds (None: it holds none), taken from its object, which
    matched the row's NAR hash as the tree must too; else a ``ca`` check reads the tree."""
    real = store.real_path(info.path)
    if not os.path.lexists(real):
        return [Problem(info.path, "tree-missing", f"{real} does not exist")]
    try:
        h, size = nar.hash_path(real)
    except (KilnError, OSError) as e:
        return [Problem(info.path, "tree-corrupt", f"{real}: cannot archive: {e}")]
    if h.digest != info.nar_hash.digest or size != info.nar_size:
        return [
            Problem(
                info.path,
                "tree-corrupt",
                f"NAR hash of {real}:\n  expected: {info.nar_hash.to_nix32()} ({info.nar_size} bytes)\n"
                f"  got:      {h.to_nix32()} ({size} bytes)",
            )
        ]
    try:
        meta = metadata_problems(real)
        ca = "" if meta else _check_ca(info, real, flat, flat_known)
    except OSError as e:  # it was just archived: unreadable now is as bad as wrong content
        return [Problem(info.path, "tree-corrupt", f"{real}: cannot read: {_os_text(e)}")]
    if meta:
        return [Problem(info.path, "tree-metadata", "; ".join(meta))]
    out = []
    if ca:
        out.append(Problem(info.path, "ca-mismatch", ca))
    return out


def _ca_proves_path(info: PathInfo, problems: list[Problem]) -> bool:
    """Whether the path is *shown* to be its content's address: a ``ca`` of a method
    verify recomputes, with the tree checked clean (so ``_check_ca`` ran and passed).
    Only such a path may go without signatures: ``ca`` itself is unsigned (a narinfo's
    ``CA:`` field, a database column)."""
    return (
        info.ca is not None
        and info.ca.startswith(CA_METHODS)
        # the proof is the tree's (its NAR hash, then the ca recomputation); an object or
        # reference problem says nothing about it
        and not any(p.kind.startswith("tree") or p.kind == "ca-mismatch" for p in problems)
    )


def _check_ca(info: PathInfo, real: Path, flat: Hash | None = None, flat_known: bool = False) -> str:
    """The ``ca-mismatch`` detail for the tree at ``real`` (its NAR hash already checked
    against the row): ``pathadmit.ca_problem``, the judge every importer uses too. With
    ``flat_known`` (see ``_check_tree``) the tree is not read again: its NAR is the
    object's (both hash to the row's NAR hash)."""
    if not flat_known:
        return ca_problem(info, tree_content(real, info.nar_hash))
    return ca_problem(info, nar_content(info.nar_hash, flat, lambda: nar.dump(real)))


def _check_path(store: LocalStore, info: PathInfo) -> list[Problem]:
    """The object's and the tree's problems, each read once: a ``ca`` check takes the
    flat content hash from the object's NAR stream (``FlatHasher``) when the object is
    good, instead of reading the tree a second time."""
    flat = FlatHasher() if info.ca else None
    obj = _read_object(store, info, flat)
    known = flat is not None and obj is None
    return ([obj] if obj else []) + _check_tree(store, info, flat.result() if known else None, known)  # type: ignore[union-attr]


def _drop_unused_objects(store: LocalStore, hashes: list) -> set[str]:
    """Delete the objects of ``hashes`` (repaired paths' old objects) that no row uses,
    if the GC lock can be had exclusively right now; return the files deleted. Repair
    itself never deletes an object (a writer holding the lock shared may be publishing a
    good copy under that name and registering it); with writers at work they stay for GC."""
    from .trees import remove_tree

    gone: set[str] = set()
    lock = FileLock(store.gc_lock_path)
    if not lock.acquire(blocking=False):
        return gone
    try:
        for h in {h for h in hashes if h is not None}:
            if not db.file_hash_in_use(store.conn, h.to_nix32()):
                obj = store.objects / object_rel_path(h)
                if os.path.lexists(obj):
                    with contextlib.suppress(OSError, KilnError):  # tidying: GC tries again
                        remove_tree(obj)
                        gone.add(str(obj))
    finally:
        lock.release()
    return gone


def verify(
    store: LocalStore,
    repair: bool = False,
    trusted: list[PublicKey] | None = None,
    sigs_needed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """See the module docstring; ``progress(checked, total)`` is told as paths are read."""
    from .signing import present_signers, valid_signers

    problems: list[Problem] = []
    quarantined: list[str] = []
    incomplete: list[str] = []
    with FileLock(store.gc_lock_path, shared=True):
        infos = db.all_infos(store.conn)
        valid = {i.path for i in infos}
        # each worker only reads files; the database stays on this thread. The hand-over
        # runs in a sigshield region (a signal's exception cut into the futures' Condition
        # code could leave its lock held: the pool's shutdown then waited for ever); a
        # signal ends the loop once the path being waited for is checked
        with sigshield.shielded, ThreadPoolExecutor(2) as pool:
            results = []
            for checked in pool.map(lambda i: _check_path(store, i), infos):
                results.append(checked)
                if sigshield.pending():
                    break  # (the rest is cancelled; the region's end raises the signal)
                if progress is not None:
                    progress(len(results), len(infos))
        per_path: list[tuple[PathInfo, list[Problem]]] = []
        ca_proved = 0
        for info, found in zip(infos, results, strict=True):
            for r in info.references:
                if r != info.path and r not in valid:
                    found.append(
                        Problem(info.path, "dangling-reference", f"references {r}, which is not valid")
                    )
            if sigs_needed > 0 and _ca_proves_path(info, found):
                ca_proved += 1
            elif sigs_needed > 0:
                n = len(valid_signers(info, trusted or []))
                if n < sigs_needed:
                    found.append(
                        Problem(
                            info.path,
                            "signatures",
                            f"{n} valid trusted signature(s), {sigs_needed} needed; present: "
                            f"{present_signers(info, trusted or [])}",
                        )
                    )
            per_path.append((info, found))
        if repair:
            # Paths whose tree content is good first: a bad object shared with another
            # path is then rebuilt from the good tree before the other path needs it.
            todo = [
                i
                for i, (_, f) in enumerate(per_path)
                if any(p.kind.startswith(("object", "tree")) for p in f)
            ]
            todo.sort(key=lambda i: any(p.kind in ("tree-missing", "tree-corrupt") for p in per_path[i][1]))
            from .repair import repair_path

            for i in todo:
                info, found = per_path[i]
                try:
                    found, q = repair_path(store, info, found)
                except (KilnError, OSError) as e:
                    # this path stays broken (its problems unrepaired); the others go on
                    why = _os_text(e) if isinstance(e, OSError) else str(e)
                    found = [*found, Problem(info.path, "repair-failed", f"cannot repair: {why}")]
                    q = False
                per_path[i] = (info, found)
                if q:
                    quarantined.append(info.path)
            incomplete = _now_dangling(per_path, set(quarantined))
        for _, found in per_path:
            problems.extend(found)
        # what GC would remove (entries named like store paths, object files), judged
        # against the database after the scan, once registrations under way are done
        stray_trees, stray_objects = stray_entries(store, valid)
    if repair and todo:
        gone = _drop_unused_objects(store, [per_path[i][0].file_hash for i in todo])
        stray_objects = [o for o in stray_objects if o not in gone]
    return VerifyReport(
        len(infos),
        tuple(problems),
        tuple(quarantined),
        tuple(stray_trees),
        tuple(stray_objects),
        tuple(incomplete),
        ca_proved,
    )


def _now_dangling(per_path: list[tuple[PathInfo, list[Problem]]], quarantined: set[str]) -> list[str]:
    """Add a ``dangling-reference`` problem to every path still valid after the repairs
    that references a path they quarantined (its closure is now incomplete: nothing
    repairs that but building or fetching the quarantined path again). Returns those
    referrers, in ``per_path`` order."""
    out: list[str] = []
    if not quarantined:
        return out
    for info, found in per_path:
        if info.path in quarantined:
            continue
        lost = sorted(r for r in set(info.references) if r != info.path and r in quarantined)
        for r in lost:
            found.append(
                Problem(
                    info.path,
                    "dangling-reference",
                    f"references {r}, which this repair quarantined (its object and tree were both "
                    "bad): build or fetch it again",
                )
            )
        if lost:
            out.append(info.path)
    return out
