"""``kiln mirror sync SRC DST``: copy a registry without trusting the wire.

Trust: the mirror pins the source's root metadata (``--root FILE`` on the first sync,
then ``DST/.kiln/mirror-state.json``, which also remembers the highest timestamp and
snapshot versions seen). Every sync runs the ``index.update`` checks (root chain,
signatures, rollback, freeze, mix-and-match; ``mirrorplan.update``, which takes a
snapshot or index DST already holds with the verified bytes from DST instead of the
wire) before touching DST.

Transfer: for each candidate path (``mirrorplan.plan``: its index entry changed, or its
files in DST did, or ``full``; every path on a first sync) whose narinfo DST does not
already hold byte-for-byte, the narinfo is fetched (batched) and must hash to the sha256 the signed
index lists (and, with ``trusted`` keys, carry a valid signature); then the NAR blob, if
DST lacks it, is streamed into a temp file while the compressed bytes and the NAR inside
are hashed, and published under ``nar/`` and ``blobs/`` only if both match the narinfo.
Small blobs (up to 1 MiB) travel a few hundred per ``POST /blob-batch`` where the source
is a kiln server, each verified the same way as it arrives; big ones (and all of them
from other servers) one request each; ``jobs`` requests at a time.

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
source's narinfo, its next index lists that, and the next sync goes through.

Attestations: the signed index lists, per path, the sha256 of each attestation file
(``<h>.att/<kind>.dsse.json``). Every listed file DST lacks (or holds in another version)
is fetched and must hash to that sha256 — so attestations are covered by the index
signature, not by trusting their DSSE signers, which stays the verifier's policy — and
its subject must name the path with the narinfo's NarHash.

Publication: only when every path succeeded are the narinfos written, then the
attestations (and their listings), then the metadata exactly as the source signed it (roots, index, snapshot, timestamp last), so
DST is itself a verifiable registry and never shows a half-synced index. Any failure
raises ``MirrorError`` naming the bad paths and leaves DST's narinfos and index as they
were; verified blobs already fetched stay (content-addressed, invisible without a
narinfo), which is what makes an interrupted sync resume. A sync with nothing new
transfers no blobs; one whose timestamp names the snapshot DST holds fetches nothing
past the timestamp and reads no narinfo. Old index generations are pruned as the
source prunes them (``indexprune``).
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.store import narinfo as ni
from kiln.store.errors import KilnError
from kiln.store.hashes import Hash
from kiln.store.signing import PublicKey

from . import index as ix
from . import indexprune, layout, mirrorplan
from .admitca import nar_chunks
from .attest_batch import staged_many
from .attest_wire import fetch_indexed
from .backends import DirSource
from .client import Client, open_client
from .dirlock import MIRROR_LOCK, dir_lock
from .progress import Progress
from .storage import FileStorage
from .substitute import batchable, batches
from .verify import ca_refusal, check_narinfo, expect_info, verified_bytes, verifier_for

STATE_KEY = ".kiln/mirror-state.json"


class MirrorError(KilnError):
    """A sync could not complete; the mirror kept its previous state."""


@dataclass(frozen=True, slots=True)
class SyncReport:
    index_version: int
    timestamp_version: int
    paths: int
    narinfos_fetched: int
    blobs_fetched: int
    bytes_fetched: int
    attestations_fetched: int = 0


async def _fetch_blob(client: Client, dst: DirSource, info, sem: asyncio.Semaphore, prog: Progress) -> int:  # noqa: ANN001
    async with sem:
        # bounded: the download stops at FileSize, the NAR inside at NarSize
        ver = verifier_for(info)
        with dst.storage.staged() as (f, _):

            def write(chunk: bytes) -> None:
                ver.update(chunk)
                f.write(chunk)
                prog.add(0, len(chunk))

            if not await client.download(info.url, write):
                raise KilnError(f"{info.path}: source has no {info.url}")
            got = ver.finish()
            expect_info(info, got)
            dst.commit_object(f, got, durable=False)  # one barrier for all blobs, below
        return got.file_size


async def _fetch_batch(
    client: Client, dst: DirSource, batch: list, sem: asyncio.Semaphore, prog: Progress
) -> dict[str, int | BaseException] | None:
    """Fetch ``batch`` (small objects, distinct digests) with one ``blob_batch``, each
    verified (file and NAR digests) and written to DST as it arrives: path -> bytes
    fetched, or the error for that path. None if the source has no batch endpoint."""
    by_hex = {i.file_hash.hex: i for i in batch}
    out: dict[str, int | BaseException] = {}

    def got(h: Hash, data: bytes | None) -> None:
        info = by_hex.get(h.hex)
        if info is None:
            return
        if data is None:
            out[info.path] = KilnError(f"{info.path}: source has no {info.url}")
            return
        try:
            digests = verified_bytes(info, data)
            with dst.storage.staged() as (f, _):
                f.write(data)
                dst.commit_object(f, digests, durable=False)  # one barrier for all blobs
        except Exception as e:  # noqa: BLE001 - that path's failure, reported with the others
            out[info.path] = e
            return
        prog.add(0, len(data))
        out[info.path] = len(data)

    async with sem:
        sizes = {x: i.file_size for x, i in by_hex.items() if i.file_size is not None}
        if not await client.blob_batch([i.file_hash for i in batch], got, sizes):
            return None
    for i in batch:
        out.setdefault(i.path, KilnError(f"{i.path}: the source did not send {i.url}"))
    return out


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
) -> SyncReport:
    """Sync ``dst_dir`` from ``src_url`` (see the module docstring). ``full``: download
    and verify the index afresh and compare every narinfo and listing in DST with it
    (what also repairs one edited in place or rotted on disk), not only the candidates
    ``mirrorplan`` finds."""
    async with open_client(src_url, token, jobs=jobs, create=False) as client:  # token: a --private source
        info = await client.cache_info()
        dst = DirSource(dst_dir, store_dir=info.get("StoreDir") or None)

        def waiting() -> None:
            print(f"waiting for another mirror sync into {dst_dir} to finish", file=sys.stderr, flush=True)

        # one sync at a time per mirror: two would each publish the index they verified,
        # and the one that verified the older index but finished last would roll DST (and
        # its remembered versions) back
        with dir_lock(dst.storage, MIRROR_LOCK, waiting):
            return await _sync_locked(client, src_url, dst, dst_dir, root, trusted, jobs, progress, full)


async def _sync_locked(
    client: Client,
    src_url: str,
    dst: DirSource,
    dst_dir: Path,
    root: bytes | None,
    trusted: list[PublicKey] | None,
    jobs: int,
    progress: bool | None,
    full: bool = False,
) -> SyncReport:
    """The sync proper (see the module docstring), run holding DST's mirror lock."""
    if isinstance(dst.storage, FileStorage):
        dst.storage.sweep_temp()  # blobs a killed sync (or server) was writing
    prev = dst.storage.read(STATE_KEY)
    if prev is not None:
        state = ix.TrustState.from_json(prev)
    elif root is not None:
        state = ix.TrustState.pin(root)
    else:
        raise MirrorError(
            f"first sync into {dst_dir}: pass the source's pinned root metadata with --root FILE"
        )
    rec = None if full else mirrorplan.load_record(dst.storage)
    try:
        meta = await mirrorplan.update(client.get, state, dst.storage, rec, full)
    except ix.NoIndex as e:
        elsewhere = getattr(client, "missed_at", {}).get("index/timestamp.json")
        if elsewhere is None:
            raise
        raise ix.NoIndex(
            f"the source redirects index/timestamp.json to {elsewhere}, which answers that it has "
            "no such file (is the redirect target a copy of the registry?)"
        ) from e
    plan = mirrorplan.plan(dst.storage, meta, rec, full)
    paths: dict[str, dict] = plan.paths or {}
    # (only candidates: paths whose entry or whose copy in DST changed, or all with ``full``)
    todo = [h for h in plan.candidates if _sha(dst.narinfo(h)) != paths[h]["narinfo_sha256"]]
    texts = await client.narinfos(todo) if todo else {}
    failed: dict[str, str] = {}
    infos = {}
    for h in todo:
        e = paths[h]
        text = texts.get(h)
        if text is None:
            failed[e["path"]] = "narinfo missing at the source"
            continue
        if hashlib.sha256(text.encode()).hexdigest() != e["narinfo_sha256"]:
            failed[e["path"]] = "narinfo does not match the sha256 in the signed index (tampered?)"
            continue
        try:
            infos[h] = check_narinfo(text, dst.store_dir, trusted or [], 1 if trusted else 0, h)
        except KilnError as ex:
            failed[e["path"]] = str(ex)
    need = {}
    for i in infos.values():
        have = dst.object_file(i.file_hash)
        # a blob of the wrong size (truncated by a crash, emptied by hand) is fetched
        # again rather than trusted for being there; a stat is cheap, rehashing every
        # blob on each sync is not
        if have is None or (i.file_size is not None and have.stat().st_size != i.file_size):
            if have is not None:  # objects are never overwritten in place: drop the bad one
                for key in (layout.blob_key(i.file_hash), layout.nar_key(i.file_hash)):
                    dst.storage.delete(key)
            need.setdefault(i.file_hash.hex, i)
    prog = Progress("mirror", len(need), sum(i.file_size or 0 for i in need.values()), progress)
    sem = asyncio.Semaphore(jobs)
    # small objects a few hundred per request (``blob_batch``), big ones one each: a
    # mirror of many small paths must not cost a round trip per path
    small, alone = batchable(need.values())
    outcome: dict[str, int | BaseException] = {}
    cut = list(batches(small))
    answers = await asyncio.gather(
        *(_fetch_batch(client, dst, b, sem, prog) for b in cut), return_exceptions=True
    )
    for b, a in zip(cut, answers, strict=True):
        if a is None:  # no batch endpoint there (nginx, a plain file server)
            alone += b
        elif isinstance(a, BaseException):
            if not isinstance(a, Exception):
                raise a
            outcome.update((i.path, a) for i in b)
        else:
            outcome.update(a)
    results = await asyncio.gather(
        *(_fetch_blob(client, dst, i, sem, prog) for i in alone), return_exceptions=True
    )
    outcome.update((i.path, r) for i, r in zip(alone, results, strict=True))
    prog.done()
    fetched_bytes = 0
    for i in need.values():
        r = outcome[i.path]
        if isinstance(r, BaseException):
            if not isinstance(r, Exception):
                raise r
            failed[i.path] = str(r)
        else:
            fetched_bytes += r
    loop = asyncio.get_running_loop()
    claims = [i for i in infos.values() if i.ca and i.path not in failed]
    if claims:  # (off the loop: an object that came some other way is hashed again)
        failed.update(await loop.run_in_executor(None, _false_cas, dst, claims))
    atts = await fetch_indexed(client, dst, {h: paths[h] for h in plan.candidates}, texts, failed, sem)
    if failed:
        lines = "\n".join(f"  {p}: {why}" for p, why in sorted(failed.items())[:20])
        more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
        raise MirrorError(
            f"mirror sync from {src_url} failed for {len(failed)} path(s); the mirror keeps its previous index:\n{lines}{more}"
        )
    # Durability in three barriers instead of an fsync per file: blobs, then the
    # narinfos that point at them, then the index that lists them.
    # (the attestations and their new listings are staged first, so the first barrier
    # makes them durable too; renamed into place after it: ``attest_batch.staged_many``)
    files = [(h, kind, data) for h, kinds in atts.items() for kind, data in kinds.items()]
    with staged_many(dst.storage, files) as place_attestations:
        await loop.run_in_executor(None, dst.storage.barrier)
        for h in infos:
            dst.storage.put_bytes(layout.narinfo_key(h), texts[h].encode(), durable=False)
        place_attestations()
    await loop.run_in_executor(None, dst.storage.barrier)
    for key, data in meta.files:
        if dst.storage.read(key) != data:
            dst.storage.put_bytes(key, data, durable=key == "index/timestamp.json")
    dst.storage.put_bytes(STATE_KEY, state.to_json())
    mirrorplan.finish(dst.storage, meta, plan, set(infos) | set(atts), state.root["version"])
    indexprune.prune(dst.storage, state.snapshot_version)
    return SyncReport(
        meta.index_version,
        meta.timestamp["version"],
        plan.count,
        len(infos),
        len(need),
        fetched_bytes,
        sum(len(k) for k in atts.values()),
    )


def _false_cas(dst: DirSource, infos: list[ni.NarInfo]) -> dict[str, str]:
    """``{path: why}`` for each of ``infos`` (narinfos with a ``CA:``, whose objects DST
    now holds) whose claim is not true of its object (see the module docstring). The
    digests are those remembered when the object was fetched and verified; an object
    DST held already is hashed again and must match the narinfo first, as a judgement
    of the wrong bytes would be worthless."""
    out: dict[str, str] = {}
    for i in infos:
        fh = i.file_hash
        assert fh is not None  # (``check_narinfo``)
        got = dst.object_digests(fh)
        if got is None:
            out[i.path] = f"{i.url} is not in the mirror after its transfer (deleted meanwhile?)"
            continue
        try:
            expect_info(i, got)
        except KilnError as e:
            out[i.path] = f"the mirror's copy of {i.url} does not match the narinfo: {e}"
            continue
        why = ca_refusal(i, got, lambda fh=fh: nar_chunks(dst.storage, fh))
        if why:
            out[i.path] = f"refusing its CA: {why}"
    return out


def _sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def sync(src_url: str, dst_dir: Path, **kw: Any) -> SyncReport:  # the keywords of sync_async
    return asyncio.run(sync_async(src_url, dst_dir, **kw))
