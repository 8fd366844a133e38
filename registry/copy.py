"""``kiln copy``: closures from a registry into a local store or into another registry.

Closure discovery walks narinfo ``References`` breadth-first, one batched narinfo query
per level, skipping what the destination already has. Every narinfo must pass
``verify.check_narinfo`` (trusted signatures) before anything is transferred, and every
NAR is verified while it streams (file hash, and the NAR hash — by the store on import,
or by ``NarVerifier`` when relaying to another registry). Into a store, the paths are
registered by ``LocalStore.import_objects`` (group commit, see ``store.importbatch``) and
then the registry's attestations of the copied and requested paths are fetched
(``attest_transfer.fetch_attestations``: each checked against the local path's NAR hash).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.store import narinfo as ni
from kiln.store.errors import FormatError, KilnError
from kiln.store.paths import StorePath
from kiln.store.signing import PublicKey

from . import layout
from .attest_transfer import fetch_attestations
from .client import Client, open_client
from .push import levels
from .substitute import Substituter
from .verify import NarVerifier, check_narinfo, expect


def _explain(sub: Substituter, src: str, missing: list[str]) -> str:
    why = sub.down.get(src) or next((sub.rejected[p] for p in missing if p in sub.rejected), "not found")
    return f"{src} cannot provide {len(missing)} path(s), e.g. {missing[0]}: {why}"


def to_store(
    src: str,
    store: Any,
    paths: list[str],
    trusted: list[PublicKey],
    sigs_needed: int = 1,
    jobs: int = 16,
    progress: bool | None = None,
    token: str | None = None,
) -> int:
    """Copy the closures of ``paths`` from registry ``src`` (bearer ``token`` for a
    private one) into ``store``; returns the number of paths fetched (already-valid
    paths are skipped)."""
    for p in paths:
        StorePath.parse(p, store.store_dir)
    tokens = {src: token} if token else None
    with Substituter([(src, 0)], trusted, sigs_needed, jobs, progress, tokens=tokens) as sub:
        wanted: dict[str, ni.NarInfo] = {}
        # rooted first, then checked (here and for references below): a GC must not
        # collect a valid path we skip, which a copied path refers to, before the import
        store.keep(paths)
        frontier = sorted({p for p in paths if not store.is_valid(p)})
        while frontier:
            infos = sub.query_many(frontier)
            missing = [p for p in frontier if p not in infos]
            if missing:
                raise KilnError(_explain(sub, src, missing))
            wanted.update(infos)
            refs = sorted({r for i in infos.values() for r in i.references if r != i.path} - set(wanted))
            store.keep(refs)
            frontier = [r for r in refs if not store.is_valid(r)]
        if wanted:
            sub.fetch_many(store, list(wanted.values()))
        # attestations (provenance, SBOMs, VSAs) travel with the paths, checked against them
        sub.run(fetch_attestations(sub.client(src), store, sorted(set(wanted) | set(paths))))
        return len(wanted)


async def _closure(
    src: Client, dst: Client, paths: list[str], trusted: list[PublicKey], sigs_needed: int
) -> dict[str, ni.NarInfo]:
    wanted: dict[str, ni.NarInfo] = {}
    frontier = sorted(set(paths))
    while frontier:
        hs = {p.rsplit("/", 1)[1][:32]: p for p in frontier}
        have = await dst.narinfos(list(hs))
        ask = [h for h in hs if h not in have]
        texts = await src.narinfos(ask) if ask else {}
        nxt: set[str] = set()
        for h in ask:
            if h not in texts:
                raise KilnError(f"{src.url} has no narinfo for {hs[h]}")
            info = check_narinfo(texts[h], src.store_dir, trusted, sigs_needed, h)
            wanted[info.path] = info
            nxt |= {r for r in info.references if r != info.path}
        frontier = sorted(r for r in nxt if r not in wanted)
    return wanted


async def between(
    src_url: str,
    dst_factory: Callable[[], Client],
    paths: list[str],
    trusted: list[PublicKey],
    sigs_needed: int = 1,
    jobs: int = 16,
    src_token: str | None = None,
) -> int:
    """Relay the closures of ``paths`` from registry ``src_url`` (bearer ``src_token``
    for a private one) to another registry."""
    async with open_client(src_url, src_token, jobs=jobs, create=False) as src, dst_factory() as dst:
        await src.cache_info()
        dinfo = await dst.cache_info()
        if dinfo.get("StoreDir") != src.store_dir:
            raise KilnError(f"store dirs differ: {src.store_dir} vs {dinfo.get('StoreDir')}")
        wanted = await _closure(src, dst, paths, trusted, sigs_needed)
        blobs = await dst.have_blobs([i.file_hash for i in wanted.values()]) if wanted else set()  # type: ignore[misc]
        sem = asyncio.Semaphore(jobs)

        async def relay(info: ni.NarInfo) -> None:
            if info.file_hash.to_hex() in blobs:  # type: ignore[union-attr]
                return
            async with sem:
                with tempfile.NamedTemporaryFile(prefix="kiln-copy-") as f:
                    # bounded: the download stops at FileSize, the NAR inside at NarSize
                    ver = NarVerifier(max_nar_size=info.nar_size, max_file_size=info.file_size)

                    def write(chunk: bytes) -> None:
                        ver.update(chunk)
                        f.write(chunk)

                    try:
                        if not await src.download(info.url, write):
                            raise KilnError(f"{src.url}/{info.url} is missing")
                    except FormatError as e:  # past a limit: name the path
                        raise KilnError(f"{info.path}: {e}") from None
                    f.flush()
                    expect(
                        info.path, ver.finish(), info.file_hash, info.file_size, info.nar_hash, info.nar_size
                    )
                    await dst.put_file(layout.nar_key(info.file_hash), Path(f.name))  # type: ignore[arg-type]

        await asyncio.gather(*(relay(i) for i in wanted.values()))
        for level in levels(wanted):  # type: ignore[arg-type]

            async def put(p: str) -> None:
                async with sem:
                    await dst.put_bytes(
                        layout.narinfo_key(p.rsplit("/", 1)[1][:32]), wanted[p].render().encode()
                    )

            await asyncio.gather(*(put(p) for p in level))
        if wanted:
            await dst.publish_index()
        return len(wanted)
