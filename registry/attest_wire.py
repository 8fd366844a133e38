"""Attestations in batches, client side: ``fetch_many`` (``POST /attestation-batch``)
and ``upload_many`` (``POST /attestation-upload-batch``), as objects travel in
``blob-batch`` and ``upload-batch`` requests, instead of one request per file.

Each falls back to one request per file (``GET``/``PUT /<h>.att/<kind>.dsse.json``) where
the registry has no such endpoint (404/405/501: an older ``kiln serve``, nginx or
another static file server), remembered for the client's lifetime as ``blob_batch``
does. A ``file://`` registry (``DirClient``) is read file by file (no round trips) and
written with ``attest_batch.admit_many`` (one lock, one barrier).

Nothing a server sends is trusted for size or shape: an entry not asked for, a broken
line or an entry over ``MAX_BODY`` is a ``RegistryError`` for the entries not yet
received (the caller's ``got`` sees each), as is an answer that broke off once asking
again for those has been given up (``httpremainder``); the callers check every file
against its listing's sha256 as for a single ``GET``. (The batch requests themselves
are ``HttpClient``'s: ``attestation_batch`` and ``attestation_upload_batch``, in
``httpattest``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from kiln.store.errors import KilnError

from . import layout
from .attest_batch import MAX_UPLOAD_BODY, Upload, admit_many
from .attest_transfer import MAX_ATTESTATION
from .client import RegistryError
from .tokentext import scrub, sent_by

#: (hash part, kind) pairs per ``POST /attestation-batch`` (the server takes 4,096)
FETCH_BATCH = 1000
#: attestations and bytes per ``POST /attestation-upload-batch`` (the server takes 2,000
#: and 64 MiB); one over ``MAX_ATTESTATION`` goes alone as a ``PUT`` (and is refused there)
UPLOAD_BATCH = 1000
UPLOAD_BYTES = 16 << 20
# a batch ``_chunks`` cuts (at most ``UPLOAD_BATCH`` files of ``UPLOAD_BYTES`` in all, each
# with a header line of under 128 bytes) is never more than the server takes
assert UPLOAD_BYTES + MAX_ATTESTATION + 128 * UPLOAD_BATCH <= MAX_UPLOAD_BODY
#: batch requests in flight at once per call
CONCURRENT = 2

#: ``got(hash part, kind, result)``: the file's bytes, None if the registry has none, or
#: the ``KilnError`` that stopped its transfer
Got = Callable[[str, str, "bytes | None | KilnError"], Any]


def _http(client: Any) -> bool:
    from .httpclient import HttpClient

    return isinstance(client, HttpClient)


async def fetch_many(
    client: Any,
    pairs: list[tuple[str, str]],
    got: Got,
    *,
    jobs: int = 8,
    sem: asyncio.Semaphore | None = None,
) -> None:
    """Download the attestation files ``pairs`` (hash part, kind: valid kinds only) and
    call ``got`` once for each (module docstring). ``jobs`` (or ``sem``) bounds the
    single requests of the fallback. An exception ``got`` raises ends the transfer."""
    sem = sem or asyncio.Semaphore(jobs)
    if not pairs:
        return
    if not _http(client):
        await _fetch_each(client, pairs, got, sem)
        return
    gate = asyncio.Semaphore(CONCURRENT)

    async def part(p: list[tuple[str, str]]) -> None:
        async with gate:
            done = await client.attestation_batch(p, got)
        if not done:
            await _fetch_each(client, p, got, sem)

    await asyncio.gather(*(part(pairs[i : i + FETCH_BATCH]) for i in range(0, len(pairs), FETCH_BATCH)))


async def _fetch_each(client: Any, pairs: list[tuple[str, str]], got: Got, sem: asyncio.Semaphore) -> None:
    async def one(h: str, kind: str) -> None:
        try:
            async with sem:
                data = await client.get(layout.att_key(h, kind))
        except KilnError as e:
            got(h, kind, e)
            return
        got(h, kind, data)

    await asyncio.gather(*(one(h, k) for h, k in pairs))


async def upload_many(
    client: Any, items: list[tuple[str, str, bytes]], jobs: int = 8
) -> list[RegistryError | None]:
    """Upload attestation files (hash part, kind, bytes) whose paths' narinfos are
    published. Returns, per item in order, None if the registry took it (or had it) or
    the ``RegistryError`` of its refusal (``attest_transfer.REFUSED``: evidence it does
    not take, not a failure); any other error is raised."""
    from .attest_transfer import REFUSED

    out: list[RegistryError | None] = [None] * len(items)
    secrets = sent_by(client)

    def judge(n: int, status: int, msg: str) -> None:
        if status in (200, 201):
            return
        h, k, _ = items[n]
        # (the server's message, with the credentials the client sent hidden)
        e = RegistryError(
            f"{client.url}/{layout.att_key(h, k)}: HTTP {status}: {scrub(msg, secrets)}", status
        )
        if status not in REFUSED:
            raise e
        out[n] = e

    if not items:
        return out
    from .dirclient import DirClient

    if isinstance(client, DirClient):  # the caller owns the directory: signers are not judged
        entries = [Upload(h, k, d) for h, k, d in items]
        results = await asyncio.get_running_loop().run_in_executor(
            None, lambda: admit_many(client.src.storage, client.store_dir, entries, None)
        )
        for n, (st, msg) in enumerate(results):
            judge(n, st, msg)
        return out
    sem = asyncio.Semaphore(jobs)

    async def one(n: int) -> None:
        h, k, data = items[n]
        try:
            async with sem:
                await client.put_bytes(layout.att_key(h, k), data)
        except RegistryError as e:
            if e.status not in REFUSED:
                raise
            out[n] = e

    small = [n for n, it in enumerate(items) if len(it[2]) <= MAX_ATTESTATION]
    alone = [n for n, it in enumerate(items) if len(it[2]) > MAX_ATTESTATION]
    if _http(client):
        gate = asyncio.Semaphore(CONCURRENT)

        async def part(ns: list[int]) -> None:
            async with gate:
                res = await client.attestation_upload_batch([items[n] for n in ns])
            if res is None:
                await asyncio.gather(*(one(n) for n in ns))
                return
            for n, (st, msg) in zip(ns, res, strict=True):
                judge(n, st, msg)

        await asyncio.gather(*(part(ns) for ns in _chunks(small, items)))
    else:
        alone += small
    await asyncio.gather(*(one(n) for n in alone))
    return out


def _chunks(ns: list[int], items: list[tuple[str, str, bytes]]) -> Iterator[list[int]]:
    cur: list[int] = []
    size = 0
    for n in ns:
        if cur and (len(cur) >= UPLOAD_BATCH or size + len(items[n][2]) > UPLOAD_BYTES):
            yield cur
            cur, size = [], 0
        cur.append(n)
        size += len(items[n][2])
    if cur:
        yield cur


async def fetch_indexed(
    client: Any,
    dst: Any,
    paths: dict[str, dict],
    texts: dict[str, str],
    failed: dict[str, str],
    sem: asyncio.Semaphore,
) -> dict[str, dict[str, bytes]]:
    """For ``mirror``: fetch the attestation files the signed index lists (``paths``:
    hash part -> index entry) and mirror directory ``dst`` lacks, in batches; each must
    hash to the index's sha256 and name its path with the narinfo's NarHash (``texts``,
    else ``dst``'s). Problems go to ``failed`` (path -> why); a transfer error is
    raised. Returns ``{hash part: {kind: bytes}}`` to publish."""
    import hashlib

    from kiln.store import narinfo as ni

    from .attest_transfer import check_envelope, listing

    want: dict[tuple[str, str], str] = {}
    for h, e in paths.items():
        listed = e.get("attestations") or {}
        if not isinstance(listed, dict) or not listed:
            continue
        have = listing(dst.storage, h)
        want.update(((h, k), sha) for k, sha in sorted(listed.items()) if have.get(k) != sha)
    out: dict[str, dict[str, bytes]] = {}

    def got(h: str, kind: str, data: bytes | None | KilnError) -> None:
        if isinstance(data, KilnError):
            raise data
        path = paths[h]["path"]
        if data is None:
            failed[path] = f"{kind} attestation listed in the index is missing at the source"
            return
        if hashlib.sha256(data).hexdigest() != want[(h, kind)]:
            failed[path] = f"{kind} attestation does not match the sha256 in the signed index (tampered?)"
            return
        text = texts.get(h) or (dst.narinfo(h) or b"").decode(errors="replace")
        try:
            nar_hex = ni.parse(text, dst.store_dir).nar_hash.hex
            check_envelope(data, kind, path.rsplit("/", 1)[1], nar_hex, None)
        except KilnError as ex:
            failed[path] = str(ex)
            return
        out.setdefault(h, {})[kind] = data

    await fetch_many(client, list(want), got, sem=sem)
    return out
