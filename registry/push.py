"""``kiln push``: upload the closure of some store paths to a registry.

Order of operations (so an interrupted push is always safe to resume and never leaves a
narinfo without its NAR or its references):

1. compute the closure (dependencies first) and read every PathInfo from the store;
2. ask the registry which of those narinfos it already has (one batched request) and
   which NAR blobs it already has (a second batched request; a published narinfo whose
   NAR went missing gets its NAR re-uploaded, which repairs the registry);
3. upload the missing NARs in parallel (``jobs`` at a time), streamed from the store's
   object files (the store keeps exactly the zstd bytes a registry serves), each hashed
   against the store's FileHash/FileSize just before the request carrying it starts
   (``pushcheck``): a bad one stops the push naming the path and the object, before
   that object or the narinfo of its path, or of a path referring to it, is sent;
4. upload the narinfos dependencies first — a path only after everything it
   references. Against ``kiln serve`` and ``file://`` steps 3-4 are fused: ``upload_batch``
   carries narinfo + NAR per path, the closure in one topological order cut into chunks
   of at most 500 paths (``uploadplan``: a chunk goes once the chunks holding its
   references are committed, independent ones ``jobs`` at a time; a chunk whose narinfos
   are large goes as several requests in turn, ``narinfo_slices``), so a chain of 2,000
   paths takes a handful of requests, each two file-system barriers instead of two
   fsyncs per path; other servers get one write per object, a narinfo once its
   references' are in;
5. upload the attestations (``<h>.att/<kind>.dsse.json``) of every closure path the
   registry lacks or holds in another version (``attest_transfer.push_attestations``;
   one batched listing request, then a PUT each) — after the narinfos, because the
   registry admits an attestation only for a published path;
6. send again the narinfo of every published path that lacks a signature the store
   holds by this push's ``--sign-key`` or by a rotated key of a signer already there
   (``NAME-2`` where ``NAME-1`` signed: ``kiln key rotate --resign``); the registry
   merges what it trusts; one it does not keep is reported, and ``kiln push`` then exits
   1 (a new path's narinfo keeps every signature it came with). Other signatures (a
   local build key's) are never re-sent: they would go on every push, never merged.
   Also every published path whose ``CA:`` differs from the store's (the registry
   replaces a false one with the checked one it is sent: ``admitca``);
7. ask the server to republish its signed index (if it holds an index key), which also
   lists each path's attestation digests. Always, even when nothing was uploaded: a
   push cut off after its uploads publishes on the re-run.

A re-run skips everything already published (step 2): resuming costs one round trip and
the publication. A narinfo over ``narinfo.MAX_SIZE`` stops the push before any upload.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.store import narinfo as ni
from kiln.store.closurequery import closure_infos
from kiln.store.errors import KilnError
from kiln.store.objects import object_rel_path
from kiln.store.pathinfo import PathInfo
from kiln.store.signing import SecretKey, sign_info

from . import layout, uploadplan
from .client import Client, RegistryError
from .looprun import run as run_async
from .progress import Progress
from .pushcheck import ObjectCheck
from .pushresend import new_sigs, other_ca
from .tokentext import scrub, sent_by
from .verify import nar_file_hash

if TYPE_CHECKING:
    from kiln.store.localstore import LocalStore


@dataclass(frozen=True, slots=True)
class PushReport:
    closure: int
    pushed: int
    nars_uploaded: int
    bytes_uploaded: int
    index: str | None
    attestations_uploaded: int = 0
    signatures_updated: int = 0  # published paths whose narinfo went again for new signatures
    signatures_refused: tuple[str, ...] = ()  # "path: why" where the registry refused them
    attestations_refused: tuple[str, ...] = ()  # "path kind: why" where the registry refused them
    ca_refused: tuple[str, ...] = ()  # "path: why": a CA correction alone the registry refused


def levels(infos: Mapping[str, PathInfo]) -> list[list[str]]:
    """Group ``infos`` into dependency levels (references inside the set come first).
    ``KilnError`` for a reference cycle, which no real store holds (a narinfo from a
    hostile or broken registry): it used to loop for ever."""
    depth: dict[str, int] = {}
    expanded: set[str] = set()  # children pushed: on the stack until finished
    for p in infos:  # iterative DFS keeps deep chains off the recursion limit
        stack = [p]
        while stack:
            q = stack[-1]
            if q in depth:
                stack.pop()
                continue
            pending = [r for r in infos[q].references if r != q and r in infos and r not in depth]
            if pending:
                back = next((r for r in pending if r in expanded), None)
                if back is not None:  # an unfinished node below q on the stack: q leads back to it
                    raise KilnError(
                        f"reference cycle through {back} and {q}: no store path can be part of one"
                    )
                expanded.add(q)
                stack.extend(pending)
                continue
            depth[q] = 1 + max((depth[r] for r in infos[q].references if r != q and r in infos), default=-1)
            stack.pop()
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for p, d in depth.items():
        out[d].append(p)
    return out


def prepare(
    store: LocalStore, paths: list[str], sign_key: SecretKey | None = None
) -> list[tuple[PathInfo, Path]]:
    """Closure of ``paths`` with infos and object files, signing with ``sign_key`` (and
    recording that signature in the store) when given. The paths are made temp roots of
    ``store`` first (validity checked after): a GC meanwhile must not delete the objects
    being uploaded."""
    out = []
    keep = getattr(store, "keep", None)
    if keep is not None:
        keep(paths)
    # the whole closure with every info in one database query, not several per path
    # (a push of what the registry already has is mostly this)
    closure, infos, holes = closure_infos(store.conn, paths)
    if any(p not in infos for p in map(str, paths)):
        store.closure_with_holes(paths)  # raises the usual error for the invalid one
    if holes:
        # a registry would publish the path without what it needs (references are not
        # checked there), and every substituter would then fail on the missing ones
        from kiln.store.holes import IncompleteClosure

        raise IncompleteClosure(", ".join(sorted(map(str, paths))), holes, store.root, "push")
    for p in closure:
        info = infos[p]
        file_hash = info.file_hash
        if file_hash is None:
            raise KilnError(f"{p} is not valid in the store (or has no object)")
        if sign_key is not None and not any(s.startswith(sign_key.name + ":") for s in info.sigs):
            sig = sign_info(info, sign_key)
            store.add_signatures(p, [sig])
            info = dataclasses.replace(info, sigs=(*info.sigs, sig))
        out.append((info, store.objects / object_rel_path(file_hash)))
    return out


MAX_FRAMES = uploadplan.MAX_COUNT  # paths per upload batch

#: one frame of an upload batch: (hash part, narinfo text, the object's file if it goes too)
Frame = tuple[str, bytes, Path | None]


def narinfo_slices(frames: list[Frame]) -> list[list[Frame]]:
    """``frames`` cut, in order, into runs whose narinfos total at most
    ``layout.UPLOAD_BATCH_NARINFO_BYTES`` (what a server takes in one upload batch; each
    narinfo is at most ``narinfo.MAX_SIZE``, checked before: ``check_sizes``). Sent one
    after the other they keep the frames' order, so references still come first."""
    out: list[list[Frame]] = [[]]
    total = 0
    for f in frames:
        if out[-1] and total + len(f[1]) > layout.UPLOAD_BATCH_NARINFO_BYTES:
            out.append([])
            total = 0
        out[-1].append(f)
        total += len(f[1])
    return out


async def upload_sliced(client: Client, frames: list[Frame]) -> bool:
    """``client.upload_batch`` of ``frames`` in ``narinfo_slices``, one after the other,
    each answer checked (``check_results``); False if the client takes no upload
    batches (the first slice tells; ``RegistryError`` if a later one says so)."""
    for k, part in enumerate(narinfo_slices(frames)):
        res = await client.upload_batch(part)
        if res is None:
            if k:
                raise RegistryError(f"{client.url} stopped taking upload batches")
            return False
        check_results(res, sent_by(client))
    return True


def check_sizes(texts: dict[str, bytes]) -> None:
    """``FormatError`` for the first ``{path: narinfo}`` over ``narinfo.MAX_SIZE``: no
    registry would take it, so nothing is uploaded."""
    for p, text in texts.items():
        ni.check_size(text, p)


def check_results(results: list[dict], secrets: tuple[str, ...] = ()) -> None:
    """``KilnError`` quoting the first refusals of an ``upload_batch`` answer, if any, with
    ``secrets`` (the credentials the client sent: ``tokentext.sent_by``) hidden."""
    bad = [r for r in results if r.get("status", 500) >= 400]
    if bad:
        lines = "\n".join(f"  {r.get('hash')}: HTTP {r.get('status')}: {r.get('message')}" for r in bad[:10])
        raise KilnError(scrub(f"the registry refused {len(bad)} path(s):\n{lines}", secrets))


async def push_prepared(
    items: list[tuple[PathInfo, Path]],
    client: Client,
    jobs: int = 8,
    progress: bool | None = None,
    store: LocalStore | None = None,  # when given, attestations travel too
    signer: str | None = None,
) -> PushReport:
    """Push ``items`` (``prepare``'s) through ``client`` (see the module docstring);
    ``signer`` is the name of the key this push signs with (``--sign-key``)."""
    info_map = {i.path: i for i, _ in items}
    obj = {i.path: f for i, f in items}
    cache = await client.cache_info()
    sd = cache.get("StoreDir", "")
    for i in info_map.values():
        if i.path.rpartition("/")[0] != sd:
            raise KilnError(f"{i.path} is not in the registry's store dir {sd!r}")
    # (an xz narinfo, nix copy's, counts as missing: ours replaces it, as through a server)
    have = {
        h: t
        for h, t in (await client.narinfos([_hp(p) for p in info_map])).items()
        if layout.served_narinfo(t.encode())
    }
    missing = {p: i for p, i in info_map.items() if _hp(p) not in have}
    # published, but without a signature of ours the registry may want: this push's key's,
    # or a rotated key's of a signer whose older key's signature is there (NAME-2 beside
    # NAME-1): the narinfo goes again and the registry merges what it trusts
    # Likewise when its (unsigned) CA differs from ours: the registry repairs a false one
    resign = [
        p
        for p, i in info_map.items()
        if p not in missing and (new_sigs(have[_hp(p)], i.sigs, signer) or other_ca(have[_hp(p)], i.ca))
    ]
    # Blobs are checked for the whole closure, not only for missing narinfos: a published
    # narinfo whose NAR was lost (registry GC, disk trouble) gets its NAR back (repair).
    blobs = await client.have_blobs([nar_file_hash(i) for i in info_map.values()])
    to_upload = [p for p, i in info_map.items() if nar_file_hash(i).to_hex() not in blobs]
    need_nar = set(to_upload)
    total = sum(info_map[p].file_size or 0 for p in to_upload)
    prog = Progress("push", len(missing), total, progress)
    sem = asyncio.Semaphore(jobs)
    # every object goes only once it hashes to the store's record (``pushcheck``)
    checks = ObjectCheck(store.root if store is not None else None)

    def render(p: str) -> bytes:
        i = info_map[p]
        return ni.NarInfo.from_pathinfo(i, layout.nar_key(nar_file_hash(i)), "zstd").render().encode()

    # every narinfo that will go, rendered once and checked before anything is uploaded
    texts = {p: render(p) for p in (*missing, *resign)}
    check_sizes(texts)
    text_of = texts.__getitem__

    async def up_nar(p: str) -> None:
        async with sem:
            await checks.check([(info_map[p], obj[p])])
            await client.put_file(layout.nar_key(nar_file_hash(info_map[p])), obj[p])
        prog.add(0, info_map[p].file_size or 0)

    async def up_info(p: str) -> None:
        async with sem:
            await client.put_bytes(layout.narinfo_key(_hp(p)), text_of(p))
        prog.add(1)

    async def up_chunk(chunk: list[str]) -> bool:
        """POST /upload-batch (more than one if the narinfos are large); False if the
        server does not support it. Its objects are checked first: a bad one fails the
        chunk before anything of it is sent, and no chunk depending on it is sent
        (``uploadplan.run``)."""
        await checks.check([(info_map[p], obj[p]) for p in chunk if p in need_nar])
        if not await upload_sliced(
            client, [(_hp(p), text_of(p), obj[p] if p in need_nar else None) for p in chunk]
        ):
            return False
        prog.add(len(chunk), sum(info_map[p].file_size or 0 for p in chunk if p in need_nar))
        return True

    def refs(p: str) -> tuple[str, ...]:
        return info_map[p].references

    async def sent_chunk(chunk: list[str]) -> None:
        if not await up_chunk(chunk):
            raise RegistryError(f"{client.url} stopped taking upload batches during the push")

    async def up_one_info(chunk: list[str]) -> None:
        await client.put_bytes(layout.narinfo_key(_hp(chunk[0])), text_of(chunk[0]))
        prog.add(1)

    order = [p for level in levels(missing) for p in level]  # references first
    batched = bool(order) and await up_chunk(order[:1])  # probe with one path
    if batched:
        await asyncio.gather(*(up_nar(p) for p in to_upload if p not in missing))  # repairs
        nar_size = {p: info_map[p].file_size or 0 for p in need_nar}
        chunks = uploadplan.plan(order[1:], refs, lambda p: nar_size.get(p, 0), jobs, MAX_FRAMES)
        await uploadplan.run(chunks, sent_chunk, jobs)
    else:
        await asyncio.gather(*(up_nar(p) for p in to_upload))
        # one narinfo per request, each once its references' are in
        await uploadplan.run(uploadplan.plan(order, refs, lambda p: 0, jobs, 1), up_one_info, jobs)
    prog.done()
    refused: list[str] = []
    ca_refused: list[str] = []

    async def up_sigs(p: str) -> None:
        try:
            await up_info(p)
        except RegistryError as e:  # not trusted there: the path stays as published
            if e.status not in (400, 403, 409):
                raise
            signed = new_sigs(have[_hp(p)], info_map[p].sigs, signer)  # else sent for its CA alone
            (refused if signed else ca_refused).append(f"{p}: {e}")

    await asyncio.gather(*(up_sigs(p) for p in resign))
    if resign:  # a registry admits a narinfo it already has and drops signatures it does not trust
        sent = [p for p in resign if not any(r.startswith(f"{p}: ") for r in refused)]
        now = await client.narinfos([_hp(p) for p in sent])
        refused += [
            f"{p}: not kept (the registry does not trust the key)"
            for p in sent
            if new_sigs(now.get(_hp(p), ""), info_map[p].sigs, signer)
        ]
    atts = 0
    atts_refused: list[str] = []
    if store is not None:
        from .attest_transfer import push_attestations

        atts, atts_refused = await push_attestations(client, store, list(info_map), jobs)
    # always: a push whose uploads landed but whose publication was cut off must publish
    # on the re-run, when nothing is missing any more (a server with nothing new only
    # refreshes the timestamp)
    index = await client.publish_index()
    return PushReport(
        len(info_map),
        len(missing),
        len(to_upload),
        total,
        index,
        atts,
        len(resign) - len(refused) - len(ca_refused),
        tuple(refused),
        tuple(atts_refused),
        tuple(ca_refused),
    )


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


def push(
    store: LocalStore,
    paths: list[str],
    client_factory: Callable[[], Client],
    *,
    jobs: int = 8,
    sign_key: SecretKey | None = None,
    progress: bool | None = None,
) -> PushReport:
    """Synchronous entry point: ``client_factory()`` makes the ``Client`` inside the loop."""
    items = prepare(store, paths, sign_key)

    async def run() -> PushReport:
        async with client_factory() as client:
            return await push_prepared(
                items, client, jobs, progress, store, sign_key.name if sign_key else None
            )

    return run_async(run())
