"""The registry's unauthenticated POST endpoints (on a public registry anyone may call
them): ``POST /narinfo-batch``, ``POST /blob-batch`` and ``POST /verify``. Mixed into
``server.Registry`` (see the module docstring of ``server`` for the API).

Invariants (what one anonymous client can make a worker hold):

- a batch query body is at most ``MAX_QUERY_BODY`` bytes (``kiln``'s own client sends at
  most 2,000 entries per batch, under 160 KB), read under the body pace and timeouts
  (``httpbits.body_pace``);
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
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from aiohttp import web

from kiln.store.errors import KilnError
from kiln.store.hashes import Hash

from . import layout
from .httpbits import HTTPError, read_body

MAX_BATCH = 10_000
#: largest ``POST /narinfo-batch`` body (the client's 2,000-entry batches are < 160 KB)
MAX_QUERY_BODY = 1 << 20
#: at most this many objects per ``POST /blob-batch`` (clients send small objects only)
MAX_BLOB_BATCH = 4096
BLOB_BATCH_TYPE = "application/x-kiln-blob-batch"
#: bytes of an object read and written at a time by ``blob-batch``
BLOB_PIECE = 64 << 10
#: what a 503 of a full endpoint tells the client to wait, in seconds
RETRY_AFTER = "1"


class BatchAPI:
    """POST handlers; the class mixing this in provides ``source``, ``config`` and
    ``policy``, and calls ``_init_batch_api`` from its ``__init__``."""

    source: Any
    config: Any
    policy: Any

    def _init_batch_api(self) -> None:
        self._blob_batches = asyncio.Semaphore(self.config.max_blob_batches)
        self._reviews = asyncio.Semaphore(self.config.max_reviews)
        self._review_pool: ThreadPoolExecutor | None = None  # made at the first review

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

    async def _batch(self, request: web.BaseRequest) -> web.Response:
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
        found: dict[str, str] = {}
        for h in hashes:
            if isinstance(h, str) and layout.is_hash_part(h):
                body = self.source.narinfo(h)
                if body is not None:
                    found[h] = body.decode(errors="replace")  # junk on disk: the client rejects it
        have = []
        for b in blobs:
            try:
                digest = Hash.parse(b, "sha256")
            except (KilnError, TypeError, AttributeError):
                continue
            if self.source.object_file(digest) is not None:
                have.append(b)
        answer: dict[str, Any] = {"narinfos": found, "blobs": have}
        if atts:
            listings = {}
            for h in atts:
                if isinstance(h, str) and layout.is_hash_part(h):
                    kinds = self.source.att_listing(h)
                    if kinds:
                        listings[h] = kinds
            answer["attestations"] = listings
        if nar_hashes:
            # off the event loop: a lookup may wait for a scan of every narinfo
            wanted = [nh for nh in nar_hashes if isinstance(nh, str) and len(nh) == 64]
            answer["by_nar_hash"] = await asyncio.get_running_loop().run_in_executor(
                None, self._by_nar_hash, wanted
            )
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    def _by_nar_hash(self, wanted: list[str]) -> dict[str, str]:
        out = {}
        for nh in wanted:
            body = self.source.narinfo_by_nar_hash(nh.lower())
            if body is not None:
                out[nh] = body.decode(errors="replace")
        return out

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
