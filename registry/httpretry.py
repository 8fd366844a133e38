"""When ``HttpClient`` asks a registry again: a busy server's 503 (after its
``Retry-After``, ``BUSY_RETRIES`` times), and a read-only request (``GET``, ``HEAD``,
``READ_ONLY_POSTS``; never an upload) whose connection was refused, reset or closed
before any byte of an answer (``kiln serve`` restarting): ``RETRY_FIRST`` s, doubling
to ``RETRY_MAX``, at most ``RETRY_WAIT`` s in all once the registry has answered the
client, ``COLD_RETRY_WAIT`` s before (a port nobody listens on stays "unreachable"
within a few seconds). Pure decisions; the requests are ``httpclient``'s."""

from __future__ import annotations

import errno
import math

import aiohttp

from .client import RegistryError

#: a 503 answer is asked again this many times, after its Retry-After (capped at
#: BUSY_WAIT_MAX seconds; 1 s without one or with one that is not a number of seconds)
BUSY_RETRIES = 8
BUSY_WAIT_MAX = 10.0
#: a dropped read-only request (module docstring) waits RETRY_FIRST s, doubling to
#: RETRY_MAX, before each new attempt, at most RETRY_WAIT (COLD_RETRY_WAIT) s in all
RETRY_WAIT, COLD_RETRY_WAIT, RETRY_FIRST, RETRY_MAX = 10.0, 2.0, 0.1, 2.0
#: POSTs that only read (queries with a JSON body): sent again as GETs are
READ_ONLY_POSTS = frozenset({"narinfo-batch", "blob-batch", "attestation-batch"})
_DROPPED = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE})


class Dropped(Exception):
    """A connection refused, reset or closed before an answer; ``error`` is the caller's."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error


def dropped(e: BaseException) -> bool:
    """Whether ``e`` (before the answer's headers), or the error under it (aiohttp's "Can
    not write request body" wraps a reset), is a connection refused, reset or closed."""
    for x in (e, e.__cause__):
        if isinstance(x, (aiohttp.ServerDisconnectedError, ConnectionError)):
            return True
        if isinstance(x, OSError) and x.errno in _DROPPED:  # (aiohttp's ClientOSError, ...)
            return True
    return False


def retry_after(value: str | None) -> float:
    """The seconds a ``Retry-After`` asks for, within ``[0, BUSY_WAIT_MAX]`` (an HTTP
    date, or junk, counts as 1 s: the server's clock is not ours to trust)."""
    try:
        seconds = float(value or "1")
    except ValueError:
        seconds = 1.0
    return min(max(seconds if math.isfinite(seconds) else 1.0, 0.0), BUSY_WAIT_MAX)
