"""Small HTTP pieces shared by the registry's read and write handlers: the error that
becomes a 4xx answer, plain-text answers, body readers that enforce size limits and
a minimum pace (``pace``: a client trickling a body is answered 408, so a slowloris
cannot hold connections open; aiohttp itself bounds only the wait for headers), and a
file answer whose ETag is its digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from multidict import CIMultiDict

from .pace import Link, Pace

CHUNK = 1 << 20


class HTTPError(Exception):
    """Answered as ``status`` with ``msg`` by ``Registry.handle``."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.msg = status, msg


def plain(status: int, msg: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=msg.rstrip("\n") + "\n", headers=headers)


def check_length(request: web.BaseRequest, limit: int) -> None:
    """413 if the announced Content-Length is over ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise HTTPError(413, f"body of {request.content_length} bytes exceeds the limit of {limit}")


#: per client address: the bytes all its request bodies brought (``pace.Link``), so a
#: ``kiln push -j 8`` over a slow uplink is judged as one link, not eight trickles
_PEER_LINKS: dict[str, Link] = {}
_MAX_PEERS = 4096


def body_pace(request: web.BaseRequest, what: str) -> Pace:
    """The pace ``request``'s body must keep (408 when it falls behind)."""
    peer = request.remote or ""
    link = _PEER_LINKS.get(peer)
    if link is None:
        if len(_PEER_LINKS) >= _MAX_PEERS:
            _PEER_LINKS.clear()  # a fresh link only makes its transfers judged alone
        link = _PEER_LINKS[peer] = Link()
    return Pace(what, lambda msg: HTTPError(408, msg), link)


async def read_body(request: web.BaseRequest, limit: int, what: str) -> bytes:
    """The whole request body, or 413 if it is over ``limit`` bytes, or 408 if it comes
    too slowly. (A single ``content.read(n)`` returns whatever has arrived so far, not n
    bytes: a body that comes in several TCP segments would be cut short and misparsed.)"""
    if request.content_length is not None and request.content_length > limit:
        raise HTTPError(413, f"{what} of {request.content_length} bytes is over the limit of {limit}")
    parts: list[bytes] = []
    total = 0
    pace = body_pace(request, what)
    while chunk := await pace.read(request.content.read(min(CHUNK, limit + 1 - total)), 1):
        total += len(chunk)
        if total > limit:
            raise HTTPError(413, f"{what} is over the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def drain(request: web.BaseRequest, limit: int) -> None:
    total = 0
    pace = body_pace(request, "body")
    while chunk := await pace.read(request.content.read(CHUNK), 1):
        total += len(chunk)
        if total > limit:
            raise HTTPError(413, "body too large")


def shown_key(key: str) -> str:
    """A request path as an answer may show it: decoded (``%00`` is a NUL by then), so
    control and other unprintable characters are escaped (``\\x00``), keeping the
    one-line answer one line of text."""
    if key.isprintable():
        return key
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in key)


class RangeFile(web.FileResponse):
    """FileResponse that ignores a multi-range ``Range`` (``bytes=0-1,5-6``) and sends the
    whole file with 200, as RFC 9110 (14.2) allows: aiohttp would answer 416, which
    tells a client asking for a valid range that its range cannot be had."""

    async def prepare(self, request: web.BaseRequest) -> Any:
        if "," in request.headers.get(hdrs.RANGE, ""):
            headers = CIMultiDict(request.headers)
            del headers[hdrs.RANGE]
            request = request.clone(headers=headers)
        return await super().prepare(request)


class DigestFile(RangeFile):
    """FileResponse whose ETag is the content digest (strong, stable across copies)."""

    def __init__(self, path: Path, etag: str, **kw: Any) -> None:
        super().__init__(path, chunk_size=CHUNK, **kw)
        self._digest_etag = etag

    @property
    def etag(self) -> Any:  # type: ignore[override]
        return web.FileResponse.etag.fget(self)  # type: ignore[attr-defined]

    @etag.setter
    def etag(self, value: Any) -> None:
        web.FileResponse.etag.fset(self, self._digest_etag)  # type: ignore[attr-defined]
