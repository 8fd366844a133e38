"""The aiohttp session behind one ``HttpClient`` (``httpclient``): its connection pool,
timeouts and a name lookup bounded in time, and ``watch`` (a parser error in a body).

Timeouts: no total (a download of gigabytes takes what it takes; a trickle is cut by
``pace.Pace`` instead), ``sock_connect`` = ``CONNECT_TIMEOUT`` for making a connection,
``sock_read`` ``READ_TIMEOUT`` s of silence. aiohttp's own ``connect`` timeout is off:
it also counts the wait for a free pooled connection (see ``new_session``). Bodies are
not decompressed: the registry's objects are zstd as stored, and their digests are of
the bytes sent.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import aiohttp
import aiohttp.abc

from .client import CONNECT_TIMEOUT

#: seconds of silence after which a request or its answer is given up on
READ_TIMEOUT = 120.0
#: seconds between ``watch``'s looks at a connection whose answer's body is being read
WATCH_EVERY = 1.0


# (aiohttp annotates DefaultResolver as a variable (of a class type): mypy takes no base from it)
class _Resolver(aiohttp.DefaultResolver):  # type: ignore[misc,valid-type]
    """aiohttp's resolver, with a name lookup bounded by ``CONNECT_TIMEOUT`` (the
    session's ``connect`` timeout, which bounded it before, is off: see ``_sess``)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> Any:
        try:
            return await asyncio.wait_for(super().resolve(host, port, family), CONNECT_TIMEOUT)
        except TimeoutError:  # (an errno: aiohttp reports it as a connection error)
            raise OSError(errno.ETIMEDOUT, f"looking up {host} took over {CONNECT_TIMEOUT:g} s") from None


def new_session(
    jobs: int, headers: dict[str, str]
) -> tuple[aiohttp.ClientSession, aiohttp.abc.AbstractResolver]:
    """A session with at most ``jobs`` connections, sending ``headers`` with every
    request (aiohttp drops default headers on a redirect to another origin), and its
    resolver, which the caller closes after the session (a connector closes only a
    resolver it made itself)."""
    # connect=None: aiohttp's connect timeout also counts the wait for a free
    # pooled connection, so more requests at once than the pool holds failed as
    # "unreachable" (`kiln push` of a wide level); making a connection stays
    # bounded by sock_connect, and the name lookup by _Resolver
    resolver = _Resolver()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=jobs, force_close=False, resolver=resolver),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
        ),
        headers=headers,
        auto_decompress=False,
    )
    return session, resolver


def watch(resp: aiohttp.ClientResponse, tasks: set[asyncio.Task[None]]) -> None:
    """Make a parser error in the body of ``resp`` fail whoever reads it. aiohttp's C
    parser, meeting a malformed chunk header after the headers (a framing byte flipped on
    the way), closes the connection and stops its read timeout but never tells the body,
    whose reader would wait for ever (aiohttp 3.14). So, every ``WATCH_EVERY`` s while
    the body is unread, the connection's error, if it has one, is handed to the body.
    The task (kept in ``tasks`` while it runs) ends once the response is released."""

    async def look() -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY)
            conn = resp.connection
            proto = conn.protocol if conn is not None else None
            if proto is None or resp.content.is_eof() or resp.content.exception() is not None:
                return
            if (exc := proto.exception()) is not None:
                # as a ClientPayloadError, which every reader's ``except aiohttp.ClientError``
                # takes (the parser's HttpProcessingError is not one); its cause says what
                # was malformed (``httperrors.body_error``)
                err = aiohttp.ClientPayloadError("malformed answer")
                err.__cause__ = exc
                resp.content.set_exception(err)
                return

    if resp.content.is_eof():  # (all of it came with the head: nothing to watch)
        return
    task = asyncio.ensure_future(look())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
