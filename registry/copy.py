"""``kiln copy``: closures from a registry into a local store or into another registry.

Closure discovery walks narinfo ``References`` breadth-first, skipping what the
destination already has. From a kiln server it first takes the whole closure's narinfos
in one answer (``closurewalk``: a hint, each narinfo used still checked) and then asks
for everything below the first level at once, so a deep chain costs a few round trips,
not one per level; from other registries, one batched narinfo query per level. Every
narinfo must pass ``verify.check_narinfo`` (trusted signatures) before anything is transferred, and every
NAR is verified while it streams (file hash, and the NAR hash — by the store on import,
or by ``NarVerifier`` when relaying to another registry). Into a store, the paths are
registered by ``LocalStore.import_objects`` (group commit, see ``store.importbatch``) and
then the registry's attestations of the requested closures are fetched, of paths the store
held already too (``attest_transfer.fetch_attestations``: each checked against the local
path's NAR hash; only kinds the store lacks or holds in another version are downloaded,
so a publisher's re-signed SBOM reaches a store that copied the path before);
into another registry, they are relayed once the paths are published
(``attest_transfer.relay_attestations``), before the destination's index.

With a pinned index root (``kiln copy --to store --index-root``), a copy into a store
first verifies the source's signed index as a mirror sync does, against the versions
the store remembers for that root (``indexstate``: signatures, expiry, rollback), and
then reads the source only through it (``indexcheck``): every narinfo must be listed
and hash to its entry, attestations are those the index lists, each hashing to its
entry. A path the index does not vouch for fails the copy before anything is fetched.

Signatures of paths the store holds already (``_add_signatures``, as ``nix store
copy-sigs``): a copy into a store does not fetch a valid path again, but a publisher may
have re-signed it since (a key rotation), and ``kiln store verify --trusted-key NEW``
would fail on it for good. So the paths of the requested closures that were valid
before the copy and lack a valid signature by some key trusted for the copy are asked
for at the source (one batched query, through the index with ``--index-root``), and of
each narinfo the copy accepts, the signatures valid by a trusted key for the *local*
path's fingerprint are added (``pathadmit.sigs_to_add``: only added, never removed).
A copy whose paths all carry a valid signature by every trusted key asks nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.store import narinfo as ni
from kiln.store.errors import FormatError, KilnError, redact_urls
from kiln.store.pathadmit import sigs_to_add
from kiln.store.paths import StorePath
from kiln.store.signing import PublicKey, valid_signers
from kiln.store.systemp import owned_tmpdir

from .attest_fetch import fetch_attestations
from .attest_transfer import relay_attestations
from .client import Client, open_client
from .closurewalk import hinted_closure
from .indexcheck import IndexedClient, attestation_listings
from .indexstate import indexed
from .push import check_sizes, levels
from .relay import GROUP_BYTES, GROUP_OBJECTS, Relay, scratch_full
from .substitute import Substituter, batches
from .verify import check_narinfo, nar_file_hash


def _explain(sub: Substituter, src: str, missing: list[str], view: IndexedClient | None = None) -> str:
    refused = view.refused if view is not None else {}
    for p in missing:  # (the index's verdict first: it is why the path was not taken)
        if (why := refused.get(p.rsplit("/", 1)[1][:32])) is not None:
            n = sum(1 for m in missing if m.rsplit("/", 1)[1][:32] in refused)
            return f"{redact_urls(src)}: {n} path(s) refused by the signed index, e.g. {p}: {why}"
    why = sub.down.get(src) or next((sub.rejected[p] for p in missing if p in sub.rejected), "not found")
    return f"{redact_urls(src)} cannot provide {len(missing)} path(s), e.g. {missing[0]}: {why}"


def to_store(
    src: str,
    store: Any,
    paths: list[str],
    trusted: list[PublicKey],
    sigs_needed: int = 1,
    jobs: int = 16,
    progress: bool | None = None,
    token: str | None = None,
    attesters: Sequence[PublicKey] = (),
    index_root: bytes | None = None,
) -> int:
    """Copy the closures of ``paths`` from registry ``src`` (bearer ``token`` for a
    private one) into ``store``, then the registry's attestations of them (signed by
    ``trusted`` or ``attesters``, keys trusted for attestations only:
    ``attest_fetch.fetch_attestations``, whose ``AttestationError`` it raises after
    the paths are imported); returns the number of paths fetched (already-valid paths
    are skipped, but get the source's new signatures: ``_add_signatures``, which says
    on stderr how many it added). ``index_root``: the bytes of the source's pinned index root; then
    only what its verified signed index vouches for is taken (module docstring), and
    an index that fails its checks (``index.IndexError_``) fails the copy first."""
    for p in paths:
        StorePath.parse(p, store.store_dir)
    tokens = {src: token} if token else None
    with Substituter([(src, 0)], trusted, sigs_needed, jobs, progress, tokens=tokens) as sub:
        view = None if index_root is None else sub.run(indexed(sub.opened(src), store.root, index_root))
        if view is not None:
            sub.views[src] = view  # (queries, the hint and downloads go through it)
        wanted: dict[str, ni.NarInfo] = {}
        # rooted first, then checked (here and for references below): a GC must not
        # collect a valid path we skip, which a copied path refers to, before the import
        store.keep(paths)
        frontier = sorted({p for p in paths if not store.is_valid(p)})
        hint = sub.run(_hint(sub, src, frontier))
        while frontier:
            # this level and what the hint says lies below it that the store lacks: all
            # of it in one query (a batch per 2,000) when the hint is right
            below = _lacking(store, hinted_closure(frontier, hint, store.store_dir).values(), wanted)
            infos = sub.query_many(sorted(set(frontier) | below))
            missing = [p for p in frontier if p not in infos]
            if missing:
                raise KilnError(_explain(sub, src, missing, view))
            wanted.update(infos)
            refs = sorted({r for i in infos.values() for r in i.references if r != i.path} - set(wanted))
            store.keep(refs)
            frontier = [r for r in refs if not store.is_valid(r)]
        if wanted:
            sub.fetch_many(store, list(wanted.values()))
        closure = store.closure(paths)
        _add_signatures(sub, store, src, [p for p in closure if p not in wanted], trusted)
        # attestations (provenance, SBOMs, VSAs) travel with the paths, checked against
        # them: of the whole closures, held ones too (re-signed since, after a rotation)
        done = sorted(set(wanted) | set(closure))
        raw = view.inner if view is not None else sub.client(src)  # (batched where it can be)
        listed = attestation_listings(view.paths) if view is not None else None
        sub.run(fetch_attestations(raw, store, done, attesters=attesters, listed=listed))
        return len(wanted)


def _add_signatures(sub: Substituter, store: Any, src: str, held: list[str], trusted: list[PublicKey]) -> int:
    """Add to the paths ``held`` (valid before this copy) the signatures of ``src``'s
    narinfos for them that are valid by ``trusted`` keys for the local path (module
    docstring); only those lacking a valid signature by some trusted key are asked for.
    Says how many were added (stderr); returns that number. A source that fails to
    answer, or a narinfo it refuses, is a warning: the copy itself is done by then."""
    names = {k.name for k in trusted}
    lacking = {}
    for p in held:
        info = store.query(p)
        if info is not None and not names <= valid_signers(info, trusted):
            lacking[p] = info
    if not lacking:
        return 0
    offered_infos = sub.query_many(sorted(lacking))
    # (query_many does not raise for a registry that fails: it marks it down, or a
    # narinfo rejected; what was asked for is copied by now, so a warning, not a failure)
    why = sub.down.get(src) or next((sub.rejected[p] for p in sorted(lacking) if p in sub.rejected), None)
    if why is not None:
        print(
            f"warning: could not get new signatures from {redact_urls(src)} for some of the "
            f"{len(lacking)} path(s) the store held already: {redact_urls(why)}",
            file=sys.stderr,
        )
    added = touched = 0
    for p, offered in offered_infos.items():
        new = sigs_to_add(lacking[p], offered.sigs, trusted)
        if new:
            store.add_signatures(p, new)
            added, touched = added + len(new), touched + 1
    if added:
        print(
            f"added {added} signature(s) from {redact_urls(src)} to {touched} path(s) the store held already",
            file=sys.stderr,
        )
    return added


async def _hint(sub: Substituter, src: str, paths: list[str]) -> dict[str, str]:
    """``narinfo_closure`` of ``paths`` from registry ``src`` ({} if none are asked for
    or it fails: the walk asks anyway, and reports what is wrong as it always did)."""
    if not paths:
        return {}
    try:
        client = sub.client(src)
        if not client.store_dir:
            await client.cache_info()
        return await client.narinfo_closure([p.rsplit("/", 1)[1][:32] for p in paths])
    except KilnError:
        return {}


def _lacking(store: Any, paths: Iterable[str], wanted: Collection[str]) -> set[str]:
    """Those of ``paths`` neither in ``wanted`` nor valid in ``store`` (rooted first, as
    every path the copy checks: a GC must not collect one it then skips)."""
    todo = [p for p in paths if p not in wanted]
    store.keep(todo)
    return {p for p in todo if not store.is_valid(p)}


def _store_path_line(text: str) -> str | None:
    """The ``StorePath:`` of a narinfo's text (the destination's own: not checked further)."""
    for line in text.splitlines():
        if line.startswith("StorePath: "):
            return line[len("StorePath: ") :].strip()
    return None


async def _closure(
    src: Client, dst: Client, paths: list[str], trusted: list[PublicKey], sigs_needed: int
) -> tuple[dict[str, ni.NarInfo], dict[str, str]]:
    """The narinfos (checked) of the closure of ``paths`` that ``dst`` lacks, and the
    NAR hashes (hex) of the asked paths ``dst`` already has (from its own narinfos)."""
    wanted: dict[str, ni.NarInfo] = {}
    present: dict[str, str] = {}
    asked = set(paths)
    # an unsigned path its CA proves (``caclaim``) goes only into a directory, which checks
    # the content against the claim as it publishes; a server asks signatures of every
    # upload, so it is refused here, before anything is downloaded for it
    from .dirclient import DirClient

    proves = isinstance(dst, DirClient)
    frontier = sorted(asked)
    hint = await src.narinfo_closure([p.rsplit("/", 1)[1][:32] for p in frontier])
    # the destination is asked about the whole hinted closure with the first level (what
    # it has is not walked, so some of these answers go unused), then about what the
    # hint missed, level by level
    at_dst: dict[str, str] = {}  # hash part -> the destination's narinfo
    asked_dst: set[str] = set()
    below = list(hinted_closure(frontier, hint, src.store_dir))
    while frontier:
        hs = {p.rsplit("/", 1)[1][:32]: p for p in frontier}
        ask_dst = [h for h in dict.fromkeys([*hs, *below]) if h not in asked_dst]
        below = []
        if ask_dst:
            at_dst.update(await dst.narinfos(ask_dst))
            asked_dst.update(ask_dst)
        have = {h: at_dst[h] for h in hs if h in at_dst}
        for h, text in have.items():
            there = _store_path_line(text)
            if there != hs[h]:  # one hash part, two names: the asked path is not there
                raise KilnError(
                    f"{dst.url} holds {there or 'a narinfo without StorePath'} under the hash part of "
                    f"{hs[h]}: cannot copy it there"
                )
            if hs[h] in asked:  # its attestations may still have to follow (a re-run)
                # (the destination's own narinfo: one that does not parse gets none)
                with contextlib.suppress(FormatError):
                    present[hs[h]] = ni.parse(text, dst.store_dir).nar_hash.hex
        ask = [h for h in hs if h not in have]
        texts = {h: hint[h] for h in ask if h in hint}  # (checked below as any other)
        rest = [h for h in ask if h not in texts]
        texts |= await src.narinfos(rest) if rest else {}
        nxt: set[str] = set()
        for h in ask:
            if h not in texts:
                raise KilnError(f"{src.url} has no narinfo for {hs[h]}")
            info = check_narinfo(
                texts[h], src.store_dir, trusted, sigs_needed, h, source=src.url, content_proves=proves
            )
            if info.path != hs[h]:  # same hash part, another name: not the path asked for
                raise KilnError(f"{src.url}: the narinfo for {hs[h]} is for {info.path}")
            wanted[info.path] = info
            nxt |= {r for r in info.references if r != info.path}
        frontier = sorted(r for r in nxt if r not in wanted)
    return wanted, present


async def between(
    src_url: str,
    dst_factory: Callable[[str], Client],
    paths: list[str],
    trusted: list[PublicKey],
    sigs_needed: int = 1,
    jobs: int = 16,
    src_token: str | None = None,
) -> Copied:
    """Relay the closures of ``paths`` from registry ``src_url`` (bearer ``src_token``
    for a private one) to another registry, then the attestations of the copied and
    the asked paths (``attest_transfer.relay_attestations``: one either side refuses is
    reported in ``Copied.refused``, not raised), then publish the destination's index.

    Dependencies first (one topological order), in groups of at most ``GROUP_OBJECTS``
    paths or about ``GROUP_BYTES`` bytes (which bounds the scratch space), one group
    after the other: each group's objects the destination lacks are downloaded into a
    scratch directory, verified (file and NAR digests; small ones a few hundred per
    ``blob_batch`` from a kiln server), then uploaded with their narinfos
    (``upload_batch`` to a kiln server or a directory, in chunks ordered by
    ``uploadplan``; else one PUT per object and narinfo, a narinfo only after its
    object and its references'). ``dst_factory(store_dir)`` opens the destination with
    the source's store dir (a directory registry it makes is made with that one)."""
    async with open_client(src_url, src_token, jobs=jobs, create=False) as src:
        await src.cache_info()
        async with dst_factory(src.store_dir) as dst:
            return await _between(src, dst, paths, trusted, sigs_needed, jobs)


async def _between(
    src: Client, dst: Client, paths: list[str], trusted: list[PublicKey], sigs_needed: int, jobs: int
) -> Copied:
    """``between`` once both ends are open."""
    dinfo = await dst.cache_info()
    if dinfo.get("StoreDir") != src.store_dir:
        raise KilnError(
            f"store dirs differ: {src.url} holds paths of {src.store_dir}, {dst.url} of "
            f"{dinfo.get('StoreDir')} (a registry holds one store dir's paths)"
        )
    wanted, present = await _closure(src, dst, paths, trusted, sigs_needed)
    # no registry takes a narinfo over the limit: refused before anything is relayed
    check_sizes({p: i.render().encode() for p, i in wanted.items()})
    blobs = await dst.have_blobs([nar_file_hash(i) for i in wanted.values()]) if wanted else set()
    sem = asyncio.Semaphore(jobs)
    relay = Relay(src, dst, sem, jobs)
    # (owned: a kill -9 must not leave the spooled objects in $TMPDIR for good)
    with owned_tmpdir("copy") as scratch:
        # one topological order (references first), cut into groups done one after
        # the other: a group's references are in it or published with an earlier one
        order = [p for level in levels(wanted) for p in level]
        for group in batches([wanted[p] for p in order], GROUP_OBJECTS, GROUP_BYTES):
            need = {nar_file_hash(i).hex: i for i in group if nar_file_hash(i).hex not in blobs}
            try:
                files = await relay.fetch(list(need.values()), scratch)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise KilnError(scratch_full(scratch, e)) from None
            await relay.publish(group, files)
            blobs |= set(need)
            for f in files.values():
                f.unlink()
    subjects = {**present, **{p: i.nar_hash.hex for p, i in wanted.items()}}
    failed: KilnError | None = None
    try:
        atts, refused = await relay_attestations(src, dst, subjects, jobs)
    except KilnError as e:  # (a 5xx, an unreachable side: not one file refused)
        atts, refused, failed = 0, [], e
    # always, as push does: a copy cut off after its uploads publishes on the re-run,
    # when nothing is missing any more (a server with nothing new refreshes its timestamp)
    await dst.publish_index()
    if failed is not None:  # the paths are there and published; the run still failed
        raise KilnError(
            f"copied and published {len(wanted)} paths, but their attestations could not be "
            f"relayed (run the copy again): {failed}"
        ) from failed
    return Copied(len(wanted), atts, tuple(refused))


@dataclass(frozen=True, slots=True)
class Copied:
    """What ``between`` copied: paths, attestations, and ``"path kind: why"`` for each
    attestation one side refused."""

    paths: int
    attestations: int
    refused: tuple[str, ...] = ()
