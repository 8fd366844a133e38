"""A fast path for the registry's hottest request: ``GET /<hash>.narinfo`` of a path
that is served.

Theory of operation
-------------------
aiohttp spends ~50 µs of Python on every request (parser callbacks, request and response
objects, a task per request, header rendering) where the narinfo lookup itself takes a
couple of µs, and substituters send one narinfo GET per path. ``FastHandler`` is
aiohttp's own connection protocol (``web_protocol.RequestHandler``, through
``guard.GuardedHandler``, whose timeouts apply as to any connection) with one more
method overridden: ``data_received`` answers a narinfo GET itself, writing a pre-rendered
response to the transport, when and only when all of this holds:

1. the connection is **idle**: aiohttp's request loop is waiting for a message, none is
   queued, no request body is being read, the connection is not closing or upgraded,
   and writing is not paused by flow control (responses stay in request order, and a
   client that does not read its answers is throttled by aiohttp as before);
2. the connection is **at a message boundary** (``_at_boundary``): aiohttp's parser holds
   no partial message. True on a new connection; a read handed to aiohttp keeps it true
   only if that read was itself exactly one complete body-less ``GET``/``HEAD`` request
   (``_ANY``); any other read (a body, a request split over reads, pipelined requests)
   turns the fast path off for the rest of the connection;
3. the read is **exactly one request** in a strict grammar (``_NARINFO``): request line
   ``GET /<32 nix-base32 chars>.narinfo HTTP/1.1``, header fields ``token ":" printable
   ASCII``, exactly one Host and otherwise only fields from ``_HARMLESS``, none repeated
   (aiohttp answers a missing or repeated Host, or a repeated User-Agent, with a 400;
   Connection, Proxy-Connection, Upgrade, Expect or a body change what it answers), at
   most ``MAX_READ`` bytes (so aiohttp's own size limits could not have refused it);
4. the narinfo exists (a miss takes aiohttp's path and gets its negative-TTL headers; so
   does a lookup that raises, and aiohttp answers 500 as it would).

Anything else goes to aiohttp untouched. The answer has the status, header fields (Date
aside) and body aiohttp would send; ``tests/registry/test_fastpath.py`` checks that
differentially against a server without the fast path, and the cases above. Keep-alive
bookkeeping (aiohttp closes idle connections after ``keepalive_timeout``) is updated as
aiohttp's request loop would.

The override relies on private attributes of aiohttp's ``RequestHandler``; ``supported()``
checks the version (``MIN_AIOHTTP``) and that they exist, and otherwise ``make_server``
returns a plain ``web.Server``. With an access log, each fast answer is logged too
(``log_fast``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler

from .guard import DEFAULT, GuardedHandler, GuardedServer, Timeouts

MAX_READ = 4096
MAX_FIELDS = 64
_FIELDS = rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~]*\r\n)*)\r\n"
_NARINFO = re.compile(rb"GET /([0-9a-df-np-sv-z]{32})\.narinfo HTTP/1\.1\r\n" + _FIELDS)
_ANY = re.compile(rb"(?:GET|HEAD) /[!-~]* HTTP/1\.1\r\n" + _FIELDS)
#: fields after which aiohttp's parser may not be at a message boundary (a body follows,
#: or the connection changes protocol): such a read ends the fast path for the connection
_SPECIAL = re.compile(rb"(?:^|\n)(?:content-length|transfer-encoding|connection|upgrade|expect):", re.I)
_FIELD_NAME = re.compile(rb"(?:^|\n)([^:\r\n]+):")
#: fields that do not change aiohttp's answer to a narinfo GET (besides the one Host)
_HARMLESS = frozenset(
    (b"user-agent", b"accept", b"accept-encoding", b"accept-language", b"cache-control", b"pragma")
)
#: RequestHandler attributes the override reads or sets
_NEEDED = (
    "_waiter",
    "_messages",
    "_paused",
    "_payload_parser",
    "_upgraded",
    "_close",
    "_force_close",
    "_keepalive",
    "_keepalive_timeout",
    "_keepalive_handle",
    "_next_keepalive_close_time",
    "_process_keepalive",
    "_request_count",
    "_current_request",
    "_manager",
    "_loop",
    "transport",
)

#: hash part -> narinfo bytes, or None when not served
Lookup = Callable[[str], "bytes | None"]
#: (connection, path, status, bytes sent): an access-log line for a fast answer
FastLog = Callable[[RequestHandler, str, int, int], None]


#: the oldest aiohttp whose RequestHandler the override was checked against (3.14.5);
#: newer ones are used while they have the attributes (the differential tests run on
#: whatever version is installed)
MIN_AIOHTTP = (3, 14)


def supported() -> bool:
    """Whether this aiohttp's RequestHandler has what ``FastHandler`` relies on."""
    try:
        version = tuple(int(x) for x in aiohttp.__version__.split(".")[:2])
    except ValueError:
        return False
    return version >= MIN_AIOHTTP and all(hasattr(RequestHandler, a) for a in _NEEDED)


def _fields_ok(fields: bytes) -> bool:
    """Exactly one Host, otherwise only ``_HARMLESS`` fields, none repeated."""
    names = [n.lower() for n in _FIELD_NAME.findall(fields)]
    return (
        len(names) <= MAX_FIELDS
        and names.count(b"host") == 1
        and len(set(names)) == len(names)
        and all(n == b"host" or n in _HARMLESS for n in names)
    )


class _Date:
    """The HTTP Date value, rendered at most once a second (English names whatever the
    locale, as aiohttp does)."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second, self.value = -1, b""

    def now(self) -> bytes:
        t = int(time.time())
        if t != self.second:
            self.second = t
            self.value = formatdate(t, usegmt=True).encode()
        return self.value


class FastServer(GuardedServer):
    """``GuardedServer`` whose connections use ``FastHandler``. ``lookup`` finds a
    narinfo; ``cache_control`` is the value aiohttp's path sends with one; ``log_fast``
    (if given) is told of each fast answer ``(handler, path, status, bytes)``, for the
    access log."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        lookup: Lookup,
        cache_control: str,
        log_fast: FastLog | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.handler_class = FastHandler
        self.log_fast = log_fast
        self.fast_lookup = lookup
        # the header fields aiohttp renders for the same response, in its order
        self.fast_head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/x-nix-narinfo\r\n"
            b"Cache-Control: " + cache_control.encode() + b"\r\nContent-Length: %d\r\nDate: %s\r\n"
            b"Server: " + SERVER_SOFTWARE.encode() + b"\r\n\r\n"
        )
        self.fast_date = _Date()
        #: requests answered by the fast path (tests read it)
        self.fast_answers = 0


class FastHandler(GuardedHandler):
    """aiohttp's connection protocol, answering qualifying narinfo GETs itself (see the
    module docstring for when)."""

    _at_boundary = True

    def data_received(self, data: bytes) -> None:
        if self._at_boundary:
            if len(data) <= MAX_READ and self._idle():
                m = _NARINFO.fullmatch(data)
                if m is not None and self._answer(m):
                    return
            m = _ANY.fullmatch(data) if len(data) <= MAX_READ else None
            if m is None or _SPECIAL.search(m.group(1)) or m.group(1).count(b"\n") > MAX_FIELDS:
                self._at_boundary = False
        super().data_received(data)

    def _idle(self) -> bool:
        w = self._waiter
        return (
            w is not None
            and not w.done()
            and not self._messages
            and not self._paused
            and self._payload_parser is None
            and not self._upgraded
            and not self._close
            and not self._force_close
        )

    def _answer(self, m: re.Match) -> bool:
        if not _fields_ok(m.group(2)):
            return False
        srv = self._manager
        assert isinstance(srv, FastServer)  # (FastServer makes every FastHandler; set while connected)
        try:
            body = srv.fast_lookup(m.group(1).decode("ascii"))
        except Exception:  # noqa: BLE001 - aiohttp's path asks again and answers 500
            return False
        if body is None:
            return False
        answer = srv.fast_head % (len(body), srv.fast_date.now()) + body
        assert self.transport is not None  # (data arrives only on an open connection)
        self.transport.write(answer)
        if srv.log_fast is not None:
            srv.log_fast(self, m.group(0).split(b" ", 2)[1].decode("ascii"), 200, len(answer))
        srv.requests_count += 1
        srv.fast_answers += 1
        self._request_count += 1
        # what aiohttp's request loop (RequestHandler.start) does after a keep-alive response
        self._keepalive = True
        loop = self._loop
        close_time = loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
        return True


def make_server(
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    *,
    lookup: Lookup | None,
    cache_control: str,
    timeouts: Timeouts = DEFAULT,
    log_fast: FastLog | None = None,
    **kwargs: Any,
) -> web.Server:
    """A ``FastServer`` when ``lookup`` is given and this aiohttp is supported, else a
    ``guard.GuardedServer`` (same behaviour, slower narinfo GETs), or on an aiohttp
    without the attributes both rely on a plain ``web.Server`` with the keep-alive
    timeout only."""
    if not supported():
        return web.Server(handler, keepalive_timeout=timeouts.keepalive, **kwargs)
    if lookup is None:
        return GuardedServer(handler, timeouts=timeouts, **kwargs)
    return FastServer(
        handler, lookup=lookup, cache_control=cache_control, timeouts=timeouts, log_fast=log_fast, **kwargs
    )
