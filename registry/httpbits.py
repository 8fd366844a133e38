"""Small HTTP pieces shared by the registry's read and write handlers: the error that
becomes a 4xx answer, plain-text answers (a 4xx/5xx reason is one line), body readers
that enforce size limits and a minimum pace (``pace``: a client trickling a body is
answered 408, so a slowloris cannot hold connections open; request heads and idle
connections are ``guard``'s), and file answers that honour ``If-Range`` by entity tag
and send in pieces under the write timeout, one of them with its digest as ETag."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aiohttp import ETag, hdrs, web, web_fileresponse
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from . import pace as _pace
from .guard import SENDFILE_PIECE, timeouts_of
from .pace import Link, Pace

CHUNK = 1 << 20


class HTTPError(Exception):
    """Answered as ``status`` with ``msg`` by ``Registry.handle``."""

    def __init__(self, status: int, msg: str, **headers: str) -> None:
        super().__init__(msg)
        self.status, self.msg, self.headers = status, msg, headers


def plain(status: int, msg: str, **headers: str) -> web.Response:
    """A text answer; a failure's reason is kept to one line (clients and logs show it as one)."""
    msg = msg.rstrip("\n")
    if status >= 400:
        msg = " ".join(msg.split("\n"))
    return web.Response(status=status, text=msg + "\n", headers=headers)


def check_length(request: web.BaseRequest, limit: int) -> None:
    """413 if the announced Content-Length is over ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise HTTPError(413, f"body of {request.content_length} bytes exceeds the limit of {limit}")


#: per client address: the bytes all its request bodies brought (``pace.Link``), so a
#: ``kiln push -j 8`` over a slow uplink is judged as one link, not eight trickles;
#: least recently used first. Past ``_MAX_PEERS`` the least recently used address is
#: forgotten (never all at once: a client rotating addresses must not reset the credit
#: of everyone else's links)
_PEER_LINKS: OrderedDict[str, Link] = OrderedDict()
_MAX_PEERS = 4096


def body_pace(request: web.BaseRequest, what: str, size: int | None = None) -> Pace:
    """The pace ``request``'s body must keep (408 when it falls behind): the pace rule
    over its address's link, and on its own connection the body timeout (no byte for
    that long) and, for a body of at most ``size`` bytes, the time that size takes at
    the minimum pace (a link's credit never stretches it further). Unauthenticated
    bodies (batch queries) give ``size``; authenticated uploads do not, so parallel
    uploads over one slow link are judged as that link (``writeapi``)."""
    peer = request.remote or ""
    link = _PEER_LINKS.get(peer)
    if link is None:
        while len(_PEER_LINKS) >= _MAX_PEERS:
            _PEER_LINKS.popitem(last=False)
        link = _PEER_LINKS[peer] = Link()
    else:
        _PEER_LINKS.move_to_end(peer)
    deadline = None if size is None else _pace.GRACE + size / _pace.MIN_RATE
    return Pace(
        what, lambda msg: HTTPError(408, msg), link, idle=timeouts_of(request).body, deadline=deadline
    )


async def read_body(request: web.BaseRequest, limit: int, what: str) -> bytes:
    """The whole request body, or 413 if it is over ``limit`` bytes, or 408 if it comes
    too slowly. (A single ``content.read(n)`` returns whatever has arrived so far, not n
    bytes: a body that comes in several TCP segments would be cut short and misparsed.)"""
    if request.content_length is not None and request.content_length > limit:
        raise HTTPError(413, f"{what} of {request.content_length} bytes is over the limit of {limit}")
    parts: list[bytes] = []
    total = 0
    pace = body_pace(request, what, limit)
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
    """FileResponse that

    - ignores a multi-range ``Range`` (``bytes=0-1,5-6``) and sends the whole file with
      200, as RFC 9110 (14.2) allows: aiohttp would answer 416, which tells a client
      asking for a valid range that its range cannot be had;
    - honours ``If-Range`` with an entity tag (aiohttp understands only dates, and
      would send a range of a file that changed since the client's copy, which the
      client would splice into stale bytes): the range only if the tag is the file's
      current strong ETag (``current_etag``), else the whole file (RFC 9110 13.1.5);
    - sends with ``sendfile`` in pieces of ``guard.SENDFILE_PIECE`` bytes, each within
      the write timeout (``guard.Timeouts.write``): ``sendfile`` waits for as long as
      the client does not read, and bypasses the transport's flow control that
      ``guard`` watches for other writes — and aiohttp's count of the bytes written, so
      ``sendfile_sent`` counts them for the access log (``servelog``)."""

    #: body bytes sent with ``sendfile`` (aiohttp's ``body_length`` has only the rest)
    sendfile_sent = 0

    def current_etag(self) -> str | None:
        """The ETag value the file is served with now (as aiohttp computes it)."""
        try:
            st = self._path.stat()
        except OSError:
            return None
        return f"{st.st_mtime_ns:x}-{st.st_size:x}"

    async def prepare(self, request: web.BaseRequest) -> Any:
        rng = request.headers.get(hdrs.RANGE, "")
        if_range = request.headers.get(hdrs.IF_RANGE, "").strip()
        drop = "," in rng
        if rng and if_range.startswith(('"', "W/")):
            drop = drop or if_range.startswith("W/") or if_range.strip('"') != self.current_etag()
        if drop:
            headers = CIMultiDict(request.headers)
            headers.popall(hdrs.RANGE, None)
            headers.popall(hdrs.IF_RANGE, None)
            request = request.clone(headers=headers)
        return await super().prepare(request)

    async def _sendfile(
        self, request: web.BaseRequest, fobj: Any, offset: int, count: int
    ) -> AbstractStreamWriter:
        if web_fileresponse.NOSENDFILE or self.compression:
            return await super()._sendfile(request, fobj, offset, count)
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        loop = asyncio.get_running_loop()
        timeout = timeouts_of(request).write
        while count > 0:
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("Connection lost")
            n = min(count, SENDFILE_PIECE)
            try:
                async with asyncio.timeout(timeout):
                    self.sendfile_sent += await loop.sendfile(transport, fobj, offset, n)
            except NotImplementedError:
                return await self._sendfile_fallback(writer, fobj, offset, count)
            except TimeoutError:
                transport.abort()
                raise ConnectionResetError(f"client read nothing for {timeout:g} s") from None
            offset += n
            count -= n
        await web.StreamResponse.write_eof(self)
        return writer


class DigestFile(RangeFile):
    """FileResponse whose ETag is the content digest (strong, stable across copies)."""

    def __init__(self, path: Path, etag: str, **kw: Any) -> None:
        super().__init__(path, chunk_size=CHUNK, **kw)
        self._digest_etag = etag

    def current_etag(self) -> str | None:
        return self._digest_etag

    @property
    def etag(self) -> ETag | None:
        return super().etag

    @etag.setter
    def etag(self, value: ETag | str | None) -> None:
        # whatever FileResponse sets, the digest goes out (through aiohttp's own setter;
        # mypy gives no property object for ``Class.attr``, hence the ignore)
        web.FileResponse.etag.fset(self, self._digest_etag)  # type: ignore[attr-defined]
