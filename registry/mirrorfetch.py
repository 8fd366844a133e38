"""The object transfers of a mirror sync (``fetch_objects``): every object DST needs,
streamed from the source, verified and published (``mirrorobjects.place``).

Each object is streamed into a temp file while the compressed bytes and the NAR inside
are hashed (bounded: the download stops at FileSize, the NAR inside at NarSize; a cut
download starting over empties the file and the hashes: ``downloadsink.Sink``), and
published under ``nar/`` and ``blobs/`` only if both digests match the narinfo — linked
where DST has no file, renamed over a bad one. Small objects (up to 1 MiB) travel a few
hundred per ``POST /blob-batch`` where the source is a kiln server, each verified the
same way as it arrives; big ones (and all of them from other servers) one request each;
``jobs`` requests at a time. Nothing is made durable here: the sync's barrier after all
transfers does that, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

from kiln.store.errors import KilnError
from kiln.store.hashes import Hash
from kiln.store.narinfo import NarInfo

from .backends import DirSource
from .client import Client
from .downloadsink import Sink
from .mirrorobjects import place
from .progress import Progress
from .substitute import batchable, batches
from .verify import expect_info, verified_bytes, verifier_for

#: hex digest -> bytes fetched, or the error that object's transfer met
Outcome = dict[str, int | BaseException]


async def fetch_objects(
    client: Client,
    dst: DirSource,
    need: Mapping[str, NarInfo],
    replace: Mapping[str, Collection[str]],
    jobs: int,
    progress: bool | None,
) -> Outcome:
    """Fetch each object of ``need`` (hex digest -> a narinfo naming it), renamed over
    the bad files at ``replace[hex]`` (module docstring). Every object gets an outcome;
    the failure of one is not the others'."""
    prog = Progress("mirror", len(need), sum(i.file_size or 0 for i in need.values()), progress)
    sem = asyncio.Semaphore(jobs)
    # small objects a few hundred per request (``blob_batch``), big ones one each: a
    # mirror of many small paths must not cost a round trip per path
    small, alone = batchable(need.values())
    outcome: Outcome = {}
    cut = list(batches(small))
    answers = await asyncio.gather(
        *(_fetch_batch(client, dst, b, replace, sem, prog) for b in cut), return_exceptions=True
    )
    for b, a in zip(cut, answers, strict=True):
        if a is None:  # no batch endpoint there (nginx, a plain file server)
            alone += b
        elif isinstance(a, BaseException):
            if not isinstance(a, Exception):
                raise a
            outcome.update((_hex(i), a) for i in b)
        else:
            outcome.update(a)
    results = await asyncio.gather(
        *(_fetch_blob(client, dst, i, replace.get(_hex(i), ()), sem, prog) for i in alone),
        return_exceptions=True,
    )
    for i, r in zip(alone, results, strict=True):
        if not isinstance(r, Exception) and isinstance(r, BaseException):
            raise r
        outcome[_hex(i)] = r
    prog.done()
    return outcome


def _hex(info: NarInfo) -> str:
    assert info.file_hash is not None  # (``check_narinfo``)
    return info.file_hash.hex


async def _fetch_blob(
    client: Client,
    dst: DirSource,
    info: NarInfo,
    replace: Collection[str],
    sem: asyncio.Semaphore,
    prog: Progress,
) -> int:
    async with sem:
        # bounded: the download stops at FileSize, the NAR inside at NarSize
        ver = verifier_for(info)
        with dst.storage.staged() as (f, _):

            def write(chunk: bytes) -> None:
                ver.update(chunk)
                f.write(chunk)
                prog.add(0, len(chunk))

            def restart() -> None:  # (a cut download starting over: what came is discarded)
                nonlocal ver
                prog.add(0, -f.tell())
                f.seek(0)
                f.truncate()
                ver = verifier_for(info)

            if not await client.download(info.url, Sink(write, restart)):
                raise KilnError(f"{info.path}: source has no {info.url}")
            got = ver.finish()
            expect_info(info, got)
            place(dst, f, got, replace)
        return got.file_size


async def _fetch_batch(
    client: Client,
    dst: DirSource,
    batch: list[NarInfo],
    replace: Mapping[str, Collection[str]],
    sem: asyncio.Semaphore,
    prog: Progress,
) -> Outcome | None:
    """Fetch ``batch`` (small objects, distinct digests) with one ``blob_batch``, each
    verified (file and NAR digests) and written to DST as it arrives: hex digest ->
    bytes fetched, or the error for that object (a transfer that failed part way is the
    error of the objects it did not bring, not of those it did). None if the source has
    no batch endpoint."""
    by_hex = {_hex(i): i for i in batch}
    out: Outcome = {}

    def got(h: Hash, data: bytes | None) -> None:
        info = by_hex.get(h.hex)
        if info is None:
            return
        if data is None:
            out[h.hex] = KilnError(f"{info.path}: source has no {info.url}")
            return
        try:
            digests = verified_bytes(info, data)
            with dst.storage.staged() as (f, _):
                f.write(data)
                place(dst, f, digests, replace.get(h.hex, ()))
        except Exception as e:  # noqa: BLE001 - that object's failure, reported with the others
            out[h.hex] = e
            return
        prog.add(0, len(data))
        out[h.hex] = len(data)

    failed: Exception | None = None
    async with sem:
        sizes = {x: i.file_size for x, i in by_hex.items() if i.file_size is not None}
        try:
            if not await client.blob_batch(
                [i.file_hash for i in batch if i.file_hash is not None], got, sizes
            ):
                return None
        except Exception as e:  # noqa: BLE001 - the error of the objects it did not bring
            failed = e
    for x, i in by_hex.items():
        out.setdefault(x, failed or KilnError(f"{i.path}: the source did not send {i.url}"))
    return out
