"""The registry's attestation batch endpoints, mixed into ``server.Registry``:
``POST /attestation-batch`` (many attestation files in one answer; a read, public on a
public registry) and ``POST /attestation-upload-batch`` (many uploads in one request;
write token). Attestations otherwise travel one request per file (``GET``/``PUT
/<h>.att/<kind>.dsse.json``), which for thousands of paths costs far more than the
objects, which travel in batches.

Invariants:

- ``attestation-batch``: the request body is at most ``batchapi.MAX_QUERY_BODY`` (1 MiB)
  and names at most ``MAX_FETCH`` (hash part, kind) pairs, each checked (a valid hash
  part and kind, else 400 and nothing is sent); the answer is written in
  ``BLOB_PIECE`` pieces, each waiting for the client (``guard`` drops one that stops
  reading), and counts against the same ``--max-blob-batches`` as ``blob-batch``
  (503 with ``Retry-After`` beyond);
- ``attestation-upload-batch``: the token is checked before the body is read; the body
  is at most ``attest_batch.MAX_UPLOAD_BODY`` and ``MAX_UPLOAD_ENTRIES`` entries, read
  under the body pace; a framing error refuses the whole request (400) and writes
  nothing; every entry is then admitted exactly as a single ``PUT`` would be
  (``attest_batch.admit_many``), on an executor thread, each with its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, BinaryIO

from aiohttp import web

from kiln.store.attestations import check_kind
from kiln.store.errors import KilnError
from kiln.store.fileopen import open_regular

from . import layout
from .attest_batch import MAX_UPLOAD_BODY, MAX_UPLOAD_ENTRIES, Upload, admit_many
from .attest_transfer import MAX_ATTESTATION
from .backends import DirSource
from .batchapi import MAX_QUERY_BODY, stream_files
from .httpbits import CHUNK, HTTPError, body_pace, check_length, read_body
from .pace import LINE_TOO_LONG, Pace

if TYPE_CHECKING:
    from .backends import Source
    from .server import ServerConfig

#: at most this many (hash part, kind) pairs per ``POST /attestation-batch``
MAX_FETCH = 4096
ATT_BATCH_TYPE = "application/x-kiln-attestation-batch"


def parse_fetch(raw: bytes) -> list[tuple[str, str]]:
    """The pairs of an ``attestation-batch`` body ``{"attestations": [[h, kind], ...]}``;
    ``HTTPError`` 400 (malformed) or 413 (too many)."""
    try:
        pairs = json.loads(raw).get("attestations")
        if not isinstance(pairs, list):
            raise ValueError("'attestations' must be a list of [hash part, kind] pairs")
        if len(pairs) > MAX_FETCH:
            raise HTTPError(413, f"at most {MAX_FETCH} attestations per attestation batch")
        out = []
        for p in pairs:
            if not (isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)):
                raise ValueError("each entry must be a [hash part, kind] pair of strings")
            if not layout.is_hash_part(p[0]):
                raise ValueError(f"invalid hash part {p[0][:40]!r}")
            out.append((p[0], check_kind(p[1])))
    except (ValueError, AttributeError, RecursionError, KilnError) as e:
        raise HTTPError(400, f"malformed attestation batch request: {e}") from None
    return out


class AttestAPI:
    """The two handlers; the class mixing this in provides ``source``, ``config``,
    ``_auth`` and ``_blob_batches`` (``batchapi``)."""

    if TYPE_CHECKING:
        source: Source
        config: ServerConfig
        _blob_batches: asyncio.Semaphore

        def _auth(self, request: web.BaseRequest, scope: str) -> None: ...

    async def _att_batch(self, request: web.BaseRequest) -> web.StreamResponse:
        """``POST /attestation-batch``: body ``{"attestations": [["<hash part>", "<kind>"],
        ...]}``; the answer, in request order, is for each pair a line ``<hash part>
        <kind> <size>\\n`` and exactly ``size`` bytes (the file as stored, as ``GET
        /<h>.att/<kind>.dsse.json`` would send it), or ``<hash part> <kind> -\\n`` if
        there is none. The client checks each file against the listing's sha256."""
        pairs = parse_fetch(await read_body(request, MAX_QUERY_BODY, "attestation batch request"))
        return await stream_files(
            request,
            self._blob_batches,
            f"{self.config.max_blob_batches} batches",
            ATT_BATCH_TYPE,
            "attestation",
            (self._open_att(h, kind) for h, kind in pairs),
        )

    def _open_att(self, h: str, kind: str) -> tuple[str, BinaryIO | None]:
        path = self.source.att_file(h, kind)
        if path is not None:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                return f"{h} {kind}", open_regular(path)  # (a FIFO put there is no file: never waited on)
        return f"{h} {kind}", None

    async def _att_upload_batch(self, request: web.BaseRequest) -> web.Response:
        """``POST /attestation-upload-batch`` (write token): per attestation a line
        ``<size> <hash part> <kind>\\n`` and then exactly ``size`` bytes (the envelope).
        Each is admitted as ``PUT /<h>.att/<kind>.dsse.json`` would admit it; answer
        ``{"results": [{"hash", "kind", "status", "message"}]}`` in request order."""
        self._auth(request, "write")  # (405 on a store-backed server: read-only)
        src = self.source
        assert isinstance(src, DirSource)
        check_length(request, MAX_UPLOAD_BODY)
        pace = body_pace(request, "attestation upload batch")  # (no deadline of its own: see writeapi)
        entries: list[Upload] = []
        total = 0
        while True:
            try:
                line = await pace.read(request.content.readline(), 80)
            except LINE_TOO_LONG:
                raise HTTPError(400, "attestation batch header line too long") from None
            if not line:
                break
            parts = line.split()
            if len(parts) != 3 or not line.endswith(b"\n") or not parts[0].isdigit():
                raise HTTPError(400, f"malformed attestation batch header {line[:80]!r}")
            if len(entries) >= MAX_UPLOAD_ENTRIES:
                raise HTTPError(413, f"at most {MAX_UPLOAD_ENTRIES} attestations per upload batch")
            size = int(parts[0])
            total += size
            if total > MAX_UPLOAD_BODY:
                raise HTTPError(413, f"attestation upload batch over {MAX_UPLOAD_BODY} bytes")
            e = Upload(parts[1].decode(errors="replace"), parts[2].decode(errors="replace"))
            if size > MAX_ATTESTATION:  # this entry's 413 (as for a PUT); its bytes are skipped
                e.refused = (413, f"error: attestation over {MAX_ATTESTATION} bytes")
                await _skip(request, pace, size)
            else:
                try:
                    e.data = await pace.read(request.content.readexactly(size), size)
                except asyncio.IncompleteReadError:
                    raise HTTPError(400, "attestation upload batch truncated") from None
            entries.append(e)
        results = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: admit_many(
                src.storage,
                src.store_dir,
                entries,
                self.config.trusted,
                self.config.attesters,
                barrier=src.group_sync,
            ),
        )
        out = [
            {"hash": e.hash_part, "kind": e.kind, "status": st, "message": msg}
            for e, (st, msg) in zip(entries, results, strict=True)
        ]
        return web.json_response({"results": out})


async def _skip(request: web.BaseRequest, pace: Pace, size: int) -> None:
    left = size
    while left:
        chunk = await pace.read(request.content.read(min(CHUNK, left)), 1)
        if not chunk:
            raise HTTPError(400, "attestation upload batch truncated")
        left -= len(chunk)
