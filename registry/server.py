"""The registry HTTP server (aiohttp).

Why aiohttp: it is already a kiln dependency (the client uses it too, so one HTTP stack
serves both sides), it is mature, streams request bodies (``request.content``) and
serves files with ``sendfile(2)`` and Range support (``FileResponse``), and runs in one
process per core without an ASGI layer in between (``workers.serve`` pre-forks
processes sharing one listening socket). ``make_app`` uses aiohttp's low-level
``web.Server``: one handler, no router, since ``layout.parse_key`` classifies every path.

Read API (see docs/registry.md): ``GET|HEAD /nix-cache-info`` (public even when private), ``GET|HEAD /<h>.narinfo`` (zstd
ones only: ``backends.DirSource.zstd_only``; ``foreigncache.unserved_note`` says at start-up how many are not),
``GET|HEAD /nar/<nix32>.nar.zst``, ``GET|HEAD /blobs/sha256:<hex>`` (Range, a multi-range
one ignored: ``httpbits.RangeFile``; ETag = digest and immutable caching only for a file
known to hash to its name: ``objtrust``), ``GET /index/...``, ``POST /narinfo-batch``, ``POST
/blob-batch`` (many small objects in one response), attestations
``GET /<h>.att/<kind>.dsse.json`` and their listing ``GET /<h>.att/`` (= ``index.json``),
``GET /narinfo-closure/<h>[,<h>...]`` (the narinfos of a closure in one answer: ``closurewalk``),
many at once with ``POST /attestation-batch`` (``attestapi``), and ``POST /verify`` (an AdmissionReview-shaped policy check of a path and its closure,
``admission``, by the policy file as it is at that review: ``policywatch``), and
``GET|HEAD /healthz`` (``health``: 200 or 503; a read like the others, so ``--private``
asks a read token for it). Misses are 404 with ``Cache-Control: max-age=<negative TTL>``.

Write API (handlers in ``writeapi``, index publishing in ``indexapi``; dir mode only,
bearer token with the ``write`` scope): ``PUT`` of a NAR or blob streams into a temp file while hashing the compressed
bytes and the NAR inside; the object appears (under both names) only if the digest equals its name. ``PUT`` of a
narinfo is admitted only if it parses for this store dir, its FileHash names a NAR the
registry has, the NAR digests recorded at upload match NarHash/NarSize, a trusted
key signed it and its unsigned ``CA:`` is true of the NAR (``admitca``); publication is create-if-absent, so a different narinfo for a published
path is a 409. ``PUT`` of an attestation is admitted by ``attest_transfer.admit``
(published narinfo, subject = that path and NarHash, signed by a trusted or attester
key, no signed time in the future; a provenance or SBOM without a trusted key's signature
has exactly one known signer, and replaces only one that key alone signed: ``attest_rules``);
``POST /attestation-upload-batch`` admits many by the same rules under one lock and one
barrier (``attestapi``, ``attest_batch``). A ``PUT`` of a file Nix writes that kiln does not store (an xz NAR: 415; a ``.ls``
listing: 400) says so (``layout.refused_upload``). Every failure is a 4xx with a one-line reason; no handler lets an
exception escape as a 500 for bad input.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

from kiln.store import narinfo as ni
from kiln.store.errors import KilnError
from kiln.store.signing import PublicKey, SecretKey

if TYPE_CHECKING:
    from kiln.store.policy import Policy

from . import closurewalk, fastpath, health, layout, mutablefile, servelog
from .attestapi import AttestAPI
from .auth import AuthError, TokenStore
from .backends import DirSource, Source
from .batchapi import BLOB_BATCH_TYPE, MAX_BATCH, MAX_BLOB_BATCH, BatchAPI
from .guard import Timeouts
from .httpbits import CHUNK, DigestFile, HTTPError, RangeFile, plain, shown_key
from .indexapi import IndexAPI
from .indexbuild import TIMESTAMP_HOURS
from .objtrust import ObjectTrust
from .policywatch import PolicyWatch
from .storage import FileStorage
from .storesource import StoreSource
from .writeapi import WriteAPI

__all__ = ["BLOB_BATCH_TYPE", "MAX_BATCH", "MAX_BLOB_BATCH", "Registry", "ServerConfig", "make_app"]

IMMUTABLE = "public, max-age=31536000, immutable"
#: ``GET narinfo-closure/...`` answers computed at once per worker (each reads up to
#: ``closurewalk.MAX_ENTRIES`` narinfos on a worker thread)
CLOSURES = 4
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
    #: largest narinfo accepted (kiln's one narinfo limit: ``narinfo.MAX_SIZE``)
    max_narinfo: int = ni.MAX_SIZE
    private: bool = False
    trusted: list[PublicKey] = field(default_factory=list)
    index_key: SecretKey | None = None
    #: extra keys whose DSSE signatures admit uploaded attestations (e.g. rebuilders)
    attesters: list[PublicKey] = field(default_factory=list)
    #: the policy ``POST /verify`` applies (None: it answers 409), or with ``policy_file``
    #: the file's start-up version: the file is re-read for every review (``policywatch``)
    policy: Policy | None = None
    policy_file: Path | None = None
    #: answer narinfo GETs in ``fastpath`` (False: every request goes through aiohttp)
    fast_path: bool = True
    #: with ``index_key``: re-sign the index timestamp this often, in seconds (0: only
    #: after pushes), so a registry without pushes does not look frozen (``refresh_index``)
    index_refresh: float = 6 * 3600
    #: with ``index_key``: every timestamp this server signs is valid this many hours
    #: (``kiln serve --timestamp-hours``; ``indexapi``)
    timestamp_hours: float = TIMESTAMP_HOURS
    #: how long a client may take over its part of a connection (``guard``)
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: ``POST /blob-batch`` answers in progress at once per worker (503 beyond)
    max_blob_batches: int = 64
    #: ``POST /narinfo-batch`` answers made or sent at once per worker, each on its own
    #: thread (503 beyond): each holds up to ~36 MiB of answer (64 MiB for a pre-``defer``
    #: client), about three times that while it is encoded (entries, JSON text, bytes)
    max_narinfo_batches: int = 8
    #: ``POST /verify`` reviews at once per worker, each on its own thread (503 beyond)
    max_reviews: int = 4
    #: ``--access-log``: a file to append one line per request to, ``-`` for stdout
    access_log: str | None = None


class Registry(IndexAPI, WriteAPI, BatchAPI, AttestAPI):
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
        self.policy: Policy | PolicyWatch | None = (
            PolicyWatch(config.policy_file, config.policy) if config.policy_file else config.policy
        )
        self.narinfo_cache_control = f"public, max-age={config.positive_ttl}"
        self._narinfo_headers = {
            "Content-Type": "text/x-nix-narinfo",
            "Cache-Control": self.narinfo_cache_control,
        }
        self._init_batch_api()
        self._closures = asyncio.Semaphore(CLOSURES)
        # which object files may be served as immutable (``objtrust``): a store's all
        self.objects = ObjectTrust(source.storage if isinstance(source, DirSource) else None)

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
            return plain(e.status, f"error: {e.msg}", **e.headers)
        except KilnError as e:
            return plain(400, f"error: {e}")
        except asyncio.CancelledError:
            raise
        except ConnectionError as e:
            # the client went away mid-request (a cancelled push, a dropped blob batch;
            # aiohttp raises a plain ConnectionError from a write): normal, one line, no
            # traceback; the answer is never seen (aiohttp drops it quietly)
            # (repr: a %0A in the path must not forge log lines)
            # (through the burst rule: a client can cut requests off as often as it likes)
            servelog.events.warning("%s %r: client went away (%s)", request.method, path[:200], e)
            return plain(400, "error: connection lost")
        except OSError as e:
            if e.errno in _FULL:  # the registry's disk, not the request: say so (507)
                servelog.events.warning("%s %r: %s", request.method, path[:200], e)
                return plain(507, f"error: the registry cannot store this: {e.strerror}")
            raise

    def _not_found(self, key: str) -> web.Response:
        """The 404 for ``key`` (shown escaped), cached for the negative TTL."""
        return plain(404, f"not found: /{shown_key(key)}", **self._miss_headers)

    def _auth(self, request: web.BaseRequest, scope: str) -> None:
        if self.tokens is None:
            raise HTTPError(405, "this server is read-only (serving a store)", Allow="GET, HEAD")
        self._check_token(request, scope)

    def _check_token(self, request: web.BaseRequest, scope: str) -> None:
        assert self.tokens is not None
        rec = self.tokens.check(request.headers.get(hdrs.AUTHORIZATION), scope)
        request[servelog.TOKEN_ID] = rec.token_id  # for the access log (never the token)

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        key = request.path.lstrip("/")
        method = request.method
        # nix-cache-info is public (clients read it before they send a token): HEAD as GET
        if self.config.private and not (method in ("GET", "HEAD") and key == layout.CACHE_INFO):
            if self.tokens is None:
                raise HTTPError(403, "private mode needs a directory registry (tokens live there)")
            self._check_token(request, "read")
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
            if key == "attestation-batch":
                return await self._att_batch(request)
            if key == "attestation-upload-batch":
                return await self._att_upload_batch(request)
            raise HTTPError(404, f"no such endpoint: POST /{shown_key(key)}")
        if method in ("GET", "HEAD") and key.startswith(layout.CLOSURE_PREFIX):
            return await self._closure(key)
        if key == health.PATH:
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"method {shown_key(method)} not allowed on /{key}", Allow="GET, HEAD")
            return await self._health()
        kind, arg = layout.parse_key(key)
        if not kind:
            refused = layout.refused_upload(key) if method == "PUT" else None
            if refused is not None:  # what ``nix copy --to http://`` sends by default: say why
                self._auth(request, "write")
                raise HTTPError(*refused)
            return self._not_found(key)
        if method in ("GET", "HEAD"):
            return await self._get(request, key, kind, arg)
        if method == "PUT":
            self._auth(request, "write")
            return await self._put(request, key, kind, arg)
        allow = "GET, HEAD, PUT" if self.tokens is not None else "GET, HEAD"
        raise HTTPError(405, f"method {shown_key(method)} not allowed on /{shown_key(key)}", Allow=allow)

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
            return await self._get_att(request, key, kind, arg)
        if kind in ("nar", "blob"):
            digest = layout.file_hash_of_key(kind, arg)
            path = self.source.object_file(digest)
            if path is None:
                return self._not_found(key)
            ctype = "application/zstd" if kind == "blob" else "application/x-nix-nar"
            good = await self.objects.judge(path, digest)
            if not good:  # not known to hash to its name: no promise a cache would keep (``objtrust``)
                cc = "no-store" if good is False else self.narinfo_cache_control
                return RangeFile(path, chunk_size=CHUNK, headers={"Cache-Control": cc, "Content-Type": ctype})
            etag = f"sha256:{digest.hex}"
            # the list of entity tags, or "*" (weak comparison, RFC 9110 13.1.2)
            inm = request.if_none_match
            if inm and any(t.value in (etag, "*") for t in inm):
                return web.Response(status=304, headers={"ETag": f'"{etag}"', "Cache-Control": IMMUTABLE})
            return DigestFile(path, etag, headers={"Cache-Control": IMMUTABLE, "Content-Type": ctype})
        path = self.source.file(key)
        if path is None:
            return self._not_found(key)
        headers = {"Content-Type": "application/json" if kind == "index" else "application/octet-stream"}
        if key in mutablefile.MUTABLE:  # revalidated, by a tag of the content only (``mutablefile``)
            return await self._mutable(key, path, request, {"Cache-Control": "no-cache", **headers})
        return RangeFile(path, headers={"Cache-Control": IMMUTABLE, **headers})

    async def _mutable(
        self, key: str, path: Path, request: web.BaseRequest, headers: dict[str, str]
    ) -> web.Response:
        """A file replaced under its name (``mutablefile``): no date validators."""
        body = await asyncio.get_running_loop().run_in_executor(None, mutablefile.read, path)
        if body is None:
            return self._not_found(key)
        return mutablefile.answer(request, body, headers)

    async def _health(self) -> web.Response:
        """``GET /healthz`` (``health``): 200 or 503, JSON, never cached."""
        status, doc = await asyncio.get_running_loop().run_in_executor(
            None, health.check, self.source, self.config.index_key is not None
        )
        return web.json_response(doc, status=status, headers={"Cache-Control": "no-store"})

    async def _closure(self, key: str) -> web.Response:
        """``GET narinfo-closure/<h>[,<h>...]`` (``closurewalk``): walked on a worker
        thread, at most ``CLOSURES`` at once per worker (503 beyond: the client waits
        and asks again, as for any busy answer)."""
        roots = layout.parse_closure_key(key)
        if roots is None:
            return self._not_found(key)
        if self._closures.locked():
            raise HTTPError(503, "busy: closure queries in progress", **{"Retry-After": "1"})
        async with self._closures:
            body = await asyncio.get_running_loop().run_in_executor(
                None, closurewalk.closure_answer, self.source.narinfo, roots
            )
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})

    async def _get_att(
        self, request: web.BaseRequest, key: str, kind: str, hash_part: str
    ) -> web.StreamResponse:
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
        return await self._mutable(
            key, path, request, {**headers, "Content-Type": "application/vnd.dsse.envelope.v1+json"}
        )


def make_app(source: Source, config: ServerConfig) -> web.Server:
    """The low-level aiohttp server: one handler, no router or middleware layers (every
    path is classified by ``layout.parse_key`` anyway), which is measurably faster for
    small narinfo responses, plus ``fastpath`` for narinfo GETs."""
    reg = Registry(source, config)
    # aiohttp's and asyncio's own log records: one line each, no request bytes
    servelog.quiet_library_logs()
    access = servelog.AccessLog(config.access_log) if config.access_log else None
    logging_kw: dict[str, Any] = (
        {"access_log": logging.getLogger("kiln.access"), "access_log_class": access.logger_class()}
        if access is not None
        else {"access_log": None}
    )
    # a public registry answers most narinfo GETs without aiohttp's per-request machinery
    # (``fastpath``: same bytes on the wire, ~2x the requests per second)
    app = fastpath.make_server(
        reg.handle,
        lookup=None if config.private or not config.fast_path else source.narinfo,
        cache_control=reg.narinfo_cache_control,
        timeouts=config.timeouts,
        log_fast=access.fast if access is not None else None,
        max_field_size=16384,
        **logging_kw,
    )
    # what one worker runs beside serving (``workers``)
    background = []
    if config.index_key is not None and config.index_refresh > 0 and isinstance(source, DirSource):
        background.append(reg.refresh_index)
    if isinstance(source, DirSource) and isinstance(source.storage, FileStorage):
        background.append(reg.sweep_temp)
    # (an attribute of kiln's own on aiohttp's server object, which ``workers`` reads)
    app.kiln_background = background  # type: ignore[attr-defined]
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
    assert directory is not None  # (exactly one of the two: checked above)
    src = DirSource(directory, store_dir=store_dir, durable=durable, zstd_only=True)
    if isinstance(src.storage, FileStorage):
        src.storage.sweep_temp()  # uploads a killed server or sync left behind
    return src
