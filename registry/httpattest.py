"""``HttpClient``'s attestation batch calls (mixed into it): ``POST /attestation-batch``
(many attestation files in one answer) and ``POST /attestation-upload-batch`` (many
uploads in one request), used by ``attest_wire``, which falls back to one request per
file where a registry has no such endpoint (as each call remembers for the client's
lifetime, as ``blob_batch`` does).

Nothing the server sends is trusted for its size or shape: an entry not asked for, a
broken or long line or an entry over ``httpclient.MAX_BODY`` is a ``RegistryError`` for
each entry not yet received; an answer that breaks off on the way is asked again for
those (``httpremainder``), and is their error only once that is given up. The callers
check every file against its listing's sha256 as for a single ``GET``. An upload batch
is a write: an error once it was sent says its outcome is unknown
(``httperrors.WRITE_NOTE``), and it is never sent again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from kiln.store.errors import KilnError

from .client import RegistryError
from .httpbatch import answer_errors
from .httperrors import WRITE_NOTE, Broken
from .httpremainder import until_whole
from .httpretry import Cuts
from .pace import LINE_TOO_LONG, Link, Pace

UPLOAD_TYPE = "application/x-kiln-attestation-upload-batch"
#: ``got(hash part, kind, result)``, as ``attest_wire.Got``
Got = Callable[[str, str, Any], Any]


class AttestationBatches:
    """The two calls; ``HttpClient`` provides ``url``, ``_link``, ``_cuts``, ``_request``,
    ``_fail``, ``_post`` and the flags ``_att_fetch_ok`` and ``_att_upload_ok``."""

    if TYPE_CHECKING:
        url: str
        _link: Link
        _cuts: Cuts
        _att_fetch_ok: bool
        _att_upload_ok: bool

        async def _request(self, method: str, key: str, **kw: Any) -> aiohttp.ClientResponse: ...

        async def _fail(self, resp: aiohttp.ClientResponse, what: str) -> RegistryError: ...

        async def _post(self, key: str, **kw: Any) -> bytes | None: ...

    async def attestation_batch(self, pairs: list[tuple[str, str]], got: Got) -> bool:
        """Fetch attestation files (hash part, kind) with one ``POST /attestation-batch``:
        ``got`` once for each (``attest_wire.Got``; the bytes are as received). An answer
        that breaks off is asked again for the files not yet received (``httpremainder``).
        False, having called ``got`` for nothing, if the server has no such endpoint
        (remembered)."""
        from .httpclient import MAX_BODY

        if not self._att_fetch_ok:
            return False
        what = f"POST {self.url}/attestation-batch"
        want = dict.fromkeys(pairs)

        async def ask(first: bool) -> bool | KilnError:
            try:
                resp = await self._request(
                    "POST", "attestation-batch", json={"attestations": [list(p) for p in want]}
                )
            except KilnError as e:
                return e
            async with resp:
                if first and resp.status in (404, 405, 501):
                    self._att_fetch_ok = False
                    return False
                if resp.status != 200:
                    return await self._fail(resp, what)
                # (``body``: a silent answer is told from a trickle, and asked again)
                pace = Pace(what, RegistryError, self._link, body=resp.content)
                failed = await read_batch(resp, what, want, got, pace, MAX_BODY)
            return True if failed is None else failed

        out = await until_whole(self._cuts, ask)
        if isinstance(out, KilnError):
            for h, k in want:
                got(h, k, out)
        return out is not False

    async def attestation_upload_batch(
        self, items: list[tuple[str, str, bytes]]
    ) -> list[tuple[int, str]] | None:
        """Upload attestation files (hash part, kind, bytes) with one ``POST
        /attestation-upload-batch``: each one's (HTTP status, message), in order, as its
        own ``PUT`` would have been answered; None if the server has no such endpoint
        (remembered). A write: never sent again once sent, and an error after it was
        sent says whether the registry took it is unknown (``httperrors.WRITE_NOTE``)."""
        if not self._att_upload_ok:
            return None
        body = upload_body(items)
        raw = await self._post("attestation-upload-batch", data=body, headers={"Content-Type": UPLOAD_TYPE})
        if raw is None:
            self._att_upload_ok = False
            return None
        return upload_results(raw, f"POST {self.url}/attestation-upload-batch", len(items))


async def read_batch(
    resp: Any, what: str, want: dict[tuple[str, str], None], got: Got, pace: Pace, max_entry: int
) -> RegistryError | None:
    """Read an ``attestation-batch`` answer: for each of ``want`` ((hash part, kind)) a
    line ``<hash part> <kind> <size>`` then the bytes, or ``<hash part> <kind> -``;
    ``got(hash part, kind, bytes or None)`` for each, then taken out of ``want`` (which
    so holds exactly the entries not received whole: ``httpremainder``). Returns None
    once all came, or the ``RegistryError`` that ended the answer early: an entry not
    asked for, one over ``max_entry`` bytes, a long line, or the answer breaking off (a
    ``Broken``). What ``got`` raises is raised."""
    while want:
        try:
            h, k, data = await _read_entry(resp, what, want, pace, max_entry)
        except RegistryError as e:
            return e
        del want[(h, k)]
        got(h, k, data)
    return None


async def _read_entry(
    resp: Any, what: str, want: dict[tuple[str, str], None], pace: Pace, max_entry: int
) -> tuple[str, str, bytes | None]:
    """The next entry of an ``attestation-batch`` answer (left in ``want``)."""
    with answer_errors(what):
        try:
            line = await pace.read(resp.content.readline(), 120)
        except LINE_TOO_LONG:
            raise RegistryError(f"{what}: an entry line is too long (broken answer)") from None
        if not line:  # (the body ended: as a cut, which retryable tells as temporary)
            raise Broken(f"{what}: answer cut short") from asyncio.IncompleteReadError(b"", None)
        parts = line.decode("ascii", "replace").split()
        if len(parts) != 3 or (parts[0], parts[1]) not in want or not (parts[2] == "-" or parts[2].isdigit()):
            raise RegistryError(f"{what}: unexpected entry {line[:100]!r}")
        h, k, size = parts
        if size != "-" and int(size) > max_entry:
            raise RegistryError(f"{what}: {h} {k} announced at {size} bytes, over {max_entry}")
        data = None if size == "-" else await pace.read(resp.content.readexactly(int(size)), int(size))
        return h, k, data


def upload_body(items: list[tuple[str, str, bytes]]) -> bytes:
    """The ``attestation-upload-batch`` body for (hash part, kind, bytes) items: each a
    line ``<size> <hash part> <kind>`` and then exactly ``size`` bytes."""
    return b"".join(b"%d %s %s\n%s" % (len(d), h.encode(), k.encode(), d) for h, k, d in items)


def upload_results(raw: bytes, what: str, count: int) -> list[tuple[int, str]]:
    """The (status, message) of each of ``count`` uploads from an
    ``attestation-upload-batch`` answer ``{"results": [{"status", "message"}, ...]}``;
    ``RegistryError`` if it is malformed or answers for another number of them."""
    try:
        results = json.loads(raw)["results"]
        out = [(int(r["status"]), str(r.get("message", ""))) for r in results]
    except (ValueError, TypeError, KeyError, RecursionError, AttributeError):
        raise RegistryError(
            f"{what}: malformed answer (expected a JSON object with results){WRITE_NOTE}"
        ) from None
    if len(out) != count:
        raise RegistryError(f"{what}: {len(out)} results for {count} attestations{WRITE_NOTE}")
    return out
