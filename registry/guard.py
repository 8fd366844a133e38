"""Connection guards of ``kiln serve``: how long a client may hold a connection without
doing its part.

Theory of operation
-------------------
Every connection costs a file descriptor and some memory, and a server has a bounded
number of both: a client that opens connections and then does nothing (or trickles)
must be shed, or a few hundred sockets take the server down for everyone. aiohttp bounds
none of this usefully by default (its keep-alive timeout is 3630 s and it has no write
timeout), so ``GuardedHandler`` (aiohttp's own connection protocol, ``RequestHandler``,
with a few methods extended) enforces ``Timeouts``:

- ``keepalive``: an idle connection (no request in progress, none being received) is
  closed after this many seconds; it is aiohttp's own ``keepalive_timeout``, which also
  runs from the connection's start, so a connection that never sends a byte is closed
  after it too (and so is one whose head is not complete by then: aiohttp's timer only
  looks at whether a request is being handled).
- ``head``: a request head must be complete within this many seconds of its first byte
  (a slowloris sending one header byte a second). Checked in ``data_received``: after
  aiohttp's parser has had the bytes, a connection whose request loop still waits for a
  message has a partial head buffered. On expiry the client gets a 408 and the
  connection is closed.
- ``write``: a response write that makes no progress for this many seconds (the client
  stopped reading) aborts the connection. Buffered writes: asyncio calls
  ``pause_writing`` when the transport's buffer is over its high-water mark and
  ``resume_writing`` once it drained below the low-water mark, so a pause longer than
  ``write`` means the client read (almost) nothing meanwhile. ``sendfile`` bypasses the
  buffer: ``httpbits.RangeFile`` sends in pieces of ``SENDFILE_PIECE`` bytes, each under
  this timeout.
- ``body``: a read of a request body that brings no byte for this many seconds is
  answered 408, whatever other connections from the same address do (``pace.Pace``;
  the pace rule alone judges a client's connections together, so one busy connection
  could otherwise excuse a hundred silent ones).

A client that half-closes its side after sending a request still gets its answer
(``eof_received``), as from nginx: the connection closes after that answer. Requests
pipelined before the half-close beyond the one in progress are not answered.

The handler relies on private attributes of aiohttp's ``RequestHandler`` (``_waiter``,
``_messages``, ``_paused``, ``_current_request``, ``_close``, ``_force_close``); they
are the ones ``fastpath`` checks for as well (``fastpath.supported``), and
``make_server`` falls back to a plain aiohttp server (keep-alive timeout only) when
they are missing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

#: bytes ``RangeFile`` hands to one ``sendfile`` call: a piece must go within the write
#: timeout, so this is also the slowest pace a download may keep (128 KiB per 60 s by
#: default, about half of ``pace.MIN_RATE``)
SENDFILE_PIECE = 128 << 10


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds a client may take (see the module docstring); ``kiln serve`` options."""

    keepalive: float = 60.0
    head: float = 30.0
    write: float = 60.0
    body: float = 60.0


DEFAULT = Timeouts()


def timeouts_of(request: web.BaseRequest) -> Timeouts:
    """The timeouts of the server ``request`` came to (defaults for other servers)."""
    return getattr(request.protocol, "kiln_timeouts", DEFAULT)


class GuardedServer(web.Server):
    """``web.Server`` whose connections use ``GuardedHandler`` (or a subclass:
    ``handler_class``) and enforce ``timeouts``."""

    handler_class: type[RequestHandler]

    def __init__(self, handler: Any, *, timeouts: Timeouts = DEFAULT, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=timeouts.keepalive, **kwargs)
        self.timeouts = timeouts
        self.handler_class = GuardedHandler

    def __call__(self) -> RequestHandler:
        return self.handler_class(self, loop=self._loop, **self._kwargs)


_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
)


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with the guards of the module docstring."""

    _head_since: float | None = None
    _head_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        #: read by ``timeouts_of`` (the manager is gone once the connection is lost)
        self.kiln_timeouts: Timeouts = manager.timeouts

    # ------------------------------------------------------------ request heads

    def _waiting_for_head(self) -> bool:
        """The request loop waits for a message: bytes it has are a partial head."""
        w = self._waiter
        return w is not None and not w.done() and not self._messages

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not data or self.transport is None:
            return
        if not self._waiting_for_head():
            self._head_since = None  # a whole head arrived (or a body is being read)
        elif self._head_since is None:
            self._head_since = self._loop.time()
            if self._head_timer is None:
                self._head_timer = self._loop.call_at(
                    self._head_since + self.kiln_timeouts.head, self._head_expired
                )

    def _head_expired(self) -> None:
        self._head_timer = None
        since = self._head_since
        if since is None or self.transport is None or not self._waiting_for_head():
            return
        due = since + self.kiln_timeouts.head
        if self._loop.time() < due:  # a later head than the one the timer was set for
            self._head_timer = self._loop.call_at(due, self._head_expired)
            return
        body = b"error: request head not complete within %g s\n" % self.kiln_timeouts.head
        self.transport.write(_TIMEOUT_408 % (len(body), body))
        self.force_close()  # (closes the transport once the answer is written)

    # ------------------------------------------------------------ writes

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self._loop.call_later(self.kiln_timeouts.write, self._write_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_expired(self) -> None:
        self._write_timer = None
        if self._paused and self.transport is not None:
            # the client reads nothing: drop what is buffered for it and the connection
            # (a pending drain fails with ConnectionError, ending the handler)
            self.transport.abort()

    # ------------------------------------------------------------ half-close

    # (asyncio's Protocol.eof_received returns bool | None, True keeping the transport
    # open; aiohttp annotates its no-op override as returning None)
    def eof_received(self) -> bool | None:  # type: ignore[override]
        """Keep the connection open for the answer to a request the client sent before it
        half-closed (``shutdown(SHUT_WR)``, ``nc -N``), then close it. A partial head, or
        a request whose body is incomplete, can never be completed: close at once (the
        body reader learns of the end from ``connection_lost``, as before)."""
        if self._force_close or self._close or self._waiting_for_head() or self._eof_ends_request():
            return None
        self._close = True  # answer what is in progress or queued next, then close
        # the request loop may have taken a message it has not started handling yet:
        # judge its body once it has
        self._loop.call_soon(self._check_eof)
        return True

    def _eof_ends_request(self) -> bool:
        req = self._current_request
        if req is not None and not req.content.is_eof():
            return True
        return bool(self._messages) and not self._messages[-1][1].is_eof()

    def _check_eof(self) -> None:
        if self.transport is not None and not self._force_close and self._eof_ends_request():
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        for t in (self._head_timer, self._write_timer):
            if t is not None:
                t.cancel()
        self._head_timer = self._write_timer = None
        super().connection_lost(exc)
