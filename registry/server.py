"""The registry HTTP server (aiohttp).

Why aiohttp: it is already a kiln dependency (the client uses it too, so one HTTP stack
serves both sides), it is mature, streams request bodies (``request.content``) and
serves files with ``sendfile(2)`` and Range support (``FileResponse``), and runs in one
process per core without an ASGI layer in between (``workers.serve`` pre-forks
processes sharing one listening socket). ``make_app`` uses aiohttp's low-level
``web.Server``: one handler, no router, since ``layout.parse_key`` classifies every path.

Read API (see docs/registry.md): ``GET|HEAD /nix-cache-info`` (public even when private), ``GET|HEAD /<h>.narinfo``,
``GET|HEAD /nar/<nix32>.nar.zst``, ``GET|HEAD /blobs/sha256:<hex>`` (ETag = digest,
Range, a multi-range one ignored: ``httpbits.RangeFile``; immutable caching), ``GET /index/...``, ``POST /narinfo-batch``, ``POST
/blob-batch`` (many small objects in one response), attestations
``GET /<h>.att/<kind>.dsse.json`` and their listing ``GET /<h>.att/`` (= ``index.json``),
and ``POST /verify`` (an AdmissionReview-shaped policy check of a path and its closure,
``admission``, by the policy file as it is at that review: ``policywatch``). Misses
are 404 with ``Cache-Control: max-age=<negative TTL>``.

Write API (handlers in ``writeapi``; dir mode only, bearer token with the ``write``
scope): ``PUT`` of a NAR or blob streams into a temp file while hashing the compressed
bytes and the NAR inside; the object appears (under both names) only if the digest equals its name. ``PUT`` of a
narinfo is admitted only if it parses for this store dir, its FileHash names a NAR the
registry has, the NAR digests recorded at upload match NarHash/NarSize, a trusted
key signed it and its unsigned ``CA:`` is true of the NAR (``admitca``); publication is create-if-absent, so a different narinfo for a published
path is a 409. ``PUT`` of an attestation is admitted by ``attest_transfer.admit``
(published narinfo, subject = that path and NarHash, signed by a trusted or attester
key, no signed time in the future; a provenance or SBOM without a trusted key's signature
has exactly one known signer, and replaces only one that key alone signed: ``attest_rules``). Every failure is a 4xx with a one-line reason; no handler lets an
exception escape as a 500 for bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web

from kiln.store.errors import KilnError
from kiln.store.hashes import Hash
from kiln.store.signing import PublicKey, SecretKey

from . import fastpath, layout
from .auth import AuthError, TokenStore
from .backends import DirSource, Source
from .httpbits import CHUNK, DigestFile, HTTPError, RangeFile, plain, read_body, shown_key
from .policywatch import PolicyWatch
from .storage import FileStorage
from .storesource import StoreSource
from .writeapi import WriteAPI

IMMUTABLE = "public, max-age=31536000, immutable"
MAX_BATCH = 10_000
#: at most this many objects per ``POST /blob-batch`` (clients send small objects only)
MAX_BLOB_BATCH = 4096
BLOB_BATCH_TYPE = "application/x-kiln-blob-batch"
#: write errors that mean the registry's storage is full (or the file too big for it)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Knobs of one server. ``trusted`` keys admit uploaded narinfos."""

    negative_ttl: int = 10
    positive_ttl: int = 3600
    max_body: int = 8 << 30
    #: largest NAR an uploaded object may decompress to (a zstd bomb stops here)
    max_nar: int = 64 << 30
    max_narinfo: int = 64 << 10
    private: bool = False
    trusted: list[PublicKey] = field(default_factory=list)
    index_key: SecretKey | None = None
    #: extra keys whose DSSE signatures admit uploaded attestations (e.g. rebuilders)
    attesters: list[PublicKey] = field(default_factory=list)
    #: the policy ``POST /verify`` applies (None: it answers 409), or with ``policy_file``
    #: the file's start-up version: the file is re-read for every review (``policywatch``)
    policy: Any = None
    policy_file: Path | None = None
    #: answer narinfo GETs in ``fastpath`` (False: every request goes through aiohttp)
    fast_path: bool = True
    #: with ``index_key``: re-sign the index timestamp this often, in seconds (0: only
    #: after pushes), so a registry without pushes does not look frozen (``refresh_index``)
    index_refresh: float = 6 * 3600


class Registry(WriteAPI):
    """Request handling for one source (dir or store)."""

    def __init__(self, source: Source, config: ServerConfig) -> None:
        self.source = source
        self.config = config
        self.tokens: TokenStore | None = TokenStore(source.storage) if isinstance(source, DirSource) else None
        self._miss_headers = {
            "Cache-Control": f"public, max-age={config.negative_ttl}",
            "X-Kiln-Negative-TTL": str(config.negative_ttl),
        }
        self._publish_lock = asyncio.Lock()
        # what POST /verify judges by: the file as it is at each review, when there is one
        self.policy: Any = (
            PolicyWatch(config.policy_file, config.policy) if config.policy_file else config.policy
        )
        self.narinfo_cache_control = f"public, max-age={config.positive_ttl}"
        self._narinfo_headers = {
            "Content-Type": "text/x-nix-narinfo",
            "Cache-Control": self.narinfo_cache_control,
        }

    # ------------------------------------------------------------ dispatch

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        # Hot path: a public GET of a narinfo that exists (what substituters do most).
        path = request.path
        if (
            len(path) == 41
            and request.method == "GET"
            and not self.config.private
            and path.endswith(".narinfo")
        ):
            body = self.source.narinfo(path[1:33]) if layout.is_hash_part(path[1:33]) else None
            if body is not None:
                return web.Response(body=body, headers=self._narinfo_headers)
        try:
            return await self._dispatch(request)
        except AuthError as e:
            status = 403 if "lacks" in str(e) else 401
            return plain(status, f"error: {e}", **({"WWW-Authenticate": "Bearer"} if status == 401 else {}))
        except HTTPError as e:
            return plain(e.status, f"error: {e.msg}")
        except KilnError as e:
            return plain(400, f"error: {e}")
        except asyncio.CancelledError:
            raise
        except ConnectionResetError as e:
            # the client went away mid-request (a cancelled push): normal, one line, no
            # traceback; the answer is never seen (aiohttp drops it quietly)
            # (repr: a %0A in the path must not forge log lines)
            print(
                f"kiln serve: {request.method} {path[:200]!r}: client went away ({e})",
                file=sys.stderr,
                flush=True,
            )
            return plain(400, "error: connection lost")
        except OSError as e:
            if e.errno in _FULL:  # the registry's disk, not the request: say so (507)
                print(f"kiln serve: {request.method} {path}: {e}", file=sys.stderr, flush=True)
                return plain(507, f"error: the registry cannot store this: {e.strerror}")
            raise

    def _not_found(self, key: str) -> web.Response:
        """The 404 for ``key`` (shown escaped), cached for the negative TTL."""
        return plain(404, f"not found: /{shown_key(key)}", **self._miss_headers)

    def _auth(self, request: web.BaseRequest, scope: str) -> None:
        if self.tokens is None:
            raise HTTPError(405, "this server is read-only (serving a store)")
        self.tokens.check(request.headers.get(hdrs.AUTHORIZATION), scope)

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        key = request.path.lstrip("/")
        method = request.method
        # nix-cache-info is public (clients read it before they send a token): HEAD as GET
        if self.config.private and not (method in ("GET", "HEAD") and key == layout.CACHE_INFO):
            if self.tokens is None:
                raise HTTPError(403, "private mode needs a directory registry (tokens live there)")
            self.tokens.check(request.headers.get(hdrs.AUTHORIZATION), "read")
        if method == "POST":
            if key == "narinfo-batch":
                return await self._batch(request)
            if key == "publish-index":
                return await self._publish_index(request)
            if key == "upload-batch":
                return await self._upload_batch(request)
            if key == "verify":
                return await self._verify(request)
            if key == "blob-batch":
                return await self._blob_batch(request)
            raise HTTPError(404, f"no such endpoint: POST /{shown_key(key)}")
        kind, arg = layout.parse_key(key)
        if not kind:
            return self._not_found(key)
        if method in ("GET", "HEAD"):
            return await self._get(request, key, kind, arg)
        if method == "PUT":
            self._auth(request, "write")
            return await self._put(request, key, kind, arg)
        raise HTTPError(405, f"method {method} not allowed on /{shown_key(key)}")

    # ------------------------------------------------------------ reads

    async def _get(self, request: web.BaseRequest, key: str, kind: str, arg: str) -> web.StreamResponse:
        if kind == "cache-info":
            return web.Response(body=self.source.cache_info(), content_type="text/x-nix-cache-info")
        if kind == "narinfo":
            body = self.source.narinfo(arg)
            if body is None:
                return plain(404, f"no narinfo for {arg}", **self._miss_headers)
            return web.Response(body=body, headers=self._narinfo_headers)
        if kind in ("att", "att-dir"):
            return self._get_att(key, kind, arg)
        if kind in ("nar", "blob"):
            digest = layout.file_hash_of_key(kind, arg)
            path = self.source.object_file(digest)
            if path is None:
                return self._not_found(key)
            etag = f"sha256:{digest.hex}"
            inm = request.headers.get(hdrs.IF_NONE_MATCH)
            if inm and etag in inm:
                return web.Response(status=304, headers={"ETag": f'"{etag}"', "Cache-Control": IMMUTABLE})
            ctype = "application/zstd" if kind == "blob" else "application/x-nix-nar"
            return DigestFile(path, etag, headers={"Cache-Control": IMMUTABLE, "Content-Type": ctype})
        path = self.source.file(key)
        if path is None:
            return self._not_found(key)
        mutable = key in ("index/timestamp.json", "index/snapshot.json", "index/root.json")
        cc = "no-cache" if mutable else IMMUTABLE
        return RangeFile(
            path,
            headers={
                "Cache-Control": cc,
                "Content-Type": "application/json" if kind == "index" else "application/octet-stream",
            },
        )

    def _get_att(self, key: str, kind: str, hash_part: str) -> web.StreamResponse:
        # Attestations can be replaced (a newer provenance) and listings grow: revalidate.
        headers = {"Cache-Control": "no-cache"}
        att_kind = layout.att_kind_of_key(key) if kind == "att" else None
        if att_kind is None:
            kinds = self.source.att_listing(hash_part)
            if not kinds:
                return plain(404, f"no attestations for {hash_part}", **self._miss_headers)
            body = json.dumps({"kinds": kinds}, sort_keys=True, separators=(",", ":")) + "\n"
            return web.Response(text=body, content_type="application/json", headers=headers)
        path = self.source.att_file(hash_part, att_kind)
        if path is None:
            return self._not_found(key)
        return RangeFile(path, headers={**headers, "Content-Type": "application/vnd.dsse.envelope.v1+json"})

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
        answer = await asyncio.get_running_loop().run_in_executor(
            None, admission.answer, self.source, review, self.policy
        )
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    async def _batch(self, request: web.BaseRequest) -> web.Response:
        raw = await read_body(request, 4 << 20, "batch request")
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
        answer, in request order, is for each object a line ``<hex> <size>\n``
        followed by exactly ``size`` bytes, or ``<hex> -\n`` if this registry lacks it.
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
        resp = web.StreamResponse(headers={"Content-Type": BLOB_BATCH_TYPE, "Cache-Control": "no-store"})
        await resp.prepare(request)
        for d in digests:
            path = self.source.object_file(d)
            f = None
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    f = open(path, "rb")  # noqa: SIM115 - closed below
            if f is None:
                await resp.write(f"{d.hex} -\n".encode())
                continue
            with f:
                size = os.fstat(f.fileno()).st_size
                # header and (small) body in one write; big ones in chunks
                chunk = f.read(CHUNK)
                await resp.write(f"{d.hex} {size}\n".encode() + chunk)
                sent = len(chunk)
                while sent < size and (chunk := f.read(min(CHUNK, size - sent))):
                    await resp.write(chunk)
                    sent += len(chunk)
                if sent != size:  # the file changed under us: the framing is broken, stop
                    raise ConnectionResetError(f"object {d.hex} shrank while being sent")
        await resp.write_eof()
        return resp


def make_app(source: Source, config: ServerConfig) -> web.Server:
    """The low-level aiohttp server: one handler, no router or middleware layers (every
    path is classified by ``layout.parse_key`` anyway), which is measurably faster for
    small narinfo responses, plus ``fastpath`` for narinfo GETs."""
    reg = Registry(source, config)
    # a public registry answers most narinfo GETs without aiohttp's per-request machinery
    # (``fastpath``: same bytes on the wire, ~2x the requests per second)
    app = fastpath.make_server(
        reg.handle,
        lookup=None if config.private or not config.fast_path else source.narinfo,
        cache_control=reg.narinfo_cache_control,
        access_log=None,
        max_field_size=16384,
    )
    # what one worker runs beside serving (``workers``)
    app.kiln_background = (  # type: ignore[attr-defined]
        [reg.refresh_index]
        if config.index_key is not None and config.index_refresh > 0 and isinstance(source, DirSource)
        else []
    )
    return app


def open_source(
    *,
    store: Path | None,
    directory: Path | None,
    sign_key: SecretKey | None,
    store_dir: str | None,
    durable: bool = True,
) -> Source:
    if (store is None) == (directory is None):
        raise KilnError("give exactly one of --store DIR or --dir DIR")
    if store is not None:
        return StoreSource(store, sign_key, store_dir)
    src = DirSource(directory, store_dir=store_dir, durable=durable)
    if isinstance(src.storage, FileStorage):
        src.storage.sweep_temp()  # uploads a killed server or sync left behind
    return src
