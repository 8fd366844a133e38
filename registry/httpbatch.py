"""The batch requests of ``HttpClient`` (``httpclient``): ``blob_batch`` (``BlobBatches``,
mixed into it), the ``upload-batch`` body, and reading and checking the ``blob-batch``
and ``narinfo-batch`` answers. Nothing a server sends is trusted for its size or shape
(see ``httpclient``'s docstring). A ``blob-batch`` answer that breaks off on the way
(among others, one silent for the pace's grace period: ``pace``, not one that trickles)
is asked again for the objects not received whole (``httpremainder``).

A ``narinfo-batch`` query is sent with ``"defer": true``: a kiln server then answers
about ``batchapi.DEFER_AT`` bytes of entries at a time and lists what it left out under
``"deferred": {request field: [entries]}``, which the client asks for again
(``deferred_of`` checks that such a list names only entries asked for and answers at
least one of them, so the loop ends: a server that defers everything is an error);
``merge_batch`` joins the answers. An older server ignores ``defer`` and answers whole.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from kiln.store.errors import KilnError
from kiln.store.hashes import Hash

from .client import CHUNK, RegistryError
from .httperrors import Broken
from .httperrors import answer_errors as answer_errors  # (re-exported: ``httpattest``)
from .httpremainder import until_whole
from .httpretry import Cuts
from .pace import LINE_TOO_LONG, Link, Pace


async def read_blob_batch(
    resp: aiohttp.ClientResponse,
    what: str,
    want: dict[str, Hash],
    sizes: dict[str, int] | None,
    got: Callable[[Hash, bytes | None], Any],
    pace: Pace,
    max_body: int,
) -> None:
    """Read a ``blob-batch`` answer: for each of ``want`` (hex digest -> digest), a line
    ``<hex> <size>`` then the bytes, or ``<hex> -`` for a missing object; ``got(digest,
    bytes or None)`` for each, then taken out of ``want`` (which so holds exactly the
    objects not received whole: ``httpremainder``). An entry not asked for, a size other
    than ``sizes`` says (or over ``max_body``) or a long line is a ``RegistryError``,
    raised before the object's bytes are read; an answer that breaks off (ends before
    its entries did, among others) a ``Broken``."""
    with answer_errors(what):
        while want:
            try:
                line = await pace.read(resp.content.readline(), 80)
            except LINE_TOO_LONG:
                raise RegistryError(f"{what}: an entry line is too long (broken answer)") from None
            if not line:  # (the body ended: as a cut, which retryable tells as temporary)
                raise Broken(f"{what}: answer cut short") from asyncio.IncompleteReadError(b"", None)
            hexd, _, size = line.decode("ascii", "replace").strip().partition(" ")
            h = want.get(hexd)
            if h is None or not (size == "-" or size.isdigit()):
                raise RegistryError(f"{what}: unexpected entry {line[:100]!r}")
            if size == "-":
                del want[hexd]
                got(h, None)
                continue
            n = int(size)
            expect = (sizes or {}).get(hexd)
            if (expect is not None and n != expect) or n > max_body:
                raise RegistryError(
                    f"{what}: object {hexd} announced at {n} bytes, expected "
                    f"{expect if expect is not None else f'at most {max_body}'}"
                )
            data = await pace.read(resp.content.readexactly(n), n)
            del want[hexd]  # (only now: an object cut short is asked for again)
            got(h, data)


class BlobBatches:
    """``blob_batch``, mixed into ``HttpClient``, which provides ``url``, ``_link``,
    ``_cuts``, ``_request``, ``_fail`` and the flag ``_blob_batch_ok``."""

    if TYPE_CHECKING:
        url: str
        _link: Link
        _cuts: Cuts
        _blob_batch_ok: bool

        async def _request(self, method: str, key: str, **kw: Any) -> aiohttp.ClientResponse: ...

        async def _fail(self, resp: aiohttp.ClientResponse, what: str) -> RegistryError: ...

    async def blob_batch(
        self,
        hashes: list[Hash],
        got: Callable[[Hash, bytes | None], Any],
        sizes: dict[str, int] | None = None,
    ) -> bool:
        """Fetch whole compressed objects (small ones: each is held in memory) with one
        ``POST /blob-batch``: ``got(digest, bytes)`` per object, ``got(digest, None)``
        for one the registry lacks, in request order. The bytes are as received: the
        caller checks them against the digest. ``sizes`` (hex digest -> expected size)
        refuses, before reading it, an object announced at another size; without it an
        object may be at most ``MAX_BODY`` bytes. An answer that breaks off is asked
        again for the objects not yet received (``httpremainder``); ``got`` is called
        once per object at most. Returns False, having fetched nothing, if the server
        has no such endpoint (the caller then downloads one by one)."""
        from .httpclient import MAX_BODY

        if not self._blob_batch_ok:
            return False
        want = {h.hex: h for h in hashes}
        what = f"POST {self.url}/blob-batch"

        async def ask(first: bool) -> bool | KilnError:
            async with await self._request("POST", "blob-batch", json={"blobs": list(want)}) as resp:
                if first and resp.status in (404, 405, 501):
                    self._blob_batch_ok = False
                    return False
                if resp.status != 200:
                    raise await self._fail(resp, what)
                # (``body``: a silent answer is told from a trickle, ``pace``)
                pace = Pace(what, RegistryError, self._link, body=resp.content)
                try:
                    await read_blob_batch(resp, what, want, sizes, got, pace, MAX_BODY)
                except Broken as e:
                    return e
            return True

        out = await until_whole(self._cuts, ask)
        if isinstance(out, KilnError):
            raise out
        return out


def upload_batch_body(frames: list[tuple[str, bytes, Path | None]]) -> tuple[int, AsyncIterator[bytes]]:
    """The ``upload-batch`` body for (hash part, narinfo, optional NAR file) frames: each
    is a line ``<narinfo length> <file size> <hash part>``, the narinfo, then the file.
    Returns its total length (for ``Content-Length``) and the body, read from the files
    as it is sent."""
    sizes = [p.stat().st_size if p is not None else 0 for _, _, p in frames]
    heads = [f"{len(text)} {z} {h}\n".encode() for (h, text, _), z in zip(frames, sizes, strict=True)]
    total = sum(len(hd) + len(fr[1]) + z for hd, fr, z in zip(heads, frames, sizes, strict=True))

    async def body() -> Any:
        buf = bytearray()
        for hd, (_, text, path) in zip(heads, frames, strict=True):
            buf += hd
            buf += text
            if path is not None:
                with open(path, "rb") as f:
                    while chunk := f.read(CHUNK):
                        buf += chunk
                        if len(buf) >= CHUNK:
                            yield bytes(buf)
                            buf.clear()
            if len(buf) >= 1 << 16:
                yield bytes(buf)
                buf.clear()
        if buf:
            yield bytes(buf)

    return total, body()


def batch_answer(raw: bytes, what: str) -> dict[str, Any]:
    """The ``narinfo-batch`` answer ``raw``, parsed and ``checked_batch``."""
    try:
        res = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise RegistryError(f"{what}: not JSON ({e or 'nested too deep'})") from None
    return checked_batch(res, what)


def checked_batch(res: Any, what: str) -> dict[str, Any]:
    """A ``narinfo-batch`` answer with the shape the callers rely on, else
    ``RegistryError``: a dict whose ``narinfos`` maps str to str, ``blobs`` is a list of
    str, ``attestations``/``by_nar_hash`` are dicts and ``deferred`` maps to lists of str
    (each present or not)."""

    def bad(field: str) -> RegistryError:
        return RegistryError(f"{what}: malformed answer ({field})")

    if not isinstance(res, dict):
        raise bad("not an object")
    ni = res.get("narinfos", {})
    if not isinstance(ni, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ni.items()):
        raise bad("narinfos")
    blobs = res.get("blobs", [])
    if not isinstance(blobs, list) or not all(isinstance(b, str) for b in blobs):
        raise bad("blobs")
    for key in ("attestations", "by_nar_hash"):
        if not isinstance(res.get(key, {}), dict):
            raise bad(key)
    deferred = res.get("deferred", {})
    if not isinstance(deferred, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in deferred.values()
    ):
        raise bad("deferred")
    return res


#: the request fields an answer may defer entries of, and the answer field of each
DEFERRABLE = {"hashes": "narinfos", "attestations": "attestations", "nar_hashes": "by_nar_hash"}


def deferred_of(res: dict[str, Any], asked: dict[str, Any], what: str) -> dict[str, list[str]]:
    """The entries a (``checked_batch``) answer to the request ``asked`` deferred, as the
    next request's fields (``{}``: none). ``RegistryError`` if it defers a field or
    entry not asked for, or one it also answered, or every entry asked for (no progress:
    the client would ask forever)."""
    deferred = res.get("deferred", {})
    out: dict[str, list[str]] = {}
    for field, entries in deferred.items():
        mine = set(asked.get(field, [])) if field in DEFERRABLE else set()
        answered = res.get(DEFERRABLE.get(field, ""), {})
        if not set(entries) <= mine or any(e in answered for e in entries):
            raise RegistryError(f"{what}: malformed answer (deferred {field} not asked for or answered)")
        if entries:
            out[field] = list(dict.fromkeys(entries))
    if out and sum(map(len, out.values())) >= sum(len(set(asked.get(f, []))) for f in DEFERRABLE):
        raise RegistryError(f"{what}: the answer deferred every entry asked for")
    return out


def merge_batch(into: dict[str, Any] | None, res: dict[str, Any]) -> dict[str, Any]:
    """``res`` (a later answer to the deferred entries) merged into ``into`` (the answers
    so far; None for the first): a field is present if any answer had it."""
    if into is None:
        return {k: v for k, v in res.items() if k != "deferred"}
    for field in DEFERRABLE.values():
        if field in res:
            into.setdefault(field, {}).update(res[field])
    return into
