"""Talking to a registry by URL: ``http(s)://host[:port][/prefix]`` or ``file:///dir``.

Both clients (``httpclient.HttpClient``, ``dirclient.DirClient``; ``open_client`` picks
one by URL) expose the same async API so push, copy, substitution and mirror sync do
not care where a registry lives:

- ``cache_info()``; ``get(key)`` for small objects (None on 404);
- ``narinfos(hash_parts)`` — batched: one ``POST /narinfo-batch`` per 2,000 hashes (more
  where wide narinfos make a kiln server defer part of an answer: about 32 MiB each,
  ``httpbatch``); a server without that endpoint (nginx, a plain file server: 404/405)
  falls back to parallel ``GET``s;
- ``have_blobs(hashes)`` — which compressed NARs the registry already holds (batched);
- ``attestation_listings(hash_parts)`` — ``{hash part: {kind: sha256}}`` of attestations
  (batched through ``narinfo-batch``; else one ``<h>.att/index.json`` GET per path);
- ``narinfo_closure(hash_parts)`` — the narinfos of a whole closure in one answer
  (kiln servers; a hint, {} elsewhere: ``closurewalk``);
- ``narinfo_by_nar_hash(hex)`` — the narinfo whose NarHash is that sha256 (kiln servers
  and directories only);
- ``blob_batch(hashes, got)`` — many small compressed objects in one ``POST
  /blob-batch`` (kiln servers); False where unsupported;
- ``download(key, write)`` streams a body to ``write(chunk)``; ``put_file`` /
  ``put_bytes`` upload with the bearer token.

Failures: a connection that cannot be made within ``CONNECT_TIMEOUT`` raises
``Unreachable`` (substitution treats that as a miss for the run); an HTTP error answer
raises ``RegistryError`` with the server's one-line reason.
"""

from __future__ import annotations

import abc
import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, urlparse

from kiln.store.errors import KilnError, redact_urls
from kiln.store.hashes import Hash
from kiln.store.signing import PublicKey

from . import layout

CONNECT_TIMEOUT = 3.0
BATCH = 2000
CHUNK = 1 << 20


class RegistryError(KilnError):
    """A registry answered with an error."""

    def __init__(self, msg: str, status: int = 0) -> None:
        super().__init__(msg)
        self.status = status


class Unreachable(RegistryError):
    """No connection could be made (refused, timed out, DNS)."""


def utf8(body: bytes, what: str) -> str:
    """``body`` as text, or ``RegistryError`` naming ``what``: a registry's answer that
    is not UTF-8 is malformed, not a crash."""
    try:
        return body.decode()
    except UnicodeDecodeError as e:
        raise RegistryError(
            f"{what} is not UTF-8 (byte {e.start}: {body[e.start : e.start + 1]!r})"
        ) from None


class Client(abc.ABC):
    url: str
    store_dir: str = ""
    #: the keys the caller trusts for what this registry serves (``Substituter`` sets its
    #: own): ``attest_transfer.fetch_attestations`` stores only attestations they signed
    trusted: list[PublicKey] | None = None
    #: False once the registry showed it has no ``narinfo_closure`` endpoint
    _closure_ok = True

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:  # noqa: B027 - optional hook: the default holds nothing to release
        """Release connections; clients without any keep this default."""

    async def cache_info(self) -> dict[str, str]:
        body = await self.get(layout.CACHE_INFO)
        if body is None:
            raise RegistryError(f"{self.url} is not a binary cache (no nix-cache-info)")
        info = layout.parse_cache_info(utf8(body, f"{self.url}/{layout.CACHE_INFO}"))
        if not info.get("StoreDir"):  # (a web page answering every URL, say)
            raise RegistryError(f"{self.url} is not a binary cache (its nix-cache-info names no StoreDir)")
        self.store_dir = info["StoreDir"]
        return info

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def narinfos(self, hash_parts: list[str]) -> dict[str, str]: ...

    @abc.abstractmethod
    async def have_blobs(self, hashes: list[Hash]) -> set[str]: ...

    @abc.abstractmethod
    async def download(self, key: str, write: Callable[[bytes], Any]) -> bool: ...

    async def blob_batch(
        self,
        hashes: list[Hash],
        got: Callable[[Hash, bytes | None], Any],
        sizes: dict[str, int] | None = None,
    ) -> bool:
        """Many small compressed objects at once (see ``HttpClient.blob_batch``); False
        when this kind of registry has no batch transfer (download them one by one)."""
        return False

    async def attestation_listings(self, hash_parts: list[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        sem = asyncio.Semaphore(16)

        async def one(h: str) -> None:
            async with sem:
                body = await self.get(layout.att_listing_key(h))
            kinds = layout.parse_att_listing(body)
            if kinds:
                out[h] = kinds

        await asyncio.gather(*(one(h) for h in hash_parts))
        return out

    async def narinfo_closure(self, hash_parts: list[str]) -> dict[str, str]:
        """``{hash part: narinfo text}`` for the closure of ``hash_parts`` as far as the
        registry sends it in one answer per ``layout.CLOSURE_ROOTS`` of them (``GET
        narinfo-closure/...``, kiln servers: ``closurewalk``). A hint only: maybe partial,
        ``{}`` from a registry without the endpoint (asked once); callers check every
        narinfo they use as any other."""
        if not self._closure_ok or not hash_parts:
            return {}
        out: dict[str, str] = {}
        roots = list(dict.fromkeys(hash_parts))
        parts = [roots[i : i + layout.CLOSURE_ROOTS] for i in range(0, len(roots), layout.CLOSURE_ROOTS)]

        async def one(part: list[str]) -> None:
            key = layout.closure_key(part)
            try:
                body = await self.get(key)
            except Unreachable:
                raise
            except RegistryError:  # (another kind of server answering 400, 405, ...)
                body = None
            if body is None:
                self._closure_ok = False
                return
            out.update(_closure_texts(body, f"{self.url}/{key}"))

        await asyncio.gather(*(one(part) for part in parts))
        return out

    async def narinfo_by_nar_hash(self, nar_sha256_hex: str) -> str | None:
        raise RegistryError(f"{self.url} cannot look paths up by NAR hash; name the store path")

    @abc.abstractmethod
    async def put_file(self, key: str, path: Path) -> None: ...

    @abc.abstractmethod
    async def put_bytes(self, key: str, data: bytes) -> int: ...

    async def publish_index(self) -> str | None:
        return None

    async def upload_batch(self, frames: list[tuple[str, bytes, Path | None]]) -> list[dict[str, Any]] | None:
        return None  # not supported: callers fall back to one PUT per object


def _closure_texts(body: bytes, what: str) -> dict[str, str]:
    """The ``narinfos`` of a ``narinfo-closure`` answer; ``RegistryError`` for one
    that is not the JSON object it must be."""
    import json

    try:
        texts = json.loads(body).get("narinfos")
    except (ValueError, AttributeError, RecursionError):
        texts = None
    if not isinstance(texts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in texts.items()
    ):
        raise RegistryError(f"{what}: malformed answer")
    return texts


def open_client(
    url: str, token: str | None = None, jobs: int = 16, store_dir: str | None = None, *, create: bool = True
) -> Client:
    """A client for the registry at ``url``. A directory (``file://`` or a plain path) that
    holds no registry is made one if ``create`` (a push to a new directory), else it is
    an error: readers pass ``create=False``, so a mistyped path never becomes an empty
    registry that then "lacks" everything."""
    p = parse_registry_url(url)
    if p.scheme in ("http", "https"):
        from .httpclient import HttpClient

        if token is not None and any(ord(c) < 32 or ord(c) == 127 for c in token):
            raise KilnError(f"the token for {redact_urls(url)} contains a control character (a newline?)")
        if token is not None and (p.username or p.password):
            raise KilnError(f"{redact_urls(url)}: give a token or credentials in the URL, not both")
        return HttpClient(url, token, jobs)
    if p.scheme in ("file", ""):
        from .dirclient import DirClient

        return DirClient(url, store_dir, create=create)
    raise KilnError(f"unsupported registry URL {url!r} (expected http://, https:// or file:///dir)")


def parse_registry_url(url: str) -> ParseResult:
    """``urlparse(url)``, with the mistakes it lets through as ``KilnError``: a URL it
    cannot parse (``http://[::1``), and ``HOST:PORT`` without a scheme, which would
    otherwise be taken for a directory of that name and become an empty registry.
    Credentials in a URL (``https://user:pw@host``, a cache behind basic auth) are fine:
    the client sends them as basic auth and never shows them (``errors.redact_urls``)."""
    try:
        p = urlparse(url)
        p.port  # noqa: B018 - raises for a port that is not a number or out of range
    except ValueError:
        # (not the error's text: urllib quotes what it took for a port, which may be a password)
        raise KilnError(f"not a registry URL: {redact_urls(url)[:200]!r} (a bad host or port)") from None
    if not p.scheme and re.match(r"[A-Za-z0-9.-]+:\d+(/|\Z)", url):
        raise KilnError(f"{url!r} looks like HOST:PORT: write http://{url} (a directory registry: ./{url})")
    return p
