"""The registry's unauthenticated POST endpoints (on a public registry anyone may call
them): ``POST /narinfo-batch``, ``POST /blob-batch`` and ``POST /verify``. Mixed into
``server.Registry`` (see the module docstring of ``server`` for the API).

Invariants (what one anonymous client can make a worker hold):

- a batch query body is at most ``MAX_QUERY_BODY`` bytes (``kiln``'s own client sends at
  most 2,000 entries per batch, under 160 KB), read under the body pace and timeouts
  (``httpbits.body_pace``);
- a ``narinfo-batch`` answer is bounded although a narinfo may be 4 MiB
  (``narinfo.MAX_SIZE``): its entries (narinfos, attestation listings, lookups by NAR
  hash, in that order) are measured as they are added, as JSON (``_Budget``). A request
  that says ``"defer": true`` (kiln's client since narinfos grew past 64 KiB) gets
  entries up to ``DEFER_AT`` bytes and the rest listed, unread, under ``"deferred":
  {field: [...]}`` (its request fields: the client sends that object back, with
  ``defer``, for the next answer); the first entry found always goes in, so every answer
  resolves at least one asked entry. A request without it (an older client, which treats
  a missing entry as absent and reads at most 64 MiB) gets the whole answer as before,
  or 413 once it would exceed ``MAX_ANSWER``: the server stops reading there. At most
  ``ServerConfig.max_narinfo_batches`` answers are made or sent at once per worker, each
  on a thread of their own (the reads, and the JSON, stay off the event loop; a slot is
  held until the answer is out, so a client that does not read pins one answer, until
  ``guard`` drops it); more get 503 with ``Retry-After``, which kiln's client honours;
- a ``blob-batch`` answer holds at most one ``BLOB_PIECE`` read of a file plus what
  the transport buffers before flow control pauses it (``guard``: a client that stops
  reading is dropped after the write timeout); at most ``ServerConfig.max_blob_batches``
  are answered at once per worker, more get 503 with ``Retry-After``;
- reviews (``POST /verify``) run on their own ``max_reviews`` threads, at most that
  many at once (503 with ``Retry-After`` beyond), never in the default executor that
  uploads and file answers use: a burst of reviews cannot stall a push.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO

from aiohttp import web

from kiln.store.errors import KilnError
from kiln.store.hashes import Hash

from . import layout
from .httpbits import HTTPError, read_body

if TYPE_CHECKING:
    from kiln.store.policy import Policy

    from .backends import Source
    from .policywatch import PolicyWatch
    from .server import ServerConfig

MAX_BATCH = 10_000
#: a ``narinfo-batch`` answer to a ``"defer": true`` request stops taking entries at about
#: this many bytes (one entry goes in whatever its size: at most ~4 MiB more)
DEFER_AT = 32 << 20
#: a ``narinfo-batch`` answer to a request without ``defer`` is at most this many bytes
#: (the 64 MiB older kiln clients read, less room for the object around the entries);
#: a bigger one is 413
MAX_ANSWER = (64 << 20) - 4096
#: largest ``POST /narinfo-batch`` body (the client's 2,000-entry batches are < 160 KB)
MAX_QUERY_BODY = 1 << 20
#: at most this many objects per ``POST /blob-batch`` (clients send small objects only)
MAX_BLOB_BATCH = 4096
BLOB_BATCH_TYPE = "application/x-kiln-blob-batch"
#: bytes of an object read and written at a time by ``blob-batch``
BLOB_PIECE = 64 << 10
#: bytes of a ``narinfo-batch`` answer written at a time
ANSWER_PIECE = 1 << 20
#: what a 503 of a full endpoint tells the client to wait, in seconds
RETRY_AFTER = "1"


class BatchAPI:
    """POST handlers; the class mixing this in provides ``source``, ``config`` and
    ``policy``, and calls ``_init_batch_api`` from its ``__init__``."""

    if TYPE_CHECKING:
        source: Source
        config: ServerConfig
        policy: Policy | PolicyWatch | None

    def _init_batch_api(self) -> None:
        self._blob_batches = asyncio.Semaphore(self.config.max_blob_batches)
        self._reviews = asyncio.Semaphore(self.config.max_reviews)
        self._review_pool: ThreadPoolExecutor | None = None  # made at the first review
        self._narinfo_batches = asyncio.Semaphore(self.config.max_narinfo_batches)
        self._batch_pool: ThreadPoolExecutor | None = None  # made at the first batch

    async def _verify(self, request: web.BaseRequest) -> web.Response:
        """``POST /verify``: see ``admission``."""
        from . import admission

        if self.policy is None:
            raise HTTPError(409, "this server has no verification policy (start it with --policy FILE)")
        raw = await read_body(request, admission.MAX_REVIEW, "review")
        try:
            review = admission.parse_review(raw)
        except KilnError as e:
            raise HTTPError(400, str(e)) from None
        if self._reviews.locked():
            raise HTTPError(
                503, f"busy: {self.config.max_reviews} reviews in progress", **{"Retry-After": RETRY_AFTER}
            )
        async with self._reviews:
            if self._review_pool is None:
                self._review_pool = ThreadPoolExecutor(self.config.max_reviews, thread_name_prefix="review")
            answer = await asyncio.get_running_loop().run_in_executor(
                self._review_pool, admission.answer, self.source, review, self.policy
            )
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    async def _batch(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = await read_body(request, MAX_QUERY_BODY, "batch request")
        try:
            data = (
                json.loads(raw) if raw.strip().startswith((b"{", b"[")) else {"hashes": raw.decode().split()}
            )
            if isinstance(data, list):
                data = {"hashes": data}
            hashes, blobs = data.get("hashes", []), data.get("blobs", [])
            atts, nar_hashes = data.get("attestations", []), data.get("nar_hashes", [])
            if not all(isinstance(x, list) for x in (hashes, blobs, atts, nar_hashes)):
                raise ValueError("hashes, blobs, attestations and nar_hashes must be lists")
        except (ValueError, AttributeError, RecursionError) as e:  # (nesting too deep to parse)
            raise HTTPError(400, f"malformed batch request: {e}") from None
        if len(hashes) + len(blobs) + len(atts) + 100 * len(nar_hashes) > MAX_BATCH:
            raise HTTPError(413, f"at most {MAX_BATCH} entries per batch")
        defer = data.get("defer") is True
        if self._narinfo_batches.locked():
            raise HTTPError(
                503,
                f"busy: {self.config.max_narinfo_batches} narinfo batches in progress",
                **{"Retry-After": RETRY_AFTER},
            )
        async with self._narinfo_batches:
            if self._batch_pool is None:
                self._batch_pool = ThreadPoolExecutor(
                    self.config.max_narinfo_batches, thread_name_prefix="narinfo-batch"
                )
            # off the event loop: thousands of narinfo reads, a lookup by NAR hash that may
            # wait for a scan of every narinfo, and the encoding of up to 64 MiB of JSON
            body = await asyncio.get_running_loop().run_in_executor(
                self._batch_pool, self._batch_answer, hashes, blobs, atts, nar_hashes, defer
            )
            # sent while the slot is held: an answer's memory is bounded until it is out
            resp = web.StreamResponse(
                headers={"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}
            )
            resp.content_length = len(body)
            await resp.prepare(request)
            view = memoryview(body)
            for at in range(0, len(body), ANSWER_PIECE):
                await resp.write(view[at : at + ANSWER_PIECE])
            await resp.write_eof()
            return resp

    def _batch_answer(
        self, hashes: list[Any], blobs: list[Any], atts: list[Any], nar_hashes: list[Any], defer: bool
    ) -> bytes:
        """The ``narinfo-batch`` answer to a parsed request, as compact JSON (as the budget
        measured it). Runs on a batch thread; raises ``HTTPError`` 413 when an answer
        without ``defer`` would be over ``MAX_ANSWER``."""
        budget = _Budget(DEFER_AT if defer else MAX_ANSWER, defer)
        have = []
        for b in blobs:
            try:
                digest = Hash.parse(b, "sha256")
            except (KilnError, TypeError, AttributeError):
                continue
            if self.source.object_file(digest) is not None:
                have.append(b)
        budget.charge(have)  # (never deferred: at most the 1 MiB request's worth)
        answer: dict[str, Any] = {"blobs": have}
        answer["narinfos"] = budget.fill("hashes", _hash_parts(hashes), self._narinfo_text)
        if atts:
            answer["attestations"] = budget.fill("attestations", _hash_parts(atts), self._listing)
        if nar_hashes:
            wanted = list(dict.fromkeys(nh for nh in nar_hashes if isinstance(nh, str) and len(nh) == 64))
            answer["by_nar_hash"] = budget.fill("nar_hashes", wanted, self._by_nar_hash)
        if budget.deferred:
            answer["deferred"] = budget.deferred
        return _compact(answer).encode()

    def _narinfo_text(self, h: str) -> str | None:
        body = self.source.narinfo(h)
        return body.decode(errors="replace") if body is not None else None  # junk: the client rejects it

    def _listing(self, h: str) -> dict[str, str] | None:
        return self.source.att_listing(h) or None

    def _by_nar_hash(self, nh: str) -> str | None:
        body = self.source.narinfo_by_nar_hash(nh.lower())
        return body.decode(errors="replace") if body is not None else None

    async def _blob_batch(self, request: web.BaseRequest) -> web.StreamResponse:
        """``POST /blob-batch``: many compressed objects in one response, so a client
        copying thousands of small paths pays one round trip per batch instead of one
        per path. Body ``{"blobs": ["<sha256 hex>" | "sha256:<hex>", ...]}``; the
        answer, in request order, is for each object a line ``<hex> <size>\\n``
        followed by exactly ``size`` bytes, or ``<hex> -\\n`` if this registry lacks it.
        The client verifies every object's digest as for a single download."""
        raw = await read_body(request, 1 << 20, "blob batch request")
        try:
            blobs = json.loads(raw).get("blobs")
            if not isinstance(blobs, list) or not all(isinstance(b, str) for b in blobs):
                raise ValueError("'blobs' must be a list of sha256 digests")
            digests = [Hash.parse(b, "sha256") for b in blobs]
        except (ValueError, AttributeError, RecursionError, KilnError) as e:
            raise HTTPError(400, f"malformed blob batch request: {e}") from None
        if len(digests) > MAX_BLOB_BATCH:
            raise HTTPError(413, f"at most {MAX_BLOB_BATCH} objects per blob batch")
        return await stream_files(
            request,
            self._blob_batches,
            f"{self.config.max_blob_batches} blob batches",
            BLOB_BATCH_TYPE,
            "object",
            ((d.hex, self._open_blob(d)) for d in digests),
        )

    def _open_blob(self, d: Hash) -> BinaryIO | None:
        path = self.source.object_file(d)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                return open(path, "rb")  # noqa: SIM115 - closed by ``send_file``
        return None


async def stream_files(
    request: web.BaseRequest,
    slots: asyncio.Semaphore,
    busy: str,
    content_type: str,
    what: str,
    files: Iterable[tuple[str, BinaryIO | None]],
) -> web.StreamResponse:
    """A streamed batch answer (``blob-batch``, ``attestation-batch``): 503 with
    ``Retry-After`` (``busy: <busy> in progress``) while every one of ``slots`` is taken;
    else, holding one, ``send_file`` for each ``(name, open file or None)`` of ``files``
    in order. ``files`` should open each file only when it is reached (a generator), so
    an answer holds one descriptor at a time."""
    if slots.locked():
        raise HTTPError(503, f"busy: {busy} in progress", **{"Retry-After": RETRY_AFTER})
    async with slots:
        resp = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-store"})
        await resp.prepare(request)
        for name, f in files:
            await send_file(resp, name, f, what)
        await resp.write_eof()
        return resp


async def send_file(resp: web.StreamResponse, name: str, f: BinaryIO | None, what: str) -> None:
    """One entry of a streamed batch answer: ``<name> -\\n`` for no file, else ``<name>
    <size>\\n`` and exactly ``size`` bytes of ``f`` (closed here), written in
    ``BLOB_PIECE`` pieces: each write waits (``drain``) while the client is behind, and
    ``guard`` drops a client that stops reading, so a connection holds a bounded amount
    of memory. A file that shrinks while it is sent breaks the framing: the connection
    is cut (``ConnectionResetError``, naming ``what``)."""
    if f is None:
        await resp.write(f"{name} -\n".encode())
        return
    with f:
        size = os.fstat(f.fileno()).st_size
        await resp.write(f"{name} {size}\n".encode())
        sent = 0
        while sent < size and (chunk := f.read(min(BLOB_PIECE, size - sent))):
            await resp.write(chunk)
            sent += len(chunk)
        if sent != size:  # the file changed under us: the framing is broken, stop
            raise ConnectionResetError(f"{what} {name} shrank while being sent")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _hash_parts(asked: list[Any]) -> list[str]:
    """The well-formed hash parts of ``asked``, each once, in order (others are ignored)."""
    return list(dict.fromkeys(h for h in asked if isinstance(h, str) and layout.is_hash_part(h)))


class _Budget:
    """What one ``narinfo-batch`` answer may still hold (see the module docstring): each
    entry is charged its size as JSON. Once full, a deferring answer lists every entry
    not yet looked up under ``deferred`` (none is read any more); any other is a 413."""

    def __init__(self, limit: int, defer: bool) -> None:
        self.limit = limit
        self.defer = defer
        self.used = 0
        self.entries = 0
        self.deferred: dict[str, list[str]] = {}

    def charge(self, value: Any) -> None:
        self.used += len(json.dumps(value))

    def fill(self, field: str, asked: list[str], lookup: Callable[[str], Any | None]) -> dict[str, Any]:
        """``{entry: lookup(entry)}`` for those of ``asked`` (distinct) found, as far as
        the budget goes; the rest go to ``deferred[field]``."""
        found: dict[str, Any] = {}
        for i, key in enumerate(asked):
            if self.deferred:  # full: an earlier field was cut
                self.deferred[field] = asked[i:]
                break
            value = lookup(key)
            if value is None:
                continue
            size = len(json.dumps(key)) + len(json.dumps(value)) + 2  # ("key":value,)
            if self.entries and self.used + size > self.limit:
                if not self.defer:
                    raise HTTPError(
                        413,
                        f"this answer would be over {self.limit} bytes: ask for fewer entries at once "
                        '(or send "defer": true and ask again for the deferred ones)',
                    )
                self.deferred[field] = asked[i:]
                break
            found[key] = value
            self.used += size
            self.entries += 1
        return found
