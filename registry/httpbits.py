"""Small HTTP pieces shared by the registry's read and write handlers: the error that
becomes a 4xx answer, plain-text answers, and body readers that enforce size limits."""

from __future__ import annotations

from aiohttp import web

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


async def read_body(request: web.BaseRequest, limit: int, what: str) -> bytes:
    """The whole request body, or 413 if it is over ``limit`` bytes. (A single
    ``content.read(n)`` returns whatever has arrived so far, not n bytes: a body
    that comes in several TCP segments would be cut short and misparsed.)"""
    if request.content_length is not None and request.content_length > limit:
        raise HTTPError(413, f"{what} of {request.content_length} bytes is over the limit of {limit}")
    parts: list[bytes] = []
    total = 0
    while chunk := await request.content.read(min(CHUNK, limit + 1 - total)):
        total += len(chunk)
        if total > limit:
            raise HTTPError(413, f"{what} is over the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def drain(request: web.BaseRequest, limit: int) -> None:
    total = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        total += len(chunk)
        if total > limit:
            raise HTTPError(413, "body too large")
