"""``kiln mirror sync SRC DST``: copy a registry without trusting the wire.

Trust: the mirror pins the source's root metadata (``--root FILE`` on the first sync,
then ``DST/.kiln/mirror-state.json``, which also remembers the highest timestamp and
snapshot versions seen, and the source and time of the last good sync: ``state_record``).
A later ``--root`` is checked against the root DST trusts (``mirrorroots.given_root``): the same
root, or an older version (the one pinned first, as a cron line passes it every time) that
is the one DST holds of that version (or that DST does not hold), is fine; another root of
the same version, or another of an older version DST holds, is refused, naming both, and so is a newer one
unless the source's signed rotations reach it, the same, in this sync. ``repin_root`` trusts ``--root`` instead, forgetting the versions
seen: for a source whose keys were replaced out of band, without a signed rotation.
Every sync runs the ``index.update`` checks (root chain, signatures, rollback, freeze,
mix-and-match; ``mirrorplan.update`` takes a snapshot or index DST holds from DST) first.

Narinfos: each candidate path (``mirrorplan.plan``: its index entry changed, or its
files in DST did, or ``full``; every path on a first sync) whose narinfo DST does not
already hold byte-for-byte is fetched (batched) and must hash to the sha256 the signed
index lists (and, with ``trusted`` keys, carry a valid signature). One that does not is
named with its likely cause (``indexcheck.narinfo_problem``, shared with ``kiln copy
--index-root``): the source rewrote it after its last index publish (a
signature merge by ``kiln push``) and must publish its index again, or it was tampered
with. A candidate whose narinfo DST already holds as the index lists it is not fetched
again, but its object is checked like the others', and its signatures against the keys
trusted now (a key trusted when it was fetched may be dropped since: then every path is
a candidate, ``mirrorplan.must_recheck``). One they refuse is refused as a fetched one
is (the sync fails); it stays published unless ``prune`` (``mirrorprune.refuse_held``).
These checks, and those of ``CA:`` claims, are ``mirrorchecks``'.

Objects (``mirrorobjects``, ``mirrorfetch``): the object each candidate's narinfo names
is checked in DST (present, at FileSize; hashed when its size differs, or always with
``rehash``): a missing or bad one is fetched, verified, and linked in or renamed over
the bad file; a good one is never deleted or replaced; a narinfo whose FileSize (not
signed) contradicts it fails that path. ``full`` makes every path a candidate (a repair).

Content addresses: a narinfo's ``CA:`` is not covered by its signature, so the
source (or whoever wrote into it) could have set a false one; every fetched narinfo
that has one is judged against its object exactly as an upload or an import is
(``verify.ca_refusal``, the store's ``pathadmit.ca_problem``), from the digests taken
while its blob streamed in (a flat or text claim needs no second read). A false or
unjudgeable claim is *refused*, as an upload refuses it (400) and an import refuses the
path: that path fails and so does the sync, naming it and what the claim expects. The
CA cannot be dropped or replaced here instead, as a registry does when an honest
narinfo arrives (``admitca.merged_ca``): the mirror republishes the source's signed
index verbatim, which pins each narinfo's sha256, so an edited narinfo would not verify
for the mirror's clients. The cure is upstream: an honest ``kiln push`` repairs the
source's narinfo; its next index lists that, and the next sync goes through.

Attestations: the signed index lists, per path, the sha256 of each attestation file
(``<h>.att/<kind>.dsse.json``). Every listed file DST lacks (or holds in another version)
is fetched and must hash to that sha256 — so attestations are covered by the index
signature, not by trusting their DSSE signers, which stays the verifier's policy — and
its subject must name the path with the narinfo's NarHash.

Publication: only when every path succeeded are the narinfos written, then the
attestations (and their listings), then the metadata exactly as the source signed it
(roots from the pinned one on, index, snapshot, timestamp last), so DST is itself a
verifiable registry and never shows a half-synced index. A first sync is refused before
DST is made when the source has no signed index (as ``nix copy`` writes: said so,
pointing to ``kiln copy``) or ``--root`` is missing or no self-signed root. Any failure raises
``MirrorError`` naming the bad paths (``transient`` when each failed only for a
temporary reason, ``retryable``) and leaves DST's narinfos and index as they were;
verified objects already fetched stay (content-addressed, invisible without a
narinfo), which is what makes an interrupted sync resume. A sync with nothing new
transfers no blobs; one whose timestamp names the snapshot DST holds fetches nothing
past the timestamp and reads no narinfo. Old index generations are pruned as the
source prunes them (``indexprune``); paths the source no longer lists are counted
(``SyncReport.stale``) and, with ``prune``, removed after publication (``mirrorprune``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.store import narinfo as ni
from kiln.store.errors import KilnError, redact_urls
from kiln.store.signing import PublicKey

from . import index as ix
from . import indexprune, layout, mirrorfailure, mirrorplan, mirrorprune
from .attest_batch import staged_files, staged_many
from .attest_wire import fetch_indexed
from .backends import DirSource
from .client import Client, open_client
from .dirlock import MIRROR_LOCK, dir_lock
from .looprun import run as run_async
from .mirrorchecks import false_cas, held_and_fetched
from .mirrorfailure import STATE_KEY
from .mirrorfetch import fetch_objects
from .mirrorobjects import judge_all
from .mirrorprune import PruneReport
from .mirrorroots import (
    MirrorError,
    MirrorUsageError,
    first_sync_allowed,
    given_root,
    no_index,
    trusted_state,
)
from .retryable import retryable
from .storage import FileStorage
from .verify import nar_file_hash


@dataclass(frozen=True, slots=True)
class SyncReport:
    index_version: int
    timestamp_version: int
    paths: int
    narinfos_fetched: int
    blobs_fetched: int
    bytes_fetched: int
    attestations_fetched: int = 0
    #: of ``blobs_fetched``: objects fetched for narinfos DST held already (lost or
    #: truncated there) or renamed over a bad file
    objects_repaired: int = 0
    #: narinfos DST holds that the source's index no longer lists (0 after a prune)
    stale: int = 0
    pruned: PruneReport | None = None


@dataclass(frozen=True, slots=True)
class _Options:
    root: bytes | None
    trusted: list[PublicKey]
    jobs: int
    progress: bool | None
    full: bool
    rehash: bool
    prune: bool
    repin_root: bool = False


async def sync_async(
    src_url: str,
    dst_dir: Path,
    *,
    root: bytes | None = None,
    trusted: list[PublicKey] | None = None,
    jobs: int = 16,
    progress: bool | None = None,
    token: str | None = None,
    full: bool = False,
    rehash: bool = False,
    prune: bool = False,
    repin_root: bool = False,
) -> SyncReport:
    """Sync ``dst_dir`` from ``src_url`` (see the module docstring). ``full``: download
    and verify the index afresh and compare every narinfo and listing in DST with it,
    and check every published narinfo's object (present, at its size), not only the
    candidates ``mirrorplan`` finds. ``rehash`` (implies ``full``): also hash every
    object, which finds rot that kept the size. ``prune``: afterwards remove what the
    source no longer lists (``mirrorprune``). ``repin_root``: trust ``root`` instead of the
    root DST trusts (module docstring)."""
    if repin_root and root is None:
        raise MirrorUsageError("--repin-root needs the root to trust: pass it with --root FILE")
    o = _Options(root, trusted or [], jobs, progress, full or rehash, rehash, prune, repin_root)
    dst_dir = Path(dst_dir)
    try:
        report = await _sync(src_url, dst_dir, o, token)
    except (KilnError, OSError) as e:  # (what ``kiln mirror status`` shows: ``mirrorfailure``)
        mirrorfailure.record(dst_dir, e, getattr(e, "transient", False) or retryable(e))
        raise
    mirrorfailure.clear(dst_dir)
    return report


async def _sync(src_url: str, dst_dir: Path, o: _Options, token: str | None) -> SyncReport:
    async with open_client(src_url, token, jobs=o.jobs, create=False) as client:  # token: a --private source
        info = await client.cache_info()
        if not (dst_dir / STATE_KEY).is_file():  # a first sync: refused before DST is made
            await first_sync_allowed(client, src_url, dst_dir, o.root)
        dst = DirSource(dst_dir, store_dir=info.get("StoreDir") or None)

        def waiting() -> None:
            print(f"waiting for another mirror sync into {dst_dir} to finish", file=sys.stderr, flush=True)

        # one sync at a time per mirror: two would each publish the index they verified,
        # and the one that verified the older index but finished last would roll DST (and
        # its remembered versions) back
        with dir_lock(dst.storage, MIRROR_LOCK, waiting):
            return await _sync_locked(client, src_url, dst, dst_dir, o)


async def _sync_locked(
    client: Client, src_url: str, dst: DirSource, dst_dir: Path, o: _Options
) -> SyncReport:
    """The sync proper (see the module docstring), run holding DST's mirror lock."""
    if isinstance(dst.storage, FileStorage):
        dst.storage.sweep_temp()  # blobs a killed sync (or server) was writing
    state = trusted_state(dst.storage.read(STATE_KEY), o.root, o.repin_root, dst_dir)
    rec = None if o.full else mirrorplan.load_record(dst.storage)
    try:
        meta = await mirrorplan.update(client.get, state, dst.storage, rec, o.full)
    except ix.NoIndex as e:
        raise no_index(client, src_url) from e
    if o.root is not None and not o.repin_root:
        given_root(state, ix.TrustState.pin(o.root), dst_dir, walked=True)
    # (a key dropped since the last sync: every narinfo DST holds is checked again)
    recheck = mirrorplan.must_recheck(rec, o.trusted)
    if (note := mirrorplan.fewer_keys(rec, o.trusted)) is not None:
        print(f"note: {dst_dir}: {note}", file=sys.stderr)
    plan = mirrorplan.plan(dst.storage, meta, rec, o.full or recheck)
    paths: dict[str, dict] = plan.paths or {}
    failed: dict[str, str] = {}
    flaky: set[str] = set()  # of ``failed``: those that failed for a temporary reason
    refused: dict[str, str] = {}  # held narinfos the trusted keys refuse: hash part -> sha256
    texts, fetched, held = await held_and_fetched(
        client, dst, plan.candidates, paths, o.trusted, failed, refused
    )
    loop = asyncio.get_running_loop()
    infos = [*fetched.values(), *held.values()]
    workers = max(1, min(o.jobs, os.cpu_count() or 1))
    verdicts = await loop.run_in_executor(None, judge_all, dst, infos, o.rehash, workers) if infos else {}
    need: dict[str, ni.NarInfo] = {}
    replace: dict[str, set[str]] = {}
    repairs: set[str] = set()
    for i in infos:
        v, hx = verdicts[i.path], nar_file_hash(i).hex
        if v.problem is not None:
            failed[i.path] = v.problem
        elif v.fetch:
            need.setdefault(hx, i)
            replace.setdefault(hx, set()).update(v.replace)
            if v.replace or _hp(i.path) in held:
                repairs.add(hx)
    outcome = await fetch_objects(client, dst, need, replace, o.jobs, o.progress) if need else {}
    full: set[str] = set()  # of ``failed``: the object could not be written, DST's disk full
    for i in infos:
        r = outcome.get(nar_file_hash(i).hex)
        if r is None or i.path in failed:
            continue
        if isinstance(r, BaseException):
            failed[i.path] = str(r)
            if isinstance(r, OSError) and r.errno == errno.ENOSPC:
                full.add(i.path)
            if retryable(r):
                flaky.add(i.path)
        elif r != i.file_size:  # (another narinfo naming the same object fetched it)
            failed[i.path] = f"its FileSize {i.file_size} is not the size of {i.url} ({r} bytes)"
    claims = [i for i in fetched.values() if i.ca and i.path not in failed]
    if claims:  # (off the loop: an object that came some other way is hashed again)
        failed.update(await loop.run_in_executor(None, false_cas, dst, claims))
    sem = asyncio.Semaphore(o.jobs)
    atts = await fetch_indexed(
        client, dst, {h: paths[h] for h in plan.candidates if h not in refused}, texts, failed, sem
    )
    if refused:  # (said per path; with ``prune`` unpublished first)
        why = await loop.run_in_executor(None, mirrorprune.refuse_held, dst, refused, o.prune)
        failed.update({paths[h]["path"]: f"{failed[paths[h]['path']]}; {w}" for h, w in why.items()})
    if failed:
        # (a reason that names its path already is not prefixed with it again)
        lines = "\n".join(f"  {p}: {why.removeprefix(f'{p}: ')}" for p, why in sorted(failed.items())[:20])
        more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
        head = _disk_full(dst_dir, len(full)) + "\n" if full else ""
        raise MirrorError(
            f"mirror sync from {src_url} failed for {len(failed)} path(s); the mirror keeps its previous "
            f"index:\n{head}{lines}{more}",
            transient=failed.keys() <= flaky,
        )
    # Everything to publish is staged before anything is placed: a file system that fills
    # up (or any error) while it is written then publishes nothing, where before the
    # narinfos written by then stayed published without the index that lists them.
    # Then renames, with barriers instead of an fsync per file: the staged bytes (and
    # blobs), then the narinfos that point at the blobs, then the index that lists them.
    # (The attestations and their new listings: ``attest_batch.staged_many``.)
    files = [(h, kind, data) for h, kinds in atts.items() for kind, data in kinds.items()]
    narinfos = [(layout.narinfo_key(h), texts[h].encode()) for h in fetched]
    index_files = [(key, data) for key, data in meta.files if dst.storage.read(key) != data]
    index_files.append((STATE_KEY, state_record(state, src_url)))  # (timestamp.json, then this: last)
    try:
        await _publish(dst, files, narinfos, index_files)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise MirrorError(
            f"mirror sync from {src_url}: the mirror keeps its previous index; {_disk_full(dst_dir, 0)}"
        ) from None

    def listed() -> dict[str, Any]:  # the new index's path table
        if plan.paths is not None:
            return plan.paths
        return (
            meta.index["paths"] if meta.index is not None else json.loads(meta.index_bytes)["signed"]["paths"]
        )

    pruned = None
    if o.prune:
        pruned = await loop.run_in_executor(None, mirrorprune.prune, dst, listed().keys())
        stale = 0
    else:  # (counted in the scan of DST a plan made, or remembered, or by a listing)
        stale = plan.stale if plan.stale is not None else mirrorprune.stale(dst.storage, listed().keys())
    written = set(fetched) | set(atts)
    try:
        mirrorplan.finish(dst.storage, meta, plan, written, state.root["version"], stale, o.trusted)
    except OSError as e:  # (published: what is lost is a cache, keyed by the index it describes)
        if e.errno != errno.ENOSPC:
            raise
        print(
            f"warning: the file system holding {dst_dir} is full: the sync published, but its plan "
            "records were not saved (the next sync reads every narinfo again)",
            file=sys.stderr,
        )
    indexprune.prune(dst.storage, state.snapshot_version)
    got = [r for r in outcome.values() if isinstance(r, int)]
    return SyncReport(
        meta.index_version,
        meta.timestamp["version"],
        plan.count,
        len(fetched),
        len(got),
        sum(got),
        sum(len(k) for k in atts.values()),
        len([hx for hx in repairs if isinstance(outcome.get(hx), int)]),
        stale,
        pruned,
    )


async def _publish(
    dst: DirSource,
    files: list[tuple[str, str, bytes]],
    narinfos: list[tuple[str, bytes]],
    index_files: list[tuple[str, bytes]],
) -> None:
    """Stage the attestations ``files``, the ``narinfos`` and the ``index_files`` (``(key,
    data)``), then rename them into place in that order, with barriers between."""
    loop = asyncio.get_running_loop()
    with (
        staged_many(dst.storage, files) as place_attestations,
        staged_files(dst.storage, narinfos) as place_narinfos,
        staged_files(dst.storage, index_files) as place_index,
    ):
        await loop.run_in_executor(None, dst.storage.barrier)
        place_narinfos()
        place_attestations()
        await loop.run_in_executor(None, dst.storage.barrier)
        place_index()
        await loop.run_in_executor(None, dst.storage.barrier)


def _disk_full(dst_dir: Path, objects: int) -> str:
    """What to say when the file system holding DST filled up (``objects``: how many
    objects could not be written, each named below by its path)."""
    try:
        st = os.statvfs(dst_dir)
        free = f"{st.f_bavail * st.f_frsize} bytes free"
    except OSError:
        free = "free space unknown"
    what = f"{objects} object(s) could not be written there: " if objects else ""
    return (
        f"the file system holding {dst_dir} is full ({free}); {what}make room and sync again (what was "
        "fetched and verified stays, so the sync resumes)"
    )


def state_record(state: ix.TrustState, src_url: str) -> bytes:
    """``STATE_KEY``'s bytes after a successful sync: the trust state (``TrustState``,
    which reads only its own fields back) plus, for ``kiln mirror status``, the source
    (its credentials hidden) and when the sync finished (ISO 8601, UTC)."""
    doc = json.loads(state.to_json())
    doc["source"] = redact_urls(src_url)
    doc["synced_at"] = ix.utcnow().strftime(ix.EXPIRY_FORMAT)
    return ix.canonical(doc)


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


def sync(src_url: str, dst_dir: Path, **kw: Any) -> SyncReport:  # the keywords of sync_async
    return run_async(sync_async(src_url, dst_dir, **kw))
