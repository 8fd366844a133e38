"""``HttpClient``: the ``Client`` API (``client.py``) over HTTP(S), for kiln servers and
plain static file servers (nginx, ``nix copy --to file://`` trees behind one) alike.

Nothing a server sends is trusted for its size or shape: bodies read into memory are
capped at ``MAX_BODY``, batch answers are checked for shape, ``blob-batch`` entries
announced at another size than expected are refused before they are read, and every
broken, cut or malformed answer is a ``RegistryError`` (a miss for substitution, never
an internal error). Nor is its pace: silence is cut by the per-read timeout, a trickle
(a byte now and then, which resets that timeout) by ``pace.Pace``, judged with the
client's whole link, and response headers must arrive within ``HEADERS_TIMEOUT``. The
caller checks digests (``verify``, ``objread``). Text it quotes from a server (error
bodies, ``publish-index``'s answer) never shows the credentials it sent
(``tokentext.scrub``).

A request that only reads (``GET``, ``HEAD``, ``READ_ONLY_POSTS``; never an upload) is
sent again when its connection is refused, reset or closed before any byte of an answer
(``kiln serve`` restarting), and answers that say "not now" (a busy server's 503 or
429, a proxy's 502 or 504, a few 500s) are waited out, honouring ``Retry-After``; a
write waits out only a 503: ``httpretry`` says when and how long. A download cut
mid-body (reset, closed short, or silent past the read timeout) is resumed or started
over (``httpdownload``), a ``blob-batch`` or ``attestation-batch`` answer broken off is
asked again for the entries not yet received, and any other read-only answer broken
off (a ``GET``'s, a ``narinfo-batch``'s) is asked again whole (``httpremainder``): how
often is ``httpretry``'s, never for a write. A small answer silent for the pace's grace
period is broken off as one silent past the read timeout is (``pace``: the client's
``Link`` says so), a trickle is not. Failures name the request and say what happened
(``httperrors``).
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import aiohttp

from kiln.store.hashes import Hash

from . import layout
from .client import BATCH, CHUNK, Client, RegistryError, utf8
from .httpattest import AttestationBatches
from .httpbatch import BlobBatches, batch_answer, deferred_of, merge_batch, upload_batch_body
from .httpdownload import ObjectDownloads
from .httperrors import WRITE_NOTE, Broken, answer_errors, request_error
from .httpremainder import until_read
from .httpretry import (
    BUSY_RETRIES,
    COLD_RETRY_WAIT,
    NOT_NOW,
    RETRY_FIRST,
    RETRY_MAX,
    RETRY_WAIT,
    WORN_RETRIES,
    Cuts,
    Dropped,
    ask_again,
    dropped,
    read_only,
    retry_after,
)
from .httpsession import new_session, watch
from .pace import Link, Pace
from .tokentext import scrub, sent_secrets

#: Largest body read into memory from a registry (narinfos, listings, index files,
#: batch answers): a hostile server must not exhaust memory with an endless answer.
MAX_BODY = 64 << 20
#: of an error answer's body, only this much is read (to quote it), for at most this long
ERROR_PEEK = 4096
ERROR_PEEK_S = 10.0
#: Longest wait for the status line and headers of an answer (not for uploads, whose
#: answer comes only after the body has been sent).
HEADERS_TIMEOUT = 300.0


class HttpClient(AttestationBatches, BlobBatches, ObjectDownloads, Client):
    """The ``Client`` API over HTTP(S), the attestation batch calls
    (``httpattest.AttestationBatches``, used by ``attest_wire``), ``blob_batch``
    (``httpbatch.BlobBatches``) and downloads (``httpdownload.ObjectDownloads``)."""

    def __init__(self, url: str, token: str | None = None, jobs: int = 16) -> None:
        # credentials in the URL go as basic auth; self.url, which every message shows,
        # has none
        p = urlparse(url)
        self._basic = (
            "Basic "
            + base64.b64encode(f"{unquote(p.username or '')}:{unquote(p.password or '')}".encode()).decode()
            if p.username is not None or p.password is not None
            else None
        )
        if self._basic is not None:
            p = p._replace(netloc=p.netloc.rpartition("@")[2])
        self.url = p.geturl().rstrip("/")
        self.token = token
        #: what a server's text must never show back (``tokentext.scrub``)
        self.sent_secrets = sent_secrets(token, self._basic)
        self.jobs = jobs
        self._session: aiohttp.ClientSession | None = None
        self._link = Link(silent=Broken)  # (a silent answer is a stall: ``pace``)
        self._batch_ok = True
        self._blob_batch_ok = True
        self._att_fetch_ok = True
        self._att_upload_ok = True
        self._answered = False  # (once the registry answered: the longer retries)
        self._worn = False  # a request used up its "not now" waits (``httpretry.WORN_RETRIES``)
        self._cuts = Cuts()  # answers broken off mid-body: how often to ask again (``httpretry``)
        self._watches: set[asyncio.Task[None]] = set()  # (``httpsession.watch``)
        #: key -> the URL on another origin that answered 404/403 for it after a redirect
        #: (``get`` returns None for those as for any miss; errors use this to say where)
        self.missed_at: dict[str, str] = {}

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            # a default header, as the token: aiohttp drops it on a redirect to another
            # origin (a session's auth= it would send there too: a CDN would get the password)
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            if self._basic is not None:
                headers["Authorization"] = self._basic
            self._session, self._resolver = new_session(self.jobs, headers)
        return self._session

    async def close(self) -> None:
        for task in list(self._watches):  # (each would end within a second anyway)
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
            await self._resolver.close()  # (the connector closes only a resolver it made)

    async def _request(self, method: str, key: str, **kw: Any) -> aiohttp.ClientResponse:
        """The answer to one request. An answer that says "not now" (``httpretry.ask_again``:
        503 for any request but an upload; for a read-only one also 429, 502, 504 and a
        few 500s) is asked again after its ``Retry-After`` (at most ``BUSY_WAIT_MAX`` s),
        ``BUSY_RETRIES`` times; a read-only request whose connection was refused, reset or
        closed before an answer is sent again (module docstring). Never an upload (its body
        may be a stream that cannot be sent twice)."""
        upload = "data" in kw
        reads = read_only(method, key, upload)
        busy, errors, waited, delay = 0, 0, 0.0, RETRY_FIRST
        while True:
            try:
                resp = await self._request_once(method, key, **kw)
            except Dropped as e:
                budget = RETRY_WAIT if self._answered else COLD_RETRY_WAIT
                if not reads or waited + delay > budget:
                    raise e.error from None
                await asyncio.sleep(delay)
                waited, delay = waited + delay, min(delay * 2, RETRY_MAX)
                continue
            self._answered = True
            limit = WORN_RETRIES if self._worn else BUSY_RETRIES
            if not ask_again(resp.status, reads, upload, busy, errors, limit):
                if busy and resp.status in NOT_NOW:
                    self._worn = True  # still "not now" after every wait: the others wait less
                elif resp.status < 400:
                    self._worn = False
                watch(resp, self._watches)
                return resp
            busy, errors = busy + 1, errors + (resp.status == 500)
            wait = retry_after(resp.headers.get("Retry-After"))
            resp.release()
            await asyncio.sleep(wait)

    async def _request_once(self, method: str, key: str, **kw: Any) -> aiohttp.ClientResponse:
        """One attempt; ``Dropped`` for a connection refused, reset or closed before it."""
        what = f"{method} {self.url}/{key}"
        sess = self._sess()
        req = sess.request(method, f"{self.url}/{key}", **kw)
        try:
            if "data" in kw:
                return await req  # an upload: its answer follows the whole body
            try:
                return await asyncio.wait_for(req, HEADERS_TIMEOUT)
            except TimeoutError as e:
                if isinstance(e, aiohttp.ClientError):
                    raise  # aiohttp's own connect/read timeouts (below)
                raise RegistryError(f"{what}: no answer within {HEADERS_TIMEOUT:g} s") from None
        except aiohttp.TooManyRedirects as e:
            last = e.history[-1].url if e.history else e.request_info.url
            raise RegistryError(
                f"{what}: too many redirects ({len(e.history)}, the last at {str(last)[:300]})"
            ) from None
        except (TimeoutError, aiohttp.ClientError) as e:  # (its text may quote what the server sent)
            # a write that did not get its answer may have been done: say so (httperrors)
            write = "data" in kw or method in ("PUT", "DELETE") or key == "publish-index"
            err = request_error(e, what, self.url, sess.timeout.sock_read, write, self.sent_secrets)
            raise (Dropped(err) if dropped(e) else err) from None
        except ValueError as e:  # aiohttp's refusal of a header or URL it cannot send
            raise RegistryError(f"registry {self.url}: cannot send the request: {e}") from None

    async def _fail(self, resp: aiohttp.ClientResponse, what: str) -> RegistryError:
        """The error for a non-success answer, quoting the start of its body: at most
        ``ERROR_PEEK`` bytes, waited for at most ``ERROR_PEEK_S`` (the rest is never read,
        so a hostile registry cannot make an error page cost memory or time), with the
        credentials this client sent hidden (a server may quote the ``Authorization``
        header back: ``tokentext.scrub``, before the quote is cut)."""
        try:
            head = await asyncio.wait_for(resp.content.read(ERROR_PEEK), ERROR_PEEK_S)
        except (TimeoutError, aiohttp.ClientError):
            head = b""
        text = scrub(head.decode(errors="replace"), self.sent_secrets)[:500].strip()
        # (a kiln server's answers start "error: ", which the message has said already)
        return RegistryError(f"{what}: HTTP {resp.status}: {text.removeprefix('error: ')}", resp.status)

    async def _read(self, resp: aiohttp.ClientResponse, what: str, write: bool = False) -> bytes:
        """The whole body, at most ``MAX_BODY`` bytes; a longer or too slow body is a
        ``RegistryError``, a cut or broken one a ``Broken`` (a miss for substitution,
        never an internal error; asked again by the read-only callers); ``write``: the
        answer to a write (``httperrors.WRITE_NOTE``). A whole body restores the
        client's budget for broken answers (``httpretry.Cuts``)."""
        buf = bytearray()
        pace = Pace(what, RegistryError, self._link)
        with answer_errors(what, write):
            async for chunk in resp.content.iter_chunked(CHUNK):
                buf += chunk
                pace.got(len(chunk))
                if len(buf) > MAX_BODY:
                    raise RegistryError(f"{what}: answer larger than {MAX_BODY} bytes")
        self._cuts.whole()
        return bytes(buf)

    async def get(self, key: str) -> bytes | None:
        """``Client.get``; an answer whose body breaks off is asked again
        (``httpremainder.until_read``)."""
        what = f"GET {self.url}/{key}"

        async def once() -> bytes | None:
            async with await self._request("GET", key) as resp:
                if resp.status == 404 or resp.status == 403 and key.startswith("index/"):
                    if resp.history and resp.url.origin() != resp.history[0].url.origin():
                        self.missed_at[key] = str(resp.url)[:300]
                    return None
                if resp.status != 200:
                    raise await self._fail(resp, what)
                return await self._read(resp, what)

        return await until_read(self._cuts, once)

    async def _post(self, key: str, **kw: Any) -> bytes | None:
        """The body of the 200 answer to ``POST /<key>``, or None if the server has no such
        endpoint (404, 405, 501); any other answer is a ``RegistryError`` (for an upload,
        a ``data`` body, one saying its outcome is unknown: ``httperrors.WRITE_NOTE``).
        A read-only request (``httpretry.read_only``) whose answer breaks off is asked
        again (``httpremainder.until_read``); any other never is."""
        what = f"POST {self.url}/{key}"
        upload = "data" in kw

        async def once() -> bytes | None:
            async with await self._request("POST", key, **kw) as resp:
                if resp.status in (404, 405, 501):
                    return None
                if resp.status != 200:
                    raise await self._fail(resp, what)
                return await self._read(resp, what, write=upload)

        return await until_read(self._cuts, once) if read_only("POST", key, upload) else await once()

    async def _batch(self, body: dict[str, list[str]]) -> dict[str, Any] | None:
        """The ``narinfo-batch`` answer to ``body``, whole: asked with ``"defer": true``,
        a kiln server answers in parts of about 32 MiB, each listing what it deferred,
        and those are asked again until none is (``httpbatch.deferred_of``: every answer
        must resolve at least one entry), so no one answer grows with the narinfos'
        size. None if the server has no such endpoint."""
        what = f"POST {self.url}/narinfo-batch"
        req: dict[str, Any] = {**body, "defer": True}
        out: dict[str, Any] | None = None
        while True:
            raw = await self._post("narinfo-batch", json=req)
            if raw is None:
                if out is None:
                    return None
                raise RegistryError(f"{what}: the endpoint went away while answering in parts")
            res = batch_answer(raw, what)
            more = deferred_of(res, req, what)
            out = merge_batch(out, res)
            if not more:
                return out
            req = {**more, "defer": True}

    async def narinfos(self, hash_parts: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        sem = asyncio.Semaphore(self.jobs)
        for i in range(0, len(hash_parts), BATCH):
            part = hash_parts[i : i + BATCH]
            res = await self._batch({"hashes": part}) if self._batch_ok else None
            if res is None:
                self._batch_ok = False

                async def one(h: str) -> None:
                    async with sem:
                        body = await self.get(layout.narinfo_key(h))
                    if body is not None:
                        out[h] = utf8(body, f"{self.url}/{layout.narinfo_key(h)}")

                await asyncio.gather(*(one(h) for h in part))
            else:
                out.update(res.get("narinfos", {}))
        return out

    async def have_blobs(self, hashes: list[Hash]) -> set[str]:
        have: set[str] = set()
        sem = asyncio.Semaphore(self.jobs)
        for i in range(0, len(hashes), BATCH):
            part = hashes[i : i + BATCH]
            res = await self._batch({"blobs": [h.to_hex() for h in part]}) if self._batch_ok else None
            if res is None:
                self._batch_ok = False

                async def one(h: Hash) -> None:
                    async with sem, await self._request("HEAD", layout.blob_key(h)) as resp:
                        if resp.status == 200:
                            have.add(h.to_hex())

                await asyncio.gather(*(one(h) for h in part))
            else:
                have.update(res.get("blobs", []))
        return have

    async def attestation_listings(self, hash_parts: list[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for i in range(0, len(hash_parts), BATCH):
            part = hash_parts[i : i + BATCH]
            res = await self._batch({"attestations": part}) if self._batch_ok else None
            if res is None or "attestations" not in res:
                out.update(await Client.attestation_listings(self, part))
            else:
                out.update({h: k for h, k in res["attestations"].items() if isinstance(k, dict) and k})
        return out

    async def narinfo_by_nar_hash(self, nar_sha256_hex: str) -> str | None:
        res = await self._batch({"nar_hashes": [nar_sha256_hex]}) if self._batch_ok else None
        if res is None or "by_nar_hash" not in res:
            return await Client.narinfo_by_nar_hash(self, nar_sha256_hex)
        found = res["by_nar_hash"].get(nar_sha256_hex)
        return found if isinstance(found, str) else None

    async def put_file(self, key: str, path: Path) -> None:
        size = path.stat().st_size

        async def body() -> Any:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        async with await self._request(
            "PUT", key, data=body(), headers={"Content-Length": str(size)}
        ) as resp:
            if resp.status not in (200, 201):
                raise await self._fail(resp, f"PUT {self.url}/{key}")

    async def put_bytes(self, key: str, data: bytes) -> int:
        async with await self._request("PUT", key, data=data) as resp:
            if resp.status not in (200, 201):
                raise await self._fail(resp, f"PUT {self.url}/{key}")
            return resp.status

    async def upload_batch(self, frames: list[tuple[str, bytes, Path | None]]) -> list[dict[str, Any]] | None:
        """Upload many (hash part, narinfo, optional NAR file) in one ``POST /upload-batch``.
        Returns the per-path results, or None when the server has no such endpoint."""
        total, body = upload_batch_body(frames)
        headers = {"Content-Length": str(total), "Content-Type": "application/x-kiln-upload-batch"}
        async with await self._request("POST", "upload-batch", data=body, headers=headers) as resp:
            if resp.status in (404, 405):
                return None
            what = f"POST {self.url}/upload-batch"
            if resp.status != 200:
                raise await self._fail(resp, what)
            try:
                results = json.loads(await self._read(resp, what, write=True))["results"]
            except (ValueError, TypeError, KeyError, RecursionError):
                raise RegistryError(
                    f"{what}: malformed answer (expected a JSON object with results){WRITE_NOTE}"
                ) from None
            if not isinstance(results, list):
                raise RegistryError(f"{what}: malformed answer (results is not a list){WRITE_NOTE}")
            return results

    async def publish_index(self) -> str | None:
        """Ask the server to republish its signed index; its answer, or None when it
        keeps none: 409 (a kiln serve without --index-key), or 404/405/501 (a plain HTTP
        server taking PUTs, e.g. nginx's WebDAV module, which has no such endpoint)."""
        async with await self._request("POST", "publish-index") as resp:
            if resp.status in (404, 405, 409, 501):
                return None
            what = f"POST {self.url}/publish-index"
            if resp.status != 200:
                raise await self._fail(resp, what)
            text = await self._read(resp, what, write=True)
            return scrub(text.decode(errors="replace"), self.sent_secrets).strip()
